"""The Flask front of the platform core: JSON control calls and binary task messages.

Routes (all under ``/api/v1``):

- ``POST /register`` and ``POST /login``: JSON ``{user, password[, org]}``; login returns a session token;
  ``POST /logout`` revokes it.
- ``POST /call/<command>``: JSON parameters, ``Authorization: Bearer <token>``; replies ``{"data": ...}``.
- ``POST /tasks/<task>/messages?to=aggregator|all|<participant>``: the raw message body; an optional
  ``X-Werkbund-Message-Id`` (1-64 of ``A-Za-z0-9_-``) makes a repeated send of it store nothing again.
- ``GET /tasks/<task>/messages?timeout=S``: long-poll for the caller's next message
  (200 with the body and ``X-Werkbund-Sender``; 204 when none came in time).
- ``PUT /tasks/<task>/model`` (creator) and ``GET /tasks/<task>/model`` (creator, participants).
- ``GET /openapi.json``: the OpenAPI 3 spec of these routes, built from the commands' parameter models.

Every error is ``{"error": {"code", "message"}}`` with the HTTP status of its class.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from werkbund.local_platform.openapi import openapi_spec
from werkbund.platform.command_schemas import check_json, parse_json
from werkbund.platform.commands import dispatch, dispatch_public
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PayloadTooLarge, WerkbundError
from werkbund.platform.login_guard import CLIENT_ADDRESS
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

    def json_body():
        return parse_json(request.get_data())  # dispatch checks that it is an object, and its parameters

    @app.before_request
    def _client_address():  # failed logins are counted per address too (platform/login_guard.py)
        CLIENT_ADDRESS.set(request.remote_addr)

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

    @app.post("/api/v1/logout")
    def logout():  # the token is revoked on the platform, not only forgotten by the client
        user = caller()
        return jsonify({"data": service.logout(user, request.headers["Authorization"][len("Bearer "):].strip())})

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
        # a repeat of a message id already accepted (the sender lost the reply) is not stored again
        boxes.put(task, inboxes, user, body, message_id=request.headers.get("X-Werkbund-Message-Id") or None)
        return jsonify({"data": {"delivered_to": len(inboxes), "size": len(body),
                                 "sha256": hashlib.sha256(body).hexdigest()}}), 202

    @app.get("/api/v1/tasks/<task>/messages")
    def receive_message(task: str):
        user = caller()
        inbox = service.inbox_of(user, task)
        try:
            timeout = float(request.args.get("timeout", "30"))
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout < float("inf"):  # NaN too
            raise InvalidInput("timeout must be a number of seconds, 0 or more")
        timeout = min(timeout, MAX_POLL_SECONDS)
        message = boxes.get(task, inbox, timeout)
        if message is None:
            return Response(status=204)
        response = Response(message.body, mimetype="application/octet-stream",
                            headers={"X-Werkbund-Sender": message.sender})
        response.call_on_close(message.done)  # on disk: the message's file goes once the reply was written
        return response

    @app.put("/api/v1/tasks/<task>/model")
    def put_model(task: str):
        user = caller()
        meta = parse_json(request.headers.get("X-Werkbund-Meta", "{}"), "the header X-Werkbund-Meta")
        if not isinstance(meta, dict):
            raise InvalidInput("the header X-Werkbund-Meta must be a JSON object")
        check_json(meta, "X-Werkbund-Meta")
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

    spec = openapi_spec()

    @app.get("/api/v1/openapi.json")
    def openapi():
        return jsonify(spec)

    return app
