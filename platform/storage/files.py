"""Large bodies on the platform's disk, streamed: never more than a piece of one in memory.

``stream_to_file`` copies a request body (any object with ``read``) into a new private temporary file
in a folder, hashing it on the way and checking its size while it arrives (``PayloadTooLarge`` past
the limit, ``InvalidInput`` when it ends early); the caller then hands the file over with a rename, so
a reader finds a whole file or none. ``ContentFiles`` keeps files named by the sha256 of their bytes
(the platform's final models): written once, fsynced, renamed into place; the same bytes twice are
one file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

from werkbund.platform.errors import InvalidInput, PayloadTooLarge

log = logging.getLogger("werkbund.platform.files")

PIECE = 1 << 20
SHA256 = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 3600  # a temporary file nobody wrote to for this long is left over from a dead process


def stream_to_file(stream, folder: Path, size: int | None = None, limit: int | None = None,
                   sync: bool = False, name: str | None = None) -> tuple[Path, str, int]:
    """Copy ``stream`` into ``folder/<name or random>.tmp`` (0600): (path, sha256, size). ``size``: the bytes
    announced (Content-Length), all of which must come; ``limit``: the most accepted. The file is removed
    when anything fails, the client's connection included."""
    if size is not None and limit is not None and size > limit:
        raise PayloadTooLarge(f"at most {limit} bytes are accepted here; this upload has {size}")
    path = Path(folder) / f"{name or uuid.uuid4().hex}{TEMP_SUFFIX}"
    digest, written = hashlib.sha256(), 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            while size is None or written < size:
                want = PIECE if size is None else min(PIECE, size - written)
                piece = stream.read(want)
                if not piece:
                    break
                written += len(piece)
                if limit is not None and written > limit:
                    raise PayloadTooLarge(f"at most {limit} bytes are accepted here")
                digest.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[out.write(view):]
            if size is not None and written < size:
                raise InvalidInput(f"the upload ended after {written} of its {size} bytes")
            if sync:
                os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest(), written


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentFiles:
    """Files named by their sha256 in one folder (0700), each 0600: the platform's final models."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        stale = time.time() - STALE_SECONDS
        for leftover in self.root.glob(f"*{TEMP_SUFFIX}"):  # an upload a platform died in (not one under way
            try:                                              # in another process on the same folder)
                if leftover.stat().st_mtime < stale:
                    leftover.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise InvalidInput("a content hash is 64 lowercase hex digits")
        return self.root / sha256

    def put_stream(self, stream, size: int | None = None, limit: int | None = None) -> tuple[str, int]:
        """Store what ``stream`` holds (temp file, fsync, rename, fsync of the folder): (sha256, size)."""
        temp, sha, written = self.stage(stream, size, limit)
        self.commit(temp, sha)
        return sha, written

    def stage(self, stream, size: int | None = None, limit: int | None = None) -> tuple[Path, str, int]:
        """The first half of ``put_stream``: the bytes in a fsynced temporary file, (temp path, sha256, size)."""
        return stream_to_file(stream, self.root, size, limit, sync=True)

    def commit(self, temp: Path, sha256: str) -> None:
        """The second half: the staged file renamed to its hash (dropped when those bytes are here already)."""
        target = self.path(sha256)
        try:
            if target.is_file() and target.stat().st_size == temp.stat().st_size:
                temp.unlink()
            else:
                os.replace(temp, target)
                fsync_folder(self.root)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(io.BytesIO(data), len(data))

    def open(self, sha256: str):
        """A binary file handle on the content (it stays readable if the file is removed meanwhile)."""
        return open(self.path(sha256), "rb")

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def hash_pieces(digest, pieces) -> None:
    """Feed ``digest`` each piece (bytes or a memoryview) taken from the queue ``pieces`` until None: run
    in a thread of its own, it hashes beside the reads and writes of a large body (hashlib releases the
    GIL). The blob store and the client's message reader both hash this way."""
    while (piece := pieces.get()) is not None:
        digest.update(piece)
