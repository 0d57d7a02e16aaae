"""The final models of the platform core: one file per model, named by its sha256, and a row with its
hash, size and metadata.

:class:`ModelStore` holds the model rules of :class:`~werkbund.platform.service.PlatformService` (which
derives from it): who may store and fetch a model and when, streaming in and out, and moving rows from
before schema revision 0004 (bytes in the ``data`` column) to files.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from pathlib import Path

from sqlalchemy import select

from werkbund.platform import access
from werkbund.platform.errors import InvalidInput, InvalidState, ModelNotFound, Unavailable
from werkbund.platform.storage.files import ContentFiles
from werkbund.platform.tables import StoredModel, Task

log = logging.getLogger("werkbund.platform")

MAX_MODEL_BYTES = 16 * 1024**3
MODEL_DIR_ENV = "WERKBUND_MODEL_DIR"


def default_model_dir(db_url) -> Path | None:
    """Where the final models are kept: $WERKBUND_MODEL_DIR, beside a SQLite file (``<file>.models``), or
    (other databases) under WERKBUND_HOME named after the database URL, as the ledger key is; None for an
    in-memory database (a temporary folder, as ephemeral as the data)."""
    from sqlalchemy.engine import make_url

    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:") or url.database.startswith("file::memory:"):
            return None
        return Path(url.database).expanduser().with_name(Path(url.database).name + ".models")
    home = Path(os.environ.get("WERKBUND_HOME", "~/.werkbund")).expanduser()
    tag = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return home / "platform" / f"models-{tag}"



class ModelStore:
    """The model part of the platform core; it uses the core's ``db`` and the rules of ``access.py``."""

    def _open_model_store(self, model_dir) -> None:
        model_dir = model_dir or default_model_dir(self.db.engine.url)
        if model_dir is None:  # an in-memory database: its models go with this object
            self._model_tmp = tempfile.TemporaryDirectory(prefix="werkbund-models-")
            model_dir = self._model_tmp.name
        self.models = ContentFiles(model_dir)
        self._model_lock = threading.RLock()
        self._move_models_to_files()

    # A final model is a file named by its sha256 in ``model_dir`` (``platform/storage/files.py``); its row
    # holds the hash, size and metadata. Rows from before schema revision 0004 hold the bytes in ``data``:
    # they are moved to files when the service starts (``_move_models_to_files``).
    def put_model(self, caller: str, task: str, data: bytes, meta: dict | None = None) -> dict:
        return self.put_model_stream(caller, task, io.BytesIO(bytes(data)), meta, size=len(data))

    def put_model_stream(self, caller: str, task: str, stream, meta: dict | None = None,
                         size: int | None = None) -> dict:
        """Store the final model from a binary stream (``read``), ``size`` bytes if given; never more than
        a piece of it in memory. The caller's right is checked before a byte is read."""
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInput("model metadata must be a JSON object")
        self._check_model_upload(caller, task)
        temp, sha, written = self.models.stage(stream, size, MAX_MODEL_BYTES)
        try:
            with self._model_lock:  # the file and its row together: no unused-file sweep runs between
                self.models.commit(temp, sha)
                with self.db.session() as s:
                    row = self._check_model_upload(caller, task, s)
                    model = (s.scalar(select(StoredModel).where(StoredModel.task_id == row.id))
                             or StoredModel(task_id=row.id))
                    replaced = model.sha256 if model.id is not None else None
                    model.sha256, model.size, model.meta, model.data = sha, written, dict(meta or {}), None
                    s.add(model)
        except BaseException:
            temp.unlink(missing_ok=True)
            self._drop_model_file_if_unused(sha)
            raise
        if replaced and replaced != sha:
            self._drop_model_file_if_unused(replaced)
        log.info("%s stored the model of task %s (%d bytes, sha256 %s)", caller, task, written, sha)
        return {"task": task, "sha256": sha, "size": written}

    def put_model_file(self, caller: str, task: str, path, meta: dict | None = None) -> dict:
        with open(path, "rb") as handle:
            return self.put_model_stream(caller, task, handle, meta, size=os.fstat(handle.fileno()).st_size)

    def get_model(self, caller: str, task: str) -> tuple[bytes, dict]:
        """The final model's bytes and info, for small models; large ones: ``open_model``."""
        handle, info = self.open_model(caller, task)
        with handle:
            data = handle.read()
        if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise Unavailable(f"the model of task {task!r} is damaged on the platform's disk")
        return data, info

    def open_model(self, caller: str, task: str):
        """(binary file handle, info) of the final model, to be streamed; the caller closes the handle."""
        with self.db.session() as s:
            row = access.task_row(s, task)
            access.require_member_or_creator(row, caller, "download the model of")
            model = s.scalar(select(StoredModel).where(StoredModel.task_id == row.id))
            if model is None or row.status != "COMPLETE":
                raise ModelNotFound(f"task {task!r} has no final model yet (status {row.status})")
            info = {"task": task, "sha256": model.sha256, "size": model.size, "meta": model.meta}
        with self._model_lock:
            try:
                return self.models.open(info["sha256"]), info
            except FileNotFoundError:
                pass
        self._move_models_to_files()  # a row from before revision 0004 that came in meanwhile (a restore)
        try:
            return self.models.open(info["sha256"]), info
        except FileNotFoundError:
            raise Unavailable(f"the model file of task {task!r} ({info['sha256']}) is missing from the "
                              f"platform's model folder {self.models.root}; restore it from a backup") from None

    def _check_model_upload(self, caller: str, task: str, s=None) -> Task:
        if s is None:
            with self.db.session() as s:
                return self._check_model_upload(caller, task, s)
        row = access.task_row(s, task)
        access.require_creator(row, caller, "store the model of")
        if row.status != "STARTED":
            raise InvalidState(f"task {task!r} is {row.status}; the final model is stored while it runs")
        return row

    def _drop_model_file_if_unused(self, sha: str) -> None:
        with self._model_lock, self.db.session() as s:
            if s.scalar(select(StoredModel.id).where(StoredModel.sha256 == sha).limit(1)) is None:
                self.models.remove(sha)

    def _move_models_to_files(self) -> int:
        """Write the bytes of rows from before revision 0004 (``data`` set) to model files, one row at a
        time, and clear the column; how many were moved."""
        moved = 0
        with self._model_lock:
            with self.db.session() as s:
                ids = s.scalars(select(StoredModel.id).where(StoredModel.data.is_not(None))).all()
            for model_id in ids:
                with self.db.session() as s:
                    model = s.get(StoredModel, model_id)
                    if model is None or model.data is None:
                        continue
                    sha, size = self.models.put_bytes(bytes(model.data))
                    if sha != model.sha256:
                        log.warning("the stored model %d hashes to %s, its row says %s; kept under its hash",
                                    model_id, sha, model.sha256)
                    model.sha256, model.size, model.data = sha, size, None
                    moved += 1
        if moved:
            log.info("moved %d stored model(s) from the database to %s", moved, self.models.root)
        return moved
