"""Task messages: a small JSON header and a binary payload in one frame.

Frame layout: ``b"WBM1"`` | header length (4 bytes, big-endian) | header JSON (UTF-8) | payload.
The header always carries ``kind``, ``task``, ``size`` and ``sha256`` of the payload;
a receiver checks the magic, the lengths and the checksum before anyone looks at the payload.
The sender is never taken from the header: the platform stamps it.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

MAGIC = b"WBM1"
MAX_HEADER_BYTES = 1024 * 1024


class MalformedMessage(ValueError):
    """A message frame that is cut, corrupt or not a werkbund message."""


@dataclass
class TaskMessage:
    kind: str
    header: dict
    payload: bytes = b""
    sender: str = ""
    extra: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.header.get(key, default)


def encode_message(task: str, kind: str, payload: bytes = b"", **header) -> bytes:
    payload = bytes(payload)
    head = dict(header, kind=kind, task=task, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    head_bytes = json.dumps(head, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head_bytes) > MAX_HEADER_BYTES:
        raise ValueError("a message header may have at most 1 MiB")
    return b"".join([MAGIC, struct.pack(">I", len(head_bytes)), head_bytes, payload])


def decode_message(frame: bytes, sender: str = "") -> TaskMessage:
    view = memoryview(frame)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise MalformedMessage("not a werkbund message (bad magic)")
    (head_len,) = struct.unpack(">I", view[4:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > len(view):
        raise MalformedMessage("message header length is out of range")
    try:
        header = json.loads(bytes(view[8:8 + head_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"message header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise MalformedMessage("message header has no kind")
    payload = bytes(view[8 + head_len:])
    if header.get("size") != len(payload):
        raise MalformedMessage(f"payload has {len(payload)} bytes, header says {header.get('size')}")
    if header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise MalformedMessage("payload checksum does not match its header")
    return TaskMessage(kind=header["kind"], header=header, payload=payload, sender=sender)
