"""Large task messages over AMQP: split into checksummed chunks, reassembled with bounded memory.

A message above ``CHUNK_BYTES`` travels as several persistent messages with headers naming the
transfer (id), the chunk (index, count, stride, sha256 of the chunk) and the whole (size). The
receiver copies each verified chunk into one preallocated buffer and acknowledges it, so it holds
the message once plus at most the broker's prefetch of chunks. The whole is checked once more by
the message frame's own sha256 (``werkbund.client.messages``), so it is not hashed twice here.
"""
from __future__ import annotations

import hashlib
import uuid

from werkbund.client.messages import MalformedMessage

CHUNK_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_BYTES = 8 * 1024**3


def split(body: bytes, chunk_bytes: int = CHUNK_BYTES, transfer: str | None = None):
    """Yield (headers, chunk) pairs; a small body is one chunk with no headers.

    ``transfer`` names the message; a retry after a lost connection sends it again under the same
    name, so the receiver drops the chunks it already has."""
    if len(body) <= chunk_bytes:
        yield {}, body
        return
    view = memoryview(body)
    count = -(-len(body) // chunk_bytes)
    transfer = transfer or uuid.uuid4().hex
    for index in range(count):
        chunk = bytes(view[index * chunk_bytes:(index + 1) * chunk_bytes])  # pika takes bytes only
        yield {"wb-chunk-id": transfer, "wb-chunk-index": index, "wb-chunk-count": count,
               "wb-size": len(body), "wb-chunk-bytes": chunk_bytes,
               "wb-chunk-sha256": hashlib.sha256(chunk).hexdigest()}, chunk


class Reassembler:
    """Collects chunks per (sender, transfer); returns the whole body when the last one is in."""

    def __init__(self, remember: int = 1024):
        self.partial: dict[tuple, dict] = {}
        self.completed: dict[tuple, None] = {}  # recent whole transfers, oldest first: duplicates are dropped
        self.remember = remember

    def add(self, sender: str, headers: dict, chunk: bytes):
        """The complete body, or None while chunks are missing. Raises MalformedMessage on a bad chunk."""
        try:
            key = (sender, str(headers["wb-chunk-id"]))
            index, count = int(headers["wb-chunk-index"]), int(headers["wb-chunk-count"])
            size = int(headers["wb-size"])
            chunk_digest, stride = str(headers["wb-chunk-sha256"]), int(headers["wb-chunk-bytes"])
        except (KeyError, TypeError, ValueError):
            raise MalformedMessage("a chunk without valid chunk headers") from None
        if (not 0 < size <= MAX_MESSAGE_BYTES or not 0 <= index < count or stride <= 0
                or count != -(-size // stride) or len(chunk) > stride):
            raise MalformedMessage("chunk headers out of range")
        if key in self.completed:  # sent again after a lost connection: delivered already
            return None
        if hashlib.sha256(chunk).hexdigest() != chunk_digest:
            self.partial.pop(key, None)
            raise MalformedMessage(f"chunk {index} of {count} does not match its checksum")
        state = self.partial.get(key)
        if state is None:
            state = self.partial[key] = {"buffer": bytearray(size), "count": count, "size": size,
                                         "seen": set(), "stride": stride}
        if (state["count"], state["size"], state["stride"]) != (count, size, stride):
            self.partial.pop(key, None)
            raise MalformedMessage("chunks of one transfer disagree about the whole")
        if index in state["seen"]:  # redelivered after a reconnect: already copied
            return None
        start = index * stride
        if start + len(chunk) > size or (index < count - 1 and len(chunk) != stride):
            self.partial.pop(key, None)
            raise MalformedMessage("a chunk reaches past the end of its message")
        state["buffer"][start:start + len(chunk)] = chunk
        state["seen"].add(index)
        if len(state["seen"]) < count:
            return None
        del self.partial[key]
        self.completed[key] = None
        if len(self.completed) > self.remember:
            del self.completed[next(iter(self.completed))]
        return state["buffer"]  # every chunk checked; the frame's own sha256 covers the whole
