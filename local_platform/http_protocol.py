"""The local platform's HTTP/1.1 parser: uvicorn's httptools protocol (llhttp, in C) with a bound on headers.

uvicorn's pure-Python parser (h11) took about a fifth of the platform's CPU in a 10-participant round
(``docs/benchmarks.md``); httptools parses the same requests in C. h11 refuses a request whose headers
outgrow its limit, but httptools has no limit of its own, so a client could send headers without end.
``BoundedHttpToolsProtocol`` counts a request's target and header bytes and answers 431 and closes the
connection once they pass ``max_header_bytes``, before the request reaches the app.
"""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadersTooLarge(Exception):
    """Raised inside a parser callback: the request's headers passed the bound."""


def bounded_httptools(max_header_bytes: int) -> type:
    """The protocol class for ``uvicorn.Config(http=...)``, refusing headers larger than ``max_header_bytes``."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _header_bytes = 0

        def on_message_begin(self) -> None:
            self._header_bytes = 0
            super().on_message_begin()

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes:
                raise HeadersTooLarge()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)  # (": " and the line's end, as they came)
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            # httptools raises what a callback raised (HeadersTooLarge) as an HttpParserCallbackError, which
            # uvicorn logs as an invalid request and answers with a 400 here; one refused for its headers' size
            # (before it reached the app: nothing of it ran) gets 431 instead
            if self._header_bytes > max_header_bytes:
                self._refuse(f"the request's headers are larger than {max_header_bytes} bytes")
            else:
                super().send_400_response(msg)

        def _refuse(self, msg: str) -> None:
            if self.transport.is_closing():
                return
            body = msg.encode("ascii")
            self.transport.write(b"".join([
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n", body]))
            self.transport.close()

    return BoundedHttpToolsProtocol
