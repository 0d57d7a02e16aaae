"""The Flask front of the platform core: JSON control calls and binary task messages.

Routes (all under ``/api/v1``):

- ``POST /register`` and ``POST /login``: JSON ``{user, password[, org]}``; login returns a session token.
- ``POST /call/<command>``: JSON parameters, ``Authorization: Bearer <token>``; replies ``{"data": ...}``.
- ``POST /tasks/<task>/messages?to=aggregator|all|<participant>``: the raw message body.
- ``GET /tasks/<task>/messages?timeout=S``: long-poll for the caller's next message
  (200 with the body and ``X-Werkbund-Sender``; 204 when none came in time).
- ``PUT /tasks/<task>/model`` (creator) and ``GET /tasks/<task>/model`` (creator, participants).

Every error is ``{"error": {"code", "message"}}`` with the HTTP status of its class.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from werkbund.platform.commands import dispatch, dispatch_public
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PayloadTooLarge, WerkbundError
from werkbund.platform.mailboxes import Mailboxes
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.local_platform")

MAX_POLL_SECONDS = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3


def create_app(service: PlatformService, mailboxes: Mailboxes | None = None,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Flask:
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, root_path=here, instance_path=os.path.join(here, "instance"))
    app.config["MAX_CONTENT_LENGTH"] = max_message_bytes
    app.extensions["werkbund"] = service
    boxes = mailboxes or Mailboxes()
    app.extensions["werkbund_mailboxes"] = boxes

    def caller() -> str:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise AuthenticationFailed("not logged in: send 'Authorization: Bearer <token>'")
        return service.authenticate(header[len("Bearer "):].strip())

    def json_body() -> dict:
        body = request.get_json(silent=True)
        if body is None and request.data:
            raise InvalidInput("the request body is not valid JSON")
        return body if body is not None else {}

    @app.errorhandler(WerkbundError)
    def _werkbund_error(error: WerkbundError):
        return jsonify({"error": error.to_dict()}), error.http_status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = "payload_too_large" if error.code == 413 else "http_error"
        return jsonify({"error": {"code": code, "message": error.description}}), error.code

    @app.post("/api/v1/register")
    def register():
        return jsonify({"data": dispatch_public(service, "register", json_body())}), 201

    @app.post("/api/v1/login")
    def login():
        return jsonify({"data": dispatch_public(service, "login", json_body())})

    @app.post("/api/v1/call/<command>")
    def call(command: str):
        user = caller()
        result = dispatch(service, user, command, json_body())
        if command == "delete_task":
            boxes.drop_task(result["task"])
        return jsonify({"data": result})

    @app.post("/api/v1/tasks/<task>/messages")
    def send_message(task: str):
        user = caller()
        to = request.args.get("to", "")
        inboxes = service.route_message(user, task, to)
        body = request.get_data(cache=False)
        if len(body) > max_message_bytes:
            raise PayloadTooLarge(f"a message may have at most {max_message_bytes} bytes")
        boxes.put(task, inboxes, user, body)
        return jsonify({"data": {"delivered_to": len(inboxes), "size": len(body),
                                 "sha256": hashlib.sha256(body).hexdigest()}}), 202

    @app.get("/api/v1/tasks/<task>/messages")
    def receive_message(task: str):
        user = caller()
        inbox = service.inbox_of(user, task)
        try:
            timeout = min(float(request.args.get("timeout", "30")), MAX_POLL_SECONDS)
        except ValueError:
            raise InvalidInput("timeout must be a number of seconds") from None
        message = boxes.get(task, inbox, timeout)
        if message is None:
            return Response(status=204)
        return Response(message.body, mimetype="application/octet-stream",
                        headers={"X-Werkbund-Sender": message.sender})

    @app.put("/api/v1/tasks/<task>/model")
    def put_model(task: str):
        user = caller()
        meta_header = request.headers.get("X-Werkbund-Meta", "{}")
        try:
            meta = json.loads(meta_header)
        except json.JSONDecodeError:
            raise InvalidInput("X-Werkbund-Meta must be a JSON object") from None
        return jsonify({"data": service.put_model(user, task, request.get_data(cache=False), meta)})

    @app.get("/api/v1/tasks/<task>/model")
    def get_model(task: str):
        user = caller()
        data, info = service.get_model(user, task)
        return Response(data, mimetype="application/octet-stream",
                        headers={"X-Werkbund-Meta": json.dumps(info)})

    @app.get("/api/v1/health")
    def health():
        return jsonify({"data": {"status": "ok"}})

    return app
