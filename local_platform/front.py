"""The ASGI front of the local platform: the Flask app runs in a pool of threads, waiting long polls in none.

uvicorn serves this (one asyncio loop, HTTPS too). Each request runs the Flask app through a2wsgi, which
calls it in a thread pool and streams bodies in pieces both ways, so the routes stay plain Flask. A long
poll must not hold one of those threads while it waits (with more waiting participants than threads,
every other request would queue behind their polls): the route only looks (``LongPoll.take``) and answers
204 when the inbox is empty; the front holds that 204 back, awaits the mailbox's wake and runs the route
again, so the reply is the route's own every time. The session and the caller's place in the task are
checked at the first run, when the request came, as for any request (``LongPoll.inbox``), not at each
wake. The 204 goes out when the deadline passes or the server stops; a client that left gets nothing.

A chunked request body (no Content-Length) is first copied into a temporary file, as waitress did before:
the routes need a body's size before they read it.

Most requests are small both ways (a control call, a long poll's 204, an update of some kB). Such a request
is read whole on the event loop, the route runs in the pool and its reply is gathered there, and the loop
sends it: two thread hand-offs a request. a2wsgi hands off for every piece of the body and of the reply
(four to five for a small JSON reply), which was a fifth of the platform's time holding the GIL in a round.
A body past ``SMALL`` bytes goes through a2wsgi, streamed; a reply past ``SMALL`` bytes is sent as gathered
so far, then streamed from the route's iterable a piece at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import json
import tempfile

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import build_environ

from werkbund.local_platform.long_poll import SCOPE_KEY, LongPoll
from werkbund.platform.errors import PayloadTooLarge
from werkbund.platform.storage.files import PIECE


SMALL = 1 << 20  # bytes of a request body read, or of a reply gathered, before the route's thread hands off


class PlatformFront:
    """The ASGI app around the Flask app ``app``: ``threads`` run routes; bodies over ``max_body_bytes`` are
    refused from their Content-Length (413) before a byte is read, as the routes' own bounds are lower."""

    def __init__(self, app, threads: int, max_body_bytes: int):
        self._app = app
        self._wsgi = WSGIMiddleware(app, workers=threads)
        self._max_body_bytes = max_body_bytes
        self._polls: set[LongPoll] = set()
        self._closing = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # uvicorn runs without lifespan events; no websockets here
            return
        size = _content_length(scope)
        if size is not None and size > self._max_body_bytes:
            return await _json_reply(send, PayloadTooLarge(
                f"a request body may have at most {self._max_body_bytes} bytes; this one has {size}"))
        with contextlib.ExitStack() as spool:
            if size is None and _chunked(scope):
                try:
                    scope, receive = await _spooled(scope, receive, self._max_body_bytes, spool)
                except PayloadTooLarge as error:
                    return await _json_reply(send, error)
                except _ClientGone:
                    return
            await self._serve(scope, receive, send)

    async def _serve(self, scope, receive, send) -> None:
        """Run the route; while it parks a long poll, wait for the wake and run it again."""
        poll = LongPoll(asyncio.get_running_loop())
        self._polls.add(poll)
        scope = {**scope, SCOPE_KEY: poll}
        client_gone = None
        try:
            while True:
                reply = _Reply(send, poll)
                await self._run(scope, receive, reply.send)
                if reply.held is None:
                    return
                client_gone = client_gone or asyncio.ensure_future(_disconnect(receive))
                if self._closing or not await poll.wait(client_gone):
                    return await reply.release()
        finally:
            poll.stop_watching()
            self._polls.discard(poll)
            if client_gone is not None:
                client_gone.cancel()

    async def _run(self, scope, receive, send) -> None:
        """One run of the route: a small request in two hand-offs (module docstring), a larger body by a2wsgi."""
        size = _content_length(scope) or 0  # (no Content-Length: a GET, or a chunked body spooled to a length)
        if size > SMALL:
            return await self._wsgi(scope, receive, send)
        body = bytearray()
        while len(body) < size:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
        loop = asyncio.get_running_loop()
        environ = build_environ(scope, io.BytesIO(body))
        status, headers, gathered, reply, rest = await loop.run_in_executor(
            self._wsgi.executor, contextvars.copy_context().run, self._gather, environ)
        try:  # (the rest of a long reply is closed, and with it its message done, however the sending ends)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for piece in gathered:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            while rest is not None and (
                    piece := await loop.run_in_executor(self._wsgi.executor, next, rest, None)) is not None:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            if reply is not None:
                await loop.run_in_executor(self._wsgi.executor, _close, reply)

    def _gather(self, environ) -> tuple:
        """Run the Flask app (in a pool thread): (status, headers, the reply's pieces, None, None), or, past
        ``SMALL`` bytes, the pieces so far, the route's reply and the iterator of its rest (the caller sends
        that rest, then closes the reply)."""
        started = []

        def start_response(status, headers, exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]),
                          [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers]]
            return gathered.append

        gathered, total, handed_on = [], 0, False
        reply = self._app(environ, start_response)
        try:
            pieces = iter(reply)
            for piece in pieces:
                if piece:
                    gathered.append(piece)
                    total += len(piece)
                if total > SMALL:
                    handed_on = True
                    return *started, gathered, reply, pieces
            return *started, gathered, None, None
        finally:
            if not handed_on:
                _close(reply)

    def close(self) -> None:
        """Answer every waiting long poll now (204), so that a stopping server does not wait out their
        timeouts; on the event loop (the server's shutdown)."""
        self._closing = True
        for poll in self._polls:
            poll.wake()

    def shutdown(self) -> None:
        """Let the route threads go once the server has stopped."""
        self._wsgi.executor.shutdown(wait=False, cancel_futures=True)


class _Reply:
    """The ASGI ``send`` of one run of the route: a 204 while the poll watches its inbox is held back (the
    front waits, then runs the route again or releases it); every other reply goes out as it comes."""

    def __init__(self, send, poll: LongPoll):
        self._send, self._poll = send, poll
        self.held: list[dict] | None = None

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == 204 and self._poll.watching:
            self.held = [message]
        elif self.held is not None:
            self.held.append(message)
        else:
            await self._send(message)

    async def release(self) -> None:
        for message in self.held:
            await self._send(message)


def _close(reply) -> None:
    close = getattr(reply, "close", None)
    if close is not None:
        close()


async def _disconnect(receive) -> None:
    """Returns when the client has closed its connection (a GET's own body, if any, is passed over)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    """The client closed its connection before its body was all there."""


async def _spooled(scope, receive, limit: int, stack: contextlib.ExitStack):
    """A chunked body (no Content-Length) copied into a temporary file, then (scope with its Content-Length,
    receive that reads it back in pieces): the routes reserve room from a body's size before they read it,
    so they need the size first. Memory stays bounded; PayloadTooLarge past ``limit`` bytes."""
    spool = stack.enter_context(tempfile.TemporaryFile())
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        piece, more = message.get("body", b""), message.get("more_body", False)
        size += len(piece)
        if size > limit:
            raise PayloadTooLarge(f"a request body may have at most {limit} bytes; this one has more")
        await asyncio.to_thread(spool.write, piece)
    spool.seek(0)
    headers = [(name, value) for name, value in scope["headers"] if name != b"transfer-encoding"]
    left = size

    async def replay():
        nonlocal left
        if not left:
            return await receive()  # the body is over: what comes now is the client leaving
        piece = await asyncio.to_thread(spool.read, min(PIECE, left))
        left -= len(piece)
        return {"type": "http.request", "body": piece, "more_body": left > 0}

    return {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}, replay


def _chunked(scope) -> bool:
    return any(name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in scope["headers"])


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses a malformed one before the app sees it
    return None


async def _json_reply(send, error) -> None:
    body = json.dumps({"error": error.to_dict()}).encode()
    await send({"type": "http.response.start", "status": error.http_status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
