"""HTTP transport to the local platform (requests, one keep-alive session).

When a platform this transport has reached before cannot be reached (connection refused or cut, no
answer, 502/503/504: it is being restarted), a request is tried again with capped exponential
backoff and jitter for up to ``WERKBUND_RECONNECT_SECONDS`` (default 300; 0: give up at once), with
one log line "platform unreachable; retrying for up to N s", before it fails with ``Unavailable``. Every task
message carries an id of its own (``X-Werkbund-Message-Id``), so a message sent again because the
reply was lost is stored once; every control call likewise (``X-Werkbund-Request-Id``, the same on each
retry), so a command the platform did before it crashed is answered, not done again. A platform never
reached (a wrong URL, not started, plain HTTP to an HTTPS port) fails at once: that is a user's mistake
to fix, not a restart to wait for. A login the platform answers "busy" is asked again the same way.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import requests

from werkbund.client.messages import (BATCH_HEADER, MAGIC, CheckedFrame, MalformedFrame, MalformedMessage,
                                       frame_parts, read_exactly, read_message)
from werkbund.client.transports.base import Transport
from werkbund.platform.errors import (AuthenticationFailed, PayloadTooLarge, Unavailable, WerkbundError,
                                      error_from_dict)
from werkbund.platform.tls import client_context, explain

POLL_SECONDS = 25.0
STREAM_FROM = 4 * 1024 * 1024  # bytes of payload from which a message is sent without building its frame
READ_PIECE = 1024 * 1024  # bytes read from a reply at a time
RECONNECT_SECONDS = 300.0      # default patience with an unreachable platform (WERKBUND_RECONNECT_SECONDS)
BACKOFF_FIRST, BACKOFF_CAP = 0.2, 5.0
RETRY_STATUSES = frozenset({502, 503, 504})
DOWNLOAD_PIECE = 1 << 20
HEADER_META_BYTES = 8 * 1024  # a model's metadata up to this size travels in a header, larger in the body

log = logging.getLogger("werkbund.transport")


def reconnect_seconds() -> float:
    """How long a client keeps trying an unreachable platform: WERKBUND_RECONNECT_SECONDS, else 300."""
    text = os.environ.get("WERKBUND_RECONNECT_SECONDS", "").strip()
    try:
        value = float(text) if text else RECONNECT_SECONDS
    except ValueError:
        value = RECONNECT_SECONDS
    return value if 0 <= value < float("inf") else RECONNECT_SECONDS


class HttpTransport(Transport):
    def __init__(self, url: str, token: str | None = None, user: str | None = None,
                 ca_certificate: str | None = None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.ca_certificate = ca_certificate
        if ca_certificate:  # an https:// platform whose certificate this CA signed
            client_context(ca_certificate)  # a missing or broken file: one clear error now
        # given with every request: a session's own verify loses to REQUESTS_CA_BUNDLE (requests #3829)
        self.verify = ca_certificate or True
        self.token = token
        self.user = user
        self.reconnect_seconds = reconnect_seconds()
        self.reached = False  # the platform answered once: from then on an unreachable one is waited for
        self._held: dict[str, collections.deque] = {}  # messages a batch brought that are not handed out yet

    # ------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, json_body=None, data=None, params=None,
                 headers=None, timeout: float = 60.0, auth: bool = True, stream: bool = False) -> requests.Response:
        """One request, tried again with backoff while the platform is unreachable (module docstring)."""
        give_up = time.monotonic() + self.reconnect_seconds
        attempt = 0
        while True:
            try:
                return self._request_once(method, path, json_body=json_body, data=data, params=params,
                                          headers=headers, timeout=timeout, auth=auth, stream=stream)
            except _Unreachable as exc:
                now = time.monotonic()
                if now >= give_up or not self.reached:
                    raise Unavailable(str(exc)) from None
                if attempt == 0:
                    log.warning("platform unreachable; retrying for up to %.0f s (%s)", self.reconnect_seconds, exc)
                time.sleep(max(0.0, min(_backoff(attempt), give_up - now)))
                attempt += 1
                if attempt > 1 and attempt % 10 == 1:
                    log.info("platform still unreachable after %d tries", attempt)

    def _request_once(self, method: str, path: str, *, json_body=None, data=None, params=None,
                      headers=None, timeout: float = 60.0, auth: bool = True, stream: bool = False) -> requests.Response:
        all_headers = dict(headers or {})
        if auth:
            if not self.token:
                raise AuthenticationFailed("not logged in")
            all_headers["Authorization"] = f"Bearer {self.token}"
        if hasattr(data, "seek"):  # a file body (streamed by requests): every try sends it from the start
            data.seek(0)
        try:
            response = self.session.request(method, f"{self.url}/api/v1{path}", json=json_body, data=data,
                                            params=params, headers=all_headers, timeout=timeout,
                                            verify=self.verify, stream=stream)
        except requests.exceptions.SSLError as exc:
            raise Unavailable(explain(exc, "local platform", self.url, self.ca_certificate)
                              or f"TLS with the local platform at {self.url} failed: {exc}") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):  # refused, or cut mid-reply
            raise _Unreachable(f"cannot reach the local platform at {self.url}; is `werkbund local-platform` "
                               "running?") from None
        except requests.Timeout:
            raise _Unreachable(f"the local platform at {self.url} did not answer in {timeout:.0f} s") from None
        self.reached = True
        if response.status_code in RETRY_STATUSES and not _is_werkbund_error(response):
            raise _Unreachable(f"the local platform at {self.url} answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def _json(self, response: requests.Response):
        try:
            return response.json()["data"]
        except (ValueError, KeyError):
            raise WerkbundError(f"unexpected reply from {self.url}: {response.text[:200]!r}") from None

    # ------------------------------------------------------------ control
    def register(self, user, password, org):
        return self._json(self._request("POST", "/register", auth=False,
                                        json_body={"user": user, "password": password, "org": org}))

    def login(self, user, password):
        """Log in. A platform that answers it is busy (503 ``unavailable``: it checks two passwords at a time,
        so when many participants start at once the rest queue, and past 10 s are told to come back) is
        asked again with backoff for as long as an unreachable one would be."""
        give_up = time.monotonic() + self.reconnect_seconds
        attempt = 0
        while True:
            try:
                data = self._json(self._request("POST", "/login", auth=False,
                                                json_body={"user": user, "password": password}))
                break
            except Unavailable:
                now = time.monotonic()
                if not self.reached or now >= give_up:
                    raise
                time.sleep(max(0.0, min(_backoff(attempt), give_up - now)))
                attempt += 1
        self.token, self.user = data["token"], data["user"]
        return data

    def call(self, command, **params):
        headers = {"X-Werkbund-Request-Id": uuid.uuid4().hex}  # one per call, the same on every retry
        return self._json(self._request("POST", f"/call/{command}", json_body=params, headers=headers))

    def logout(self):
        """Revoke the session token on the platform (it no longer opens anything) and forget it."""
        if self.token:
            self._json(self._request("POST", "/logout"))
        self.token = None

    # ------------------------------------------------------------ messages
    def send(self, task, to, body):
        """Send a task message: bytes, or a file (a ``pathlib.Path`` or a binary file object) streamed from disk."""
        headers = {"Content-Type": "application/octet-stream", "X-Werkbund-Message-Id": uuid.uuid4().hex}
        with _upload_body(body) as data:
            return self._json(self._request("POST", f"/tasks/{task}/messages", params={"to": to}, data=data,
                                            headers=headers, timeout=600))

    def send_message(self, task, to, kind, payload, header, payload_sha256=None):
        """A large message goes out as its frame's header and then its payload, read from where the
        payload is (``frame_parts``), never copied into a frame first."""
        if len(payload) < STREAM_FROM:
            return super().send_message(task, to, kind, payload, header, payload_sha256)
        return self.send(task, to, _FrameBody(*frame_parts(task, kind, payload, payload_sha256=payload_sha256,
                                                           **header)))

    def receive(self, task, timeout):
        """The next message as (sender, frame), or None after ``timeout`` s. The frame is read from the
        reply straight into its payload and checked on the way (``read_message``): a GiB message is
        held once, not as the reply's body and then as its payload. A reply cut off mid-body is asked
        for again (the platform deletes a message only once it was sent whole); a frame that arrived
        whole but fails its checks comes back as a ``MalformedFrame``; a body that is no frame at all, as
        its bytes. Replies cut off again and again are asked for with backoff, and never past ``timeout``."""
        return self.receive_batched(task, timeout, 1)

    def receive_batched(self, task, timeout, most):
        """As ``receive``; with ``most`` above 1 one long poll takes up to ``most`` of the messages waiting
        (``?most=``, about 1 MiB of them) and they are handed out one by one from here."""
        held = self._held.get(task)
        if held:
            return held.popleft()
        got = self._poll(task, timeout, most)
        if not got:
            return None
        if len(got) > 1:
            self._held[task] = collections.deque(got[1:])
        return got[0]

    def _poll(self, task, timeout, most) -> list | None:
        deadline = time.monotonic() + max(0.0, timeout)
        cuts = 0
        while True:
            wait = max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            response = self._request("GET", f"/tasks/{task}/messages", timeout=wait + 60, stream=True,
                                     params={"timeout": f"{wait:.3f}", **({"most": str(most)} if most > 1 else {})})
            with response:
                if response.status_code == 200:
                    sender = response.headers.get("X-Werkbund-Sender", "")
                    try:
                        if BATCH_HEADER in response.headers:
                            return _read_batch(response)
                        return [(sender, _read_body(response))]
                    except MalformedMessage as exc:
                        return [(sender, MalformedFrame(str(exc)))]  # decodes as 'malformed' upstream
                    except _CUT_OFF as exc:  # asked again within the deadline, after a backoff
                        log.info("a message's reply was cut off (%s); asking again", exc)
                        left = deadline - time.monotonic()
                        if left > 0:
                            time.sleep(min(_backoff(cuts), left))
                        cuts += 1
            if time.monotonic() >= deadline:
                return None  # the message, if one was cut off, is still there for the next call

    # ------------------------------------------------------------ models
    def put_model(self, task, data, meta):
        """Store the final model: bytes, or a file (a ``pathlib.Path`` or a binary file object) streamed from disk.
        Its metadata goes in a header while small; larger (the round history grows with rounds and
        participants), as JSON at the start of the body (``X-Werkbund-Meta-Bytes``)."""
        text = json.dumps(meta).encode()
        headers = {"Content-Type": "application/octet-stream"}
        with _upload_body(data) as body:
            if len(text) <= HEADER_META_BYTES:
                headers["X-Werkbund-Meta"] = text.decode()
                return self._json(self._request("PUT", f"/tasks/{task}/model", data=body, timeout=600,
                                                headers=headers))
            if isinstance(body, (bytes, bytearray, memoryview)):
                payload, size = memoryview(body), len(body)
            else:
                payload, size = body, os.fstat(body.fileno()).st_size - body.tell()
            headers["X-Werkbund-Meta-Bytes"] = str(len(text))
            stored = self._json(self._request("PUT", f"/tasks/{task}/model", data=_FrameBody(text, payload, size),
                                              timeout=600, headers=headers))
        if stored.get("size") != size:  # a platform from before the metadata in the body kept it as model bytes
            raise WerkbundError(f"the platform at {self.url} stored {stored.get('size')} bytes for a model of {size}: "
                                "it is too old to take metadata this large; update werkbund there")
        return stored

    def get_model(self, task):
        with tempfile.TemporaryFile() as spool:
            meta = self._download_model(task, spool)
            spool.seek(0)
            return spool.read(), meta

    def download_model(self, task, path) -> dict:
        """Stream the final model into the file ``path`` (written beside it, then renamed), its sha256 checked;
        its info. Memory stays bounded whatever the model's size."""
        path = Path(path)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w+b") as out:
                meta = self._download_model(task, out)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return meta

    def _download_model(self, task, out) -> dict:
        """The model streamed into the open file ``out`` and checked against its sha256; tried again from the
        start while the platform is unreachable, as every request is."""
        give_up = time.monotonic() + self.reconnect_seconds
        while True:
            out.seek(0)
            out.truncate()
            response = self._request("GET", f"/tasks/{task}/model", params={"meta": "body"}, timeout=600, stream=True)
            prefix = response.headers.get("X-Werkbund-Meta-Bytes")  # (absent: a platform from before, in a header)
            if prefix is None:
                meta = json.loads(response.headers.get("X-Werkbund-Meta", "{}"))
            elif prefix.isdigit():
                meta, prefix = None, int(prefix)
            else:
                response.close()
                raise WerkbundError(f"the platform sent a model with X-Werkbund-Meta-Bytes {prefix[:40]!r}")
            head, digest, size = bytearray(), hashlib.sha256(), 0
            try:
                with response:
                    for piece in response.iter_content(DOWNLOAD_PIECE):
                        if meta is None:  # the metadata's JSON first, then the model's bytes
                            take = prefix - len(head)
                            head += piece[:take]
                            piece = piece[take:]
                            if len(head) == prefix:
                                meta = _json_object(bytes(head), f"the model of task {task!r}'s metadata")
                        digest.update(piece)
                        out.write(piece)
                        size += len(piece)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout):
                if time.monotonic() >= give_up:
                    raise Unavailable(f"the download of task {task!r}'s model from {self.url} broke off") from None
                time.sleep(BACKOFF_FIRST)
                continue
            if meta is None:
                raise WerkbundError(f"the model of task {task!r} ended inside its metadata")
            if (size, digest.hexdigest()) != (meta.get("size"), meta.get("sha256")):
                raise WerkbundError(f"the model of task {task!r} arrived with {size} bytes and sha256 "
                                    f"{digest.hexdigest()}; the platform announced {meta.get('size')} and "
                                    f"{meta.get('sha256')}")
            out.flush()
            return meta

    def close(self):
        self.session.close()


@contextlib.contextmanager
def _upload_body(body):
    """What requests sends: bytes as they are; a path opened (and closed after); a file object as it is.
    A file goes out in pieces with its Content-Length, never read whole."""
    if isinstance(body, os.PathLike):
        with open(body, "rb") as handle:
            yield handle
    else:
        yield body


def _json_object(text: bytes, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WerkbundError(f"{what} is not a JSON object")
    return value


def _backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 2``: capped exponential, with jitter so that many clients spread out."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.0)


class _Unreachable(Exception):
    """The platform did not answer (or a proxy said it is down): worth trying again."""


def _is_werkbund_error(response: requests.Response) -> bool:
    """A typed error of the platform itself (e.g. its own 503 ``unavailable``): an answer, given to the caller."""
    try:
        return isinstance(response.json().get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _error_of(response: requests.Response) -> WerkbundError:
    try:
        return error_from_dict(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        if response.status_code == 413:  # the HTTP server's own refusal, before the platform saw the body
            return PayloadTooLarge(f"the platform refused a body this large: {response.text[:200]}")
        return WerkbundError(f"HTTP {response.status_code} from the platform: {response.text[:200]}")


_CUT_OFF = (requests.exceptions.RequestException, OSError)  # what requests raises when a reply breaks off


class _FrameBody:
    """A message frame as requests streams a body: the header part, then the payload, read in pieces
    from where they are; with its length (the Content-Length) and a rewind for a request sent again.
    The payload: bytes (a memoryview), or an open binary file of ``size`` bytes from where it stands."""

    def __init__(self, prefix: bytes, payload, size: int | None = None):
        size = len(payload) if size is None else size
        self._parts, self._size, self._at = (memoryview(prefix), payload), len(prefix) + size, 0
        self._base = None if isinstance(payload, memoryview) else payload.tell()

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        return iter(lambda: self.read(1 << 20), b"")

    def tell(self) -> int:
        return self._at

    def seek(self, position: int, whence: int = 0) -> int:
        self._at = position if whence == 0 else self._at + position if whence == 1 else self._size + position
        return self._at

    def read(self, count: int = -1):
        prefix, payload = self._parts
        if count is None or count < 0:
            count = self._size - self._at
        if self._at < len(prefix):
            piece = prefix[self._at:self._at + count]
        elif self._base is None:
            start = self._at - len(prefix)
            piece = payload[start:start + count]
        else:
            payload.seek(self._base + self._at - len(prefix))
            piece = payload.read(min(count, self._size - self._at))
        self._at += len(piece)
        return piece


def _content_length(response: requests.Response) -> int:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        raise MalformedMessage("a message reply without its Content-Length") from None


def _read_body(response: requests.Response) -> CheckedFrame | bytes:
    """The body of a 200 reply: a message frame read into its payload's own bytes and checked on the
    way (``read_message``), or the bytes as they came when it does not start like a frame."""
    size = _content_length(response)
    return _read_frame(_Pieces(response).readinto, size)


def _read_batch(response: requests.Response) -> list:
    """The (sender, frame) of each message of a batch reply (``?most=``), in order: the frames one after
    another, ``X-Werkbund-Batch`` their ``[sender, size]``. A frame that fails its checks is a
    ``MalformedFrame`` in its place, the others are read on."""
    try:
        listing = json.loads(response.headers[BATCH_HEADER])
        listed = [(str(sender), int(size)) for sender, size in listing]
    except (ValueError, TypeError):
        raise MalformedMessage(f"a batch reply whose {BATCH_HEADER} header is no list of [sender, size]") from None
    if not listed or any(size < 0 for _, size in listed) or sum(size for _, size in listed) != _content_length(response):
        raise MalformedMessage(f"a batch reply whose {BATCH_HEADER} sizes are not its body's")
    pieces, got = _Pieces(response), []
    for sender, size in listed:
        left = size

        def readinto(buffer) -> int:  # this frame's bytes only
            nonlocal left
            count = pieces.readinto(buffer[:left]) if left else 0
            left -= count
            return count
        try:
            got.append((sender, _read_frame(readinto, size)))
        except MalformedMessage as exc:
            got.append((sender, MalformedFrame(str(exc))))
        while left:  # what a refused frame left unread
            if not readinto(memoryview(bytearray(min(left, READ_PIECE)))):
                raise MalformedMessage(f"the batch ends {left} bytes before its frame from {sender} does")
    return got


class _Pieces:
    """A reply's body as ``readinto``: its pieces, each copied once into where the frame goes."""

    def __init__(self, response: requests.Response):
        self._pieces, self._held = response.iter_content(READ_PIECE), memoryview(b"")

    def readinto(self, buffer) -> int:
        if not self._held:
            self._held = memoryview(next(self._pieces, b""))
        count = min(len(buffer), len(self._held))
        buffer[:count] = self._held[:count]
        self._held = self._held[count:]
        return count


def _read_frame(readinto, size: int) -> CheckedFrame | bytes:
    """``size`` bytes from ``readinto``: a frame checked as it is read, or the bytes when they do not start
    like a frame."""
    head = read_exactly(readinto, min(len(MAGIC), size), size)
    if bytes(head) != MAGIC:
        return bytes(head) + bytes(read_exactly(readinto, size - len(head), size, after=len(head)))
    served = [head]

    def after_head(buffer) -> int:  # what was read to look at the magic, then the rest
        if served:
            first = served.pop()
            buffer[:len(first)] = first
            return len(first)
        return readinto(buffer)
    return read_message(after_head, size)
