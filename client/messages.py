"""Task messages: a small JSON header and a binary payload in one frame.

Frame layout: ``b"WBM1"`` | header length (4 bytes, big-endian) | header JSON (UTF-8) | payload.
The header always carries ``kind``, ``task``, ``size`` and ``sha256`` of the payload;
a receiver checks the magic, the lengths and the checksum before anyone looks at the payload.
The sender is never taken from the header: the platform stamps it.

Large frames (models of a GiB) are built and read with one pass over the payload each way:
``encode_message`` copies the payload into the frame while another thread hashes it, and
``read_message`` reads a frame from a stream straight into the payload's final ``bytes`` object,
hashing each piece beside the reads, so ``decode_message`` of what it returns neither copies nor
hashes again.
"""
from __future__ import annotations

import hashlib
import json
import queue
import struct
import threading
from dataclasses import dataclass, field

from werkbund.client.bytes_builder import BytesBuilder
from werkbund.platform.storage.files import hash_pieces

MAGIC = b"WBM1"
MAX_HEADER_BYTES = 1024 * 1024
HASH_BESIDE = 4 * 1024 * 1024  # payloads from this size are hashed in a thread beside the copy or the reads
PIECE = 8 * 1024 * 1024
BATCH_HEADER = "X-Werkbund-Batch"  # a reply of several frames, one after another: [sender, size] of each


class MalformedMessage(ValueError):
    """A message frame that is cut, corrupt or not a werkbund message."""


@dataclass
class TaskMessage:
    kind: str
    header: dict
    payload: bytes = b""
    sender: str = ""
    extra: dict = field(default_factory=dict)
    checked_sha256: str = ""  # the payload's sha256, checked against it on receipt (``decode_message``)

    def get(self, key, default=None):
        return self.header.get(key, default)


@dataclass(frozen=True)
class MalformedFrame:
    """What a transport hands on for a message it read whole that failed a check on the way
    (``read_message``): ``decode_message`` raises MalformedMessage with the reason."""

    reason: str


@dataclass(frozen=True)
class CheckedFrame:
    """A frame ``read_message`` took from a stream and checked on the way (header, size, sha256)."""

    header: dict
    payload: bytes

    def __len__(self) -> int:
        return len(self.payload)


def header_bytes(header: dict) -> bytes:
    head_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head_bytes) > MAX_HEADER_BYTES:
        raise ValueError("a message header may have at most 1 MiB")
    return head_bytes


def _byte_view(payload) -> memoryview:
    if not isinstance(payload, (bytes, bytearray, memoryview)) or not memoryview(payload).c_contiguous:
        payload = bytes(payload)
    return memoryview(payload).cast("B")


def frame_parts(task: str, kind: str, payload: bytes = b"", *, payload_sha256: str | None = None,
                **header) -> tuple[bytes, memoryview]:
    """The frame ``encode_message`` builds, as its two parts and without copying the payload: (magic,
    header length and header, as bytes; the payload as a byte view). For a transport that streams a
    large message from its payload. ``payload_sha256``: the payload's, where the sender has it already
    (a GiB is not hashed twice); the receiver checks it as any other."""
    source = _byte_view(payload)
    sha256 = payload_sha256 or hashlib.sha256(source).hexdigest()
    head = header_bytes(dict(header, kind=kind, task=task, size=len(source), sha256=sha256))
    return MAGIC + struct.pack(">I", len(head)) + head, source


def encode_message(task: str, kind: str, payload: bytes = b"", *, payload_sha256: str | None = None,
                   **header) -> bytes:
    source = _byte_view(payload)
    if len(source) < HASH_BESIDE or payload_sha256:
        prefix, source = frame_parts(task, kind, source, payload_sha256=payload_sha256, **header)
        return b"".join([prefix, source])
    # a sha256 has 64 hex digits: the header's length is known before the hash, so the payload is
    # copied into the frame while a second thread hashes it
    head = dict(header, kind=kind, task=task, size=len(source), sha256="0" * 64)
    head_len = len(header_bytes(head))
    frame = BytesBuilder(8 + head_len + len(source))
    head["sha256"] = _copy_while_hashing(frame.view[8 + head_len:], source)
    head_bytes = header_bytes(head)
    if len(head_bytes) != head_len:  # cannot happen with a hex digest; never ship a frame that lies
        raise ValueError("the message header changed length while it was encoded")
    frame.view[:8 + head_len] = MAGIC + struct.pack(">I", head_len) + head_bytes
    return frame.finish()


def parse_header(head_bytes) -> dict:
    try:
        header = json.loads(bytes(head_bytes).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"message header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise MalformedMessage("message header has no kind")
    return header


def decode_message(frame: bytes, sender: str = "") -> TaskMessage:
    if isinstance(frame, CheckedFrame):  # read and checked by read_message: nothing left to copy or hash
        return TaskMessage(kind=frame.header["kind"], header=frame.header, payload=frame.payload, sender=sender,
                           checked_sha256=frame.header["sha256"])
    if isinstance(frame, MalformedFrame):
        raise MalformedMessage(frame.reason)
    view = memoryview(frame)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise MalformedMessage("not a werkbund message (bad magic)")
    (head_len,) = struct.unpack(">I", view[4:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > len(view):
        raise MalformedMessage("message header length is out of range")
    header = parse_header(view[8:8 + head_len])
    source = view[8 + head_len:]
    if header.get("size") != len(source):
        raise MalformedMessage(f"payload has {len(source)} bytes, header says {header.get('size')}")
    payload, sha256 = _copy_hashed(source)
    if header.get("sha256") != sha256:
        raise MalformedMessage("payload checksum does not match its header")
    return TaskMessage(kind=header["kind"], header=header, payload=payload, sender=sender, checked_sha256=sha256)


def _copy_hashed(source: memoryview) -> tuple[bytes, str]:
    """(a bytes copy of ``source``, its sha256); a large one copied while another thread hashes it."""
    if len(source) < HASH_BESIDE:
        payload = bytes(source)
        return payload, hashlib.sha256(payload).hexdigest()
    target = BytesBuilder(len(source))
    sha256 = _copy_while_hashing(target.view, source)
    return target.finish(), sha256


def _copy_while_hashing(target: memoryview, source: memoryview) -> str:
    """Copy ``source`` into ``target`` while a second thread hashes it (hashlib releases the GIL)."""
    digest = hashlib.sha256()
    hasher = threading.Thread(target=digest.update, args=(source,), daemon=True)
    hasher.start()
    try:
        target[:] = source
    finally:
        hasher.join()
    return digest.hexdigest()


def read_message(readinto, size: int) -> CheckedFrame:
    """Read a frame of ``size`` bytes from a stream and check it on the way.

    ``readinto(buffer)`` fills (part of) a writable buffer and returns how many bytes it put there
    (0 at an early end). The header is read and checked first, then the payload goes straight
    into its own ``bytes`` object while a second thread hashes what has arrived; a payload that
    does not match the header's sha256 raises MalformedMessage and is never handed out."""
    prefix = read_exactly(readinto, 8, size)
    if bytes(prefix[:4]) != MAGIC:
        raise MalformedMessage("not a werkbund message (bad magic)")
    (head_len,) = struct.unpack(">I", prefix[4:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > size:
        raise MalformedMessage("message header length is out of range")
    header = parse_header(read_exactly(readinto, head_len, size, after=8))
    length = size - 8 - head_len
    if header.get("size") != length:
        raise MalformedMessage(f"payload has {length} bytes, header says {header.get('size')}")
    payload, sha256 = read_hashed(readinto, length)
    if sha256 != header.get("sha256"):
        raise MalformedMessage("the payload does not match its sha256 (the checksum in its header)")
    return CheckedFrame(header=header, payload=payload)


def read_hashed(readinto, size: int) -> tuple[bytes, str]:
    """(``size`` bytes read straight into a new bytes object, their sha256), hashed beside the reads.

    ``readinto`` as for ``read_message``; an early end raises MalformedMessage. A payload under
    ``HASH_BESIDE`` is hashed once it is read: starting a thread costs more than hashing a small one."""
    target = BytesBuilder(size)
    if size < HASH_BESIDE:
        done = 0
        while done < size:
            got = readinto(target.view[done:])
            if not got:
                raise MalformedMessage(f"the stream ends after {done} of {size} bytes")
            done += got
        payload = target.finish()
        return payload, hashlib.sha256(payload).hexdigest()
    digest, pieces = hashlib.sha256(), queue.Queue()
    hasher = threading.Thread(target=hash_pieces, args=(digest, pieces), daemon=True)
    hasher.start()
    done = 0
    try:
        while done < size:
            got = readinto(target.view[done:done + PIECE])
            if not got:
                raise MalformedMessage(f"the stream ends after {done} of {size} bytes")
            pieces.put(target.view[done:done + got])
            done += got
    finally:
        pieces.put(None)
        hasher.join()
    return target.finish(), digest.hexdigest()


def read_exactly(readinto, count: int, size: int, after: int = 0) -> memoryview:
    """The next ``count`` bytes from ``readinto``, ``after`` bytes into a message of ``size`` (an early end
    raises MalformedMessage saying where)."""
    buffer = memoryview(bytearray(count))
    done = 0
    while done < count:
        got = readinto(buffer[done:])
        if not got:
            raise MalformedMessage(f"the message ends after {after + done} of {size} bytes")
        done += got
    return buffer
