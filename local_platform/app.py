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
  (200 with the body and ``X-Werkbund-Sender``; 204 when none came in time). With ``most=K`` (2 to 256)
  the reply carries, once one message is there, as many as wait, up to K and about 1 MiB
  (``BATCH_BYTES``): the body is their frames one after another, the header ``X-Werkbund-Batch`` lists
  ``[sender, size]`` of each in order. One request for a round's updates instead of one each: the
  aggregator asks so (it asks a round again if it loses what it took; ``client/transports/http.py``).
- ``PUT /tasks/<task>/model`` (creator) and ``GET /tasks/<task>/model`` (creator, participants). The
  model's metadata (its round history, which grows with rounds and participants) travels as JSON at the
  start of the body, its length in ``X-Werkbund-Meta-Bytes`` (up to 16 MiB; ``GET ...?meta=body``), or,
  small, in the header ``X-Werkbund-Meta``.
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

from werkbund.client.messages import BATCH_HEADER
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
MAX_BATCH = 256  # messages one long poll may take (most=K)
BATCH_BYTES = 1024 * 1024  # a batch takes no further message once it holds this many bytes
META_BYTES_HEADER = "X-Werkbund-Meta-Bytes"  # a model's metadata opens the body; its length
MAX_META_BYTES = 16 * 1024 * 1024
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
        poll = request.environ.get("asgi.scope", {}).get(LONG_POLL)
        if poll is not None and poll.inbox is not None:  # run again on a wake: the request was let in when it
            inbox = poll.inbox  # came (its session and membership checked), as any request is, not at each wake
        else:
            inbox = service.inbox_of(caller(), task)
        try:
            timeout = float(request.args.get("timeout", "30"))
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout < float("inf"):  # NaN too
            raise InvalidInput("timeout must be a number of seconds, 0 or more")
        timeout = min(timeout, MAX_POLL_SECONDS)
        most = _whole_number(request.args.get("most", "1"), "most", MAX_BATCH, least=1, where="query parameter")
        # under the ASGI front (front.py) the wait is the front's, on its event loop, not this thread's
        message = boxes.get(task, inbox, timeout) if poll is None else poll.take(boxes, task, inbox, timeout)
        if message is None:
            return Response(status=204)
        if most == 1:
            return _messages_response([message], {"X-Werkbund-Sender": message.sender})
        messages = [message, *boxes.take_more(task, inbox, most - 1, BATCH_BYTES - message.size)]
        listing = json.dumps([[message.sender, message.size] for message in messages], separators=(",", ":"))
        return _messages_response(messages, {BATCH_HEADER: listing})

    @app.put("/api/v1/tasks/<task>/model")
    def put_model(task: str):
        user = caller()
        size = _body_size(max_model_bytes + MAX_META_BYTES, "a model")
        prefix = request.headers.get(META_BYTES_HEADER)
        if prefix is not None:  # the metadata opens the body (it grows with rounds and participants)
            meta_size = _whole_number(prefix, META_BYTES_HEADER, min(size, MAX_META_BYTES))
            where, text = f"the metadata ({META_BYTES_HEADER} bytes at the start of the body)", _read_exactly(meta_size)
            size -= meta_size
        else:
            where, text = "the header X-Werkbund-Meta", request.headers.get("X-Werkbund-Meta", "{}")
        meta = parse_json(text, where)
        if not isinstance(meta, dict):
            raise InvalidInput(f"{where} must be a JSON object")
        check_json(meta, where)
        if size > max_model_bytes:
            raise PayloadTooLarge(f"a model may have at most {max_model_bytes} bytes; this one has {size}")
        # streamed into a file named by its sha256 in the platform's model folder (service.put_model_stream)
        return jsonify({"data": service.put_model_stream(user, task, request.stream, meta, size=size)})

    @app.get("/api/v1/tasks/<task>/model")
    def get_model(task: str):
        """The model's bytes; its info (size, sha256, metadata) in the header X-Werkbund-Meta, or, with
        ``?meta=body``, as JSON before the bytes (its length in X-Werkbund-Meta-Bytes): a long round
        history does not fit a header that an HTTP client reads (64 KiB a line)."""
        user = caller()
        handle, info = service.open_model(user, task)
        if request.args.get("meta") != "body":
            return _file_response(handle, info["size"], {"X-Werkbund-Meta": json.dumps(info)})
        text = json.dumps(info).encode()
        response = Response(_prefixed(text, handle), mimetype="application/octet-stream",
                            headers={META_BYTES_HEADER: str(len(text))}, direct_passthrough=True)
        response.content_length = len(text) + info["size"]
        return response

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


def _whole_number(text: str, what: str, limit: int, least: int = 0, where: str = "header") -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"the {where} {what} must be a whole number"
                           + (" of bytes" if where == "header" else "")) from None
    if not least <= value <= limit:
        raise InvalidInput(f"the {where} {what} must be between {least} and {limit}" + (
            f" (the body's size, at most {MAX_META_BYTES} bytes of metadata)" if where == "header" else ""))
    return value


def _read_exactly(size: int) -> bytes:
    """The next ``size`` bytes of the request body (InvalidInput if it ends before)."""
    parts, left = [], size
    while left:
        piece = request.stream.read(left)
        if not piece:
            raise InvalidInput(f"the body ended {left} bytes into its metadata")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _prefixed(text: bytes, handle):
    """``text``, then the open file ``handle`` in 1 MiB pieces; the file is closed at the end."""
    try:
        yield text
        while piece := handle.read(1 << 20):
            yield piece
    finally:
        handle.close()


def _messages_response(messages: list, headers: dict) -> Response:
    """One reply with ``messages``' frames one after another (one message, or a batch), each file read in 1 MiB
    pieces; every message is done (its file removed) once the reply was written (the server closes the reply
    then). 204 if the task was deleted meanwhile (every message done)."""
    handles = [message.open() for message in messages]
    if any(handle is None for handle in handles):
        _ClosingPieces([handle for handle in handles if handle is not None], [m.done for m in messages]).close()
        return Response(status=204)
    response = Response(_ClosingPieces(handles, [message.done for message in messages]),
                        mimetype="application/octet-stream", headers=headers, direct_passthrough=True)
    response.content_length = sum(message.size for message in messages)
    return response


class _ClosingPieces:
    """The open files ``handles`` in 1 MiB pieces, one after another; closing closes them and calls ``then``."""

    def __init__(self, handles: list, then: list):
        self._handles, self._then = handles, then

    def __iter__(self):
        for handle in self._handles:
            while piece := handle.read(1 << 20):
                yield piece

    def close(self) -> None:
        try:
            for handle in self._handles:
                handle.close()
        finally:
            for done in self._then:
                done()


def _file_response(handle, size: int, headers: dict) -> Response:
    """A reply that streams an open file in 1 MiB pieces, never read whole."""
    response = Response(wrap_file(request.environ, handle, buffer_size=1 << 20), mimetype="application/octet-stream",
                        headers=headers, direct_passthrough=True)
    response.content_length = size
    return response
