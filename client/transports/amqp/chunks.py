"""Large task messages over AMQP: split into checksummed chunks, reassembled with bounded memory.

A message above ``CHUNK_BYTES`` travels as several persistent messages with headers naming the
transfer (id), the chunk (index, count, stride, CRC-32 of the chunk) and the whole (size). The
CRC-32 catches a chunk damaged on the way, at twice the speed of a sha256; what proves the whole
intact is the sha256 in the message frame's header (``werkbund.client.messages``), and the
receiver checks that one while the chunks arrive, not once more at the end.

The receiver reads the frame's header from the first chunk and copies each checked chunk's payload
bytes straight into the payload's final ``bytes`` object, hashing them in order as they come, so it
holds the message once (plus the broker's prefetch of chunks), acknowledges every chunk but the
last at once, and hands out a ``CheckedFrame`` that is neither copied nor hashed again. Chunks that
arrive before the first one (a redelivery after a lost connection) are collected as a plain
frame instead, checked when it is decoded.
"""
from __future__ import annotations

import hashlib
import struct
import threading
import uuid
import zlib

from werkbund.client.bytes_builder import BytesBuilder
from werkbund.client.messages import (
    MAGIC, MAX_HEADER_BYTES, CheckedFrame, MalformedMessage, header_bytes, parse_header,
)

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
               "wb-size": len(body), "wb-chunk-bytes": chunk_bytes, "wb-chunk-crc32": zlib.crc32(chunk)}, chunk


PENDING_SHA256 = "0" * 64  # in a streamed frame's header; the real one follows with the last chunk


class StreamedFrame:
    """A task message cut into chunks straight from its payload, without building the frame first.

    The frame's header goes out with the first chunk, its ``sha256`` still ``PENDING_SHA256``: the
    payload is hashed in a second thread (hashlib releases the GIL) while the chunks are cut and
    sent, and the digest travels in the last chunk's ``wb-payload-sha256`` header. The sender so
    holds the payload once, and nothing waits for the hash before the first chunk leaves.
    """

    def __init__(self, task: str, kind: str, payload, header: dict, chunk_bytes: int = CHUNK_BYTES):
        self.source = memoryview(payload).cast("B")
        head = header_bytes(dict(header, kind=kind, task=task, size=len(self.source), sha256=PENDING_SHA256))
        self.prefix = MAGIC + struct.pack(">I", len(head)) + head
        self.size, self.stride = len(self.prefix) + len(self.source), chunk_bytes
        self.count = -(-self.size // chunk_bytes)
        if len(self.prefix) >= chunk_bytes or self.count < 2:
            raise ValueError("a streamed frame needs a header smaller than a chunk and at least two chunks")
        self._digest = hashlib.sha256()
        self._hasher = threading.Thread(target=self._digest.update, args=(self.source,), daemon=True)
        self._hasher.start()

    def chunks(self, transfer: str):
        """(headers, chunk) pairs, as ``split`` yields them; may be called again to send once more."""
        offset = len(self.prefix)
        for index in range(self.count):
            start = index * self.stride - offset
            piece = self.source[max(0, start):start + self.stride]
            chunk = self.prefix + piece if index == 0 else bytes(piece)  # pika takes bytes only
            headers = {"wb-chunk-id": transfer, "wb-chunk-index": index, "wb-chunk-count": self.count,
                       "wb-size": self.size, "wb-chunk-bytes": self.stride, "wb-chunk-crc32": zlib.crc32(chunk)}
            if index == self.count - 1:
                self._hasher.join()
                headers["wb-payload-sha256"] = self._digest.hexdigest()
            yield headers, chunk


class _Transfer:
    """One message being reassembled: the frame's payload filled in place and hashed in order."""

    def __init__(self, count: int, size: int, stride: int, first: bytes | None):
        self.count, self.size, self.stride = count, size, stride
        self.seen: set[int] = set()
        self.trailer: str | None = None  # the payload's sha256 from the last chunk of a streamed frame
        self.header = self._frame_header(first) if first is not None else None
        if self.header is None:  # not starting with the frame's header: collect the frame as it is
            self.buffer, self.offset = bytearray(size), 0
        else:
            self.payload = BytesBuilder(size - self.offset)
            self.digest, self.hashed = hashlib.sha256(), 0  # chunks hashed so far, in order

    def _frame_header(self, first: bytes) -> dict | None:
        if len(first) < 8 or first[:4] != MAGIC:
            return None
        (head_len,) = struct.unpack(">I", first[4:8])
        if head_len > MAX_HEADER_BYTES or 8 + head_len > len(first):
            return None  # the header reaches past the first chunk: decoded as a whole at the end
        header = parse_header(memoryview(first)[8:8 + head_len])
        self.offset = 8 + head_len
        if header.get("size") != self.size - self.offset:
            raise MalformedMessage(f"payload has {self.size - self.offset} bytes, header says {header.get('size')}")
        return header

    def put(self, index: int, chunk: bytes) -> None:
        start = index * self.stride
        self.seen.add(index)
        if self.header is None:
            self.buffer[start:start + len(chunk)] = chunk
            return
        skip = max(0, self.offset - start)  # the first chunk carries the frame's header first
        self.payload.view[start + skip - self.offset:start + len(chunk) - self.offset] = memoryview(chunk)[skip:]
        while self.hashed in self.seen:  # hash what is contiguous from the start
            first = self.hashed * self.stride
            self.digest.update(self.payload.view[max(0, first - self.offset):
                                                 min(self.size, first + self.stride) - self.offset])
            self.hashed += 1

    def expected(self, header: dict) -> dict:
        """The frame's header with the payload's sha256 in place (a streamed frame's came last)."""
        if self.trailer is None:
            return header
        if header.get("sha256") != PENDING_SHA256:
            raise MalformedMessage("a frame with a sha256 in its header and another one after its last chunk")
        return dict(header, sha256=self.trailer)

    def whole(self):
        if self.header is None:
            if self.trailer is None:
                return self.buffer  # decode_message checks it
            header = self._frame_header(bytes(self.buffer[:8 + MAX_HEADER_BYTES]))  # a streamed frame
            if header is None:
                raise MalformedMessage("not a werkbund message (bad magic or header)")
            header = self.expected(header)
            payload = bytes(memoryview(self.buffer)[self.offset:])
            if hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise MalformedMessage("the payload does not match its sha256 (sent after its last chunk)")
            return CheckedFrame(header=header, payload=payload)
        header = self.expected(self.header)
        if self.digest.hexdigest() != header.get("sha256"):
            raise MalformedMessage("the payload does not match its sha256 (the checksum in its header)")
        return CheckedFrame(header=header, payload=self.payload.finish())


class Reassembler:
    """Collects chunks per (sender, transfer); returns the whole message when the last one is in."""

    def __init__(self, remember: int = 1024):
        self.partial: dict[tuple, _Transfer] = {}
        self.completed: dict[tuple, None] = {}  # recent whole transfers, oldest first: duplicates are dropped
        self.remember = remember

    def add(self, sender: str, headers: dict, chunk: bytes):
        """The complete message (a checked frame, or the frame's bytes), or None while chunks are
        missing. Raises MalformedMessage on a bad chunk or a whole that does not match its sha256."""
        try:
            key = (sender, str(headers["wb-chunk-id"]))
            index, count = int(headers["wb-chunk-index"]), int(headers["wb-chunk-count"])
            size, stride, crc = int(headers["wb-size"]), int(headers["wb-chunk-bytes"]), int(headers["wb-chunk-crc32"])
        except (KeyError, TypeError, ValueError):
            raise MalformedMessage("a chunk without valid chunk headers") from None
        if (not 0 < size <= MAX_MESSAGE_BYTES or not 0 <= index < count or stride <= 0
                or count != -(-size // stride) or len(chunk) > stride):
            raise MalformedMessage("chunk headers out of range")
        if key in self.completed:  # sent again after a lost connection: delivered already
            return None
        if zlib.crc32(chunk) != crc:
            self.partial.pop(key, None)
            raise MalformedMessage(f"chunk {index} of {count} does not match its checksum")
        if index * stride + len(chunk) > size or (index < count - 1 and len(chunk) != stride):
            self.partial.pop(key, None)
            raise MalformedMessage("a chunk reaches past the end of its message")
        state = self.partial.get(key)
        try:
            if state is None:
                state = self.partial[key] = _Transfer(count, size, stride, chunk if index == 0 else None)
            if (state.count, state.size, state.stride) != (count, size, stride):
                raise MalformedMessage("chunks of one transfer disagree about the whole")
            if index in state.seen:  # redelivered after a reconnect: already copied
                return None
            if "wb-payload-sha256" in headers:
                if index != count - 1:
                    raise MalformedMessage("a payload sha256 on a chunk other than the last")
                state.trailer = str(headers["wb-payload-sha256"])
            state.put(index, chunk)
            if len(state.seen) < count:
                return None
            del self.partial[key]
            whole = state.whole()
        except MalformedMessage:
            self.partial.pop(key, None)
            raise
        self.completed[key] = None
        if len(self.completed) > self.remember:
            del self.completed[next(iter(self.completed))]
        return whole
