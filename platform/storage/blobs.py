"""The blob store's files: large task messages and models of the cloud platform, stored once, streamed.

A blob is ``root/<task>/<id>`` with a JSON sidecar (uploader, size, sha256). ``BlobStore.put`` copies a
body into it in ``PIECE``-sized pieces, computing the sha256 on the way, so the platform never holds a
blob in memory; readers may stream a blob while it arrives (``Upload``). Who may upload, read or delete
is the core's rule, applied by the HTTP side, ``platform/amqp/blob_server.py``.

Replicas of the platform share the blob folder (docs/operations.md): an announcement is a file there,
so an upload and its readers may go through different replicas (``SharedUpload``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

from werkbund.platform.definition import check_name
from werkbund.platform.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable, WerkbundError
from werkbund.platform.storage.files import hash_pieces

log = logging.getLogger("werkbund.platform.blobs")
PIECE = 4 << 20
MAX_BLOB_BYTES = 16 * 1024**3
BLOB_ID = re.compile(r"[0-9a-f]{32}")
STALL_SECONDS = 60.0  # an upload with no new byte for this long has failed


class Upload:
    """A blob on its way in through this process (announced by ``BlobStore.open``): readers here stream
    what has arrived and wait for the rest."""

    def __init__(self, target: Path, size: int, uploader: str):
        self.target, self.size, self.uploader = target, size, uploader
        self.partial = target.with_name(target.name + ".part")
        self.announced = _announced(target)
        self.written, self.state, self.meta = 0, "open", None
        self.cond = threading.Condition()

    def advance(self, count: int) -> None:
        with self.cond:
            self.written += count
            self.cond.notify_all()

    def finish(self, meta: dict) -> None:
        with self.cond:  # renamed under the lock: a reader opens the .part file or finds the blob
            os.replace(self.partial, self.target)
            self.state, self.meta = "done", meta
            self.cond.notify_all()
        self.announced.unlink(missing_ok=True)

    def fail(self) -> None:
        with self.cond:
            self.state = "failed"
            self.partial.unlink(missing_ok=True)
            self.announced.unlink(missing_ok=True)
            self.cond.notify_all()

    def open_reader(self):
        """A file handle on the blob as it grows, or None when it is complete already."""
        with self.cond:
            if self.state == "open":
                return open(self.partial, "rb")
        return None

    def wait_beyond(self, offset: int, stall_s: float) -> int:
        """How many bytes have arrived, once more than ``offset`` have; Unavailable on a stall or failure."""
        with self.cond:
            self.cond.wait_for(lambda: self.written > offset or self.state != "open", timeout=stall_s)
            if self.written > offset:
                return self.written
            raise Unavailable(f"the upload of {self.target.name} {'failed' if self.state == 'failed' else 'stalled'}")

    def wait_done(self, stall_s: float) -> None:
        with self.cond:
            while self.state == "open":
                before = self.written
                self.cond.wait_for(lambda: self.state != "open" or self.written != before, timeout=stall_s)
                if self.state == "open" and self.written == before:
                    raise Unavailable(f"the upload of {self.target.name} stalled")
            if self.state == "failed":
                raise Unavailable(f"the upload of {self.target.name} failed")


class SharedUpload:
    """A blob announced and not yet complete, as the blob folder shows it: uploaded through another
    replica of the platform that shares the folder, or not at all yet. A reader follows the growing
    ``.part`` file, polled (no signal crosses processes), until the blob is renamed into place. Behind
    one load-balanced ``--blob-url`` the announcement, the upload and each read may reach three replicas."""

    POLL_S = 0.05

    def __init__(self, target: Path, size: int, uploader: str, local=lambda: None):
        self.target, self.size, self.uploader = target, size, uploader
        self.partial = target.with_name(target.name + ".part")
        self.local = local  # the Upload once its bytes come through this process after all

    def arrived(self) -> int:
        """Bytes in the folder so far (Unavailable once the upload failed)."""
        if self.target.exists():
            return self.size
        try:
            return self.partial.stat().st_size
        except FileNotFoundError:
            if self.target.exists():  # renamed in between
                return self.size
            raise Unavailable(f"the upload of {self.target.name} failed") from None

    def open_reader(self):
        """A file handle on the blob as it grows, or None when it is complete already."""
        try:
            return None if self.target.exists() else open(self.partial, "rb")
        except FileNotFoundError:
            return None

    def wait_beyond(self, offset: int, stall_s: float) -> int:
        deadline = time.monotonic() + stall_s
        while (arrived := self.arrived()) <= offset and not self.target.exists():
            if (here := self.local()) is not None:  # woken by the writer, not the clock
                return here.wait_beyond(offset, stall_s)
            if time.monotonic() > deadline:
                raise Unavailable(f"the upload of {self.target.name} stalled")
            time.sleep(self.POLL_S)
        return arrived

    def wait_done(self, stall_s: float) -> None:
        while not self.target.exists():
            self.wait_beyond(self.arrived(), stall_s)


def _announced(target: Path) -> Path:
    return target.with_name(target.name + ".announced")


class BlobStore:
    """Blob files under ``root/<task>/<id>`` with a JSON sidecar (uploader, size, sha256)."""

    def __init__(self, root: Path, max_age_s: float = 24 * 3600):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.lock = threading.Lock()
        self.uploads: dict[tuple, Upload] = {}  # announced or arriving blobs

    def path(self, task: str, blob_id: str) -> Path:
        check_name("task", task)
        if not isinstance(blob_id, str) or not BLOB_ID.fullmatch(blob_id):
            raise InvalidInput("a blob id is 32 lowercase hex digits")
        return self.root / task / blob_id

    def open(self, task: str, blob_id: str, size: int, uploader: str) -> None:
        """Announce an upload, in the folder (so every replica sharing it knows): readers may start
        streaming the blob before (and while) it arrives."""
        if not isinstance(size, int) or not 0 <= size <= MAX_BLOB_BYTES:
            raise PayloadTooLarge(f"a blob has at most {MAX_BLOB_BYTES} bytes")
        target = self.path(task, blob_id)
        with self.lock:
            if target.exists() or (task, blob_id) in self.uploads or _announced(target).exists():
                raise InvalidInput(f"blob {blob_id} exists already; blobs are written once")
            target.parent.mkdir(exist_ok=True)
            target.with_name(target.name + ".part").write_bytes(b"")
            _announced(target).write_text(json.dumps({"size": size, "uploader": uploader}))

    def upload_of(self, task: str, blob_id: str) -> "Upload | SharedUpload | None":
        """The blob's upload under way, here or in another replica; None when there is none."""
        upload = self._local(task, blob_id)
        if upload is not None:
            return upload
        target = self.path(task, blob_id)
        try:
            announced = json.loads(_announced(target).read_text())
        except (FileNotFoundError, ValueError):  # none, or its announcement half written
            return None
        return SharedUpload(target, announced["size"], announced["uploader"], lambda: self._local(task, blob_id))

    def _local(self, task: str, blob_id: str) -> "Upload | None":
        with self.lock:
            return self.uploads.get((task, blob_id))

    def put(self, task: str, blob_id: str, stream, size: int, uploader: str) -> dict:
        """Copy ``size`` bytes from ``stream`` into the blob, hashing on the way; returns its metadata."""
        announced = self.upload_of(task, blob_id)  # by a POST through this replica or another
        if announced is None:
            self.open(task, blob_id, size, uploader)
        elif not isinstance(announced, SharedUpload) or announced.arrived():
            raise InvalidInput(f"blob {blob_id} is being uploaded already")
        elif (announced.uploader, announced.size) != (uploader, size):
            raise InvalidInput("the upload does not match the announced blob (uploader, size)")
        with self.lock:
            if (task, blob_id) in self.uploads:
                raise InvalidInput(f"blob {blob_id} is being uploaded already")
            upload = self.uploads[(task, blob_id)] = Upload(self.path(task, blob_id), size, uploader)
        digest, left = hashlib.sha256(), size
        # hashed beside the socket reads: a piece waits in the queue (4) or is hashed (1) before the
        # ring of 6 buffers comes back to it, and reused buffers spare the page faults of fresh ones
        pieces: queue.Queue = queue.Queue(maxsize=4)
        ring = [memoryview(bytearray(min(PIECE, size))) for _ in range(6 if size > PIECE else 1)]
        hasher = threading.Thread(target=hash_pieces, args=(digest, pieces), daemon=True)
        hasher.start()
        try:
            with open(upload.partial, "wb", buffering=0) as out:
                turn = 0
                while left:
                    buffer, turn = ring[turn % len(ring)], turn + 1
                    got = stream.readinto(buffer[:min(PIECE, left)])
                    if not got:
                        raise InvalidInput(f"the upload ended {left} bytes early")
                    view = buffer[:got]
                    while view:  # unbuffered: readers see each piece at once
                        view = view[out.write(view):]
                    pieces.put(buffer[:got])
                    left -= got
                    upload.advance(got)
            pieces.put(None)
            hasher.join()
            meta = {"task": task, "id": blob_id, "size": size, "sha256": digest.hexdigest(), "uploader": uploader}
            upload.target.with_suffix(".json").write_text(json.dumps(meta))
            upload.finish(meta)
        except BaseException:
            upload.fail()
            raise
        finally:
            if hasher.is_alive():
                pieces.put(None)
            with self.lock:
                if self.uploads.get((task, blob_id)) is upload:
                    del self.uploads[(task, blob_id)]
        return meta

    def put_bytes(self, task: str, blob_id: str, data: bytes, uploader: str) -> dict:
        import io

        return self.put(task, blob_id, io.BytesIO(data), len(data), uploader)

    def finished_meta(self, task: str, blob_id: str, stall_s: float = STALL_SECONDS) -> dict:
        """The blob's metadata, once its upload (if one is under way) finished."""
        upload = self.upload_of(task, blob_id)
        if upload is not None:
            upload.wait_done(stall_s)
        return self.meta(task, blob_id)

    def meta(self, task: str, blob_id: str) -> dict:
        target = self.path(task, blob_id)
        try:
            meta = json.loads(target.with_suffix(".json").read_text())
        except FileNotFoundError:
            raise NotFound(f"no blob {blob_id} in task {task!r} (deleted, expired or never uploaded)") from None
        if not target.exists():
            raise NotFound(f"no blob {blob_id} in task {task!r}")
        return meta

    def read_bytes(self, task: str, blob_id: str) -> bytes:
        """The whole blob, checked against its sha256 (for models the core stores itself)."""
        meta = self.meta(task, blob_id)
        data = self.path(task, blob_id).read_bytes()
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise WerkbundError(f"blob {blob_id} of task {task!r} is damaged on the platform's disk")
        return data

    def delete(self, task: str, blob_id: str) -> None:
        target = self.path(task, blob_id)
        target.unlink(missing_ok=True)
        target.with_suffix(".json").unlink(missing_ok=True)

    def delete_task(self, task: str) -> None:
        check_name("task", task)
        shutil.rmtree(self.root / task, ignore_errors=True)

    def sweep(self) -> int:
        """Remove blobs older than ``max_age_s`` (broadcasts nobody deletes), and uploads that a replica
        killed mid-way left announced; returns how many."""
        cutoff, removed = time.time() - self.max_age_s, 0
        for path in [*self.root.glob("*/*.json"), *self.root.glob("*/*.announced")]:
            try:
                if path.stat().st_mtime < cutoff:
                    blob = path.with_suffix("")
                    for leftover in (blob, blob.with_name(blob.name + ".part"), path):
                        leftover.unlink(missing_ok=True)
                    removed += 1
            except OSError:
                pass
        return removed
