"""The Flask front of the platform core: JSON control calls and binary task messages.

Routes (all under ``/api/v1``):

- ``POST /register`` and ``POST /login``: JSON ``{user, password[, org]}``; login returns a session token;
  ``POST /logout`` revokes it.
- ``POST /call/<command>``: JSON parameters, ``Authorization: Bearer <token>``; replies ``{"data": ...}``.
  An optional ``X-Werkbund-Request-Id`` (1-64 of ``A-Za-z0-9_-``, the same on every retry of the call)
  makes a state-changing command run once: a repetition answers the recorded reply
  (``platform/request_replies.py``).
- ``POST /tasks/<task>/messages?to=aggregator|all|<participant>``: the raw message body; an optional
  ``X-Werkbund-Message-Id`` (1-64 of ``A-Za-z0-9_-``) makes a repeated send of it store nothing again.
- ``GET /tasks/<task>/messages?timeout=S``: long-poll for the caller's next message
  (200 with the body and ``X-Werkbund-Sender``; 204 when none came in time).
- ``PUT /tasks/<task>/model`` (creator) and ``GET /tasks/<task>/model`` (creator, participants).
- ``GET /openapi.json``: the OpenAPI 3 spec of these routes, built from the commands' parameter models.

Message bodies and models are streamed: read from ``request.stream`` in pieces into a file (the inbox's,
or the model folder's file named by its sha256), their size bound checked from ``Content-Length``
before a byte is read (413 ``payload_too_large``, 429 ``inbox_full``), and sent back from the file.

Every error is ``{"error": {"code", "message"}}`` with the HTTP status of its class.
"""
from __future__ import annotations

import json
import logging
import os

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from werkbund.local_platform.long_poll import SCOPE_KEY as LONG_POLL
from werkbund.local_platform.openapi import openapi_spec
from werkbund.platform.command_schemas import check_json, parse_json
from werkbund.platform.commands import dispatch, dispatch_public
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PayloadTooLarge, WerkbundError
from werkbund.platform.login_guard import CLIENT_ADDRESS
from werkbund.platform.storage.mailboxes import Mailboxes
from werkbund.platform.request_replies import HEADER as REQUEST_ID_HEADER
from werkbund.platform.request_replies import request_id
from werkbund.platform.model_store import MAX_MODEL_BYTES
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.local_platform")

MAX_POLL_SECONDS = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3


def create_app(service: PlatformService, mailboxes: Mailboxes | None = None,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_model_bytes: int = MAX_MODEL_BYTES) -> Flask:
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
        with request_id(request.headers.get(REQUEST_ID_HEADER)):  # a malformed one: 400 invalid_input
            result = dispatch(service, user, command, json_body())
        if command == "delete_task":
            boxes.drop_task(result["task"])
        return jsonify({"data": result})

    @app.post("/api/v1/tasks/<task>/messages")
    def send_message(task: str):
        user = caller()
        to = request.args.get("to", "")
        inboxes = service.route_message(user, task, to)
        size = _body_size(max_message_bytes, "a message")
        # streamed in pieces into the inbox's file (on disk), the sender's share reserved first; a repeat of
        # a message id already accepted (the sender lost the reply) is not stored again
        _, sha256 = boxes.put_stream(task, inboxes, user, request.stream, size,
                                     message_id=request.headers.get("X-Werkbund-Message-Id") or None)
        return jsonify({"data": {"delivered_to": len(inboxes), "size": size, "sha256": sha256}}), 202

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
        poll = request.environ.get("asgi.scope", {}).get(LONG_POLL)
        # under the ASGI front (front.py) the wait is the front's, on its event loop, not this thread's
        message = boxes.get(task, inbox, timeout) if poll is None else poll.take(boxes, task, inbox, timeout)
        if message is None:
            return Response(status=204)
        handle = message.open()
        if handle is None:  # the task was deleted meanwhile
            message.done()
            return Response(status=204)
        # on disk: the message's file goes once the reply was written (the server closes the file then)
        return _file_response(_ClosingFile(handle, message.done), message.size, {"X-Werkbund-Sender": message.sender})

    @app.put("/api/v1/tasks/<task>/model")
    def put_model(task: str):
        user = caller()
        meta = parse_json(request.headers.get("X-Werkbund-Meta", "{}"), "the header X-Werkbund-Meta")
        if not isinstance(meta, dict):
            raise InvalidInput("the header X-Werkbund-Meta must be a JSON object")
        check_json(meta, "X-Werkbund-Meta")
        size = _body_size(max_model_bytes, "a model")
        # streamed into a file named by its sha256 in the platform's model folder (service.put_model_stream)
        return jsonify({"data": service.put_model_stream(user, task, request.stream, meta, size=size)})

    @app.get("/api/v1/tasks/<task>/model")
    def get_model(task: str):
        user = caller()
        handle, info = service.open_model(user, task)
        return _file_response(handle, info["size"], {"X-Werkbund-Meta": json.dumps(info)})

    @app.get("/api/v1/health")
    def health():
        return jsonify({"data": {"status": "ok"}})

    spec = openapi_spec()

    @app.get("/api/v1/openapi.json")
    def openapi():
        return jsonify(spec)

    return app


def _body_size(limit: int, what: str) -> int:
    """The request body's announced size, refused (413) beyond ``limit`` before a byte is read; the route
    then reads ``request.stream`` in pieces, never the whole body at once, so it needs the size first (the
    ASGI front gives a chunked body its Content-Length; no header and no chunked stream: an empty body)."""
    size = request.content_length
    if size is None:
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise InvalidInput(f"{what} needs a Content-Length")
        size = 0
    if size > limit:
        raise PayloadTooLarge(f"{what} may have at most {limit} bytes; this one has {size}")
    request.max_content_length = limit  # this route's bound, not the app's
    return size


class _ClosingFile:
    """A file handle that calls ``then`` after it is closed (a passed-through reply runs no close callbacks)."""

    def __init__(self, handle, then):
        self._handle, self._then = handle, then

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def close(self) -> None:
        try:
            self._handle.close()
        finally:
            self._then()


def _file_response(handle, size: int, headers: dict) -> Response:
    """A reply that streams an open file in 1 MiB pieces, never read whole."""
    response = Response(wrap_file(request.environ, handle, buffer_size=1 << 20), mimetype="application/octet-stream",
                        headers=headers, direct_passthrough=True)
    response.content_length = size
    return response
