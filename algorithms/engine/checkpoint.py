"""The aggregator's checkpoint after every round, so that a killed aggregator can resume.

A checkpoint is two files in the aggregator's checkpoint folder (by default
``$WERKBUND_HOME/checkpoints/<task>``):

- ``round-NNNNN.safetensors``: the global weights (``weights.00000``, ...) and the strategy's
  state (server-optimizer moments, ``strategy.<key>``), raw tensors only;
- ``checkpoint.json``: the round number, the task and a digest of its definition, the file name
  and sha256 of the tensors, the history recorded so far, the round still waiting for the
  participants' evaluations, the early-stopping state and what the algorithm needs to rebuild its
  model (e.g. the Keras architecture JSON).

The tensors are written first under a new name, then the JSON is replaced atomically, then older
tensor files are removed: a crash at any moment leaves the previous or the new checkpoint whole.
Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

STATE_FILE = "checkpoint.json"
FORMAT = 1


class CheckpointError(ValueError):
    """No usable checkpoint (missing, for another task, or damaged)."""


def definition_digest(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Checkpoint:
    def __init__(self, directory: str | os.PathLike, task: str, definition: dict):
        self.directory = Path(directory)
        self.task = task
        self.digest = definition_digest(definition)

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def exists(self) -> bool:
        return self.state_path.exists()

    def save(self, number: int, weights: list[np.ndarray], strategy_state: dict[str, np.ndarray],
             state: dict) -> Path:
        """Write the checkpoint of round ``number`` (0-based, the last aggregated round)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tensors = {f"weights.{i:05d}": np.ascontiguousarray(w) for i, w in enumerate(weights)}
        tensors.update({f"strategy.{k}": np.ascontiguousarray(v) for k, v in strategy_state.items()})
        data = st_save(tensors)
        name = f"round-{number:05d}.safetensors"
        _write_atomic(self.directory / name, data)
        record = dict(state, format=FORMAT, task=self.task, definition_sha256=self.digest, round=number,
                      tensors=name, tensors_sha256=hashlib.sha256(data).hexdigest())
        _write_atomic(self.state_path, json.dumps(record, indent=1).encode("utf-8"))
        for old in self.directory.glob("round-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.state_path

    def load(self) -> tuple[dict, list[np.ndarray], dict[str, np.ndarray]]:
        """(state, weights, strategy state) of the last checkpoint; CheckpointError if unusable."""
        try:
            record = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint of task {self.task!r} in {self.directory}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"the checkpoint {self.state_path} is unreadable: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"{self.state_path} is not a werkbund checkpoint (format {FORMAT})")
        if record.get("task") != self.task:
            raise CheckpointError(f"{self.state_path} belongs to task {record.get('task')!r}, not {self.task!r}")
        if record.get("definition_sha256") != self.digest:
            raise CheckpointError(f"{self.state_path} was written for another definition of task {self.task!r}")
        name = str(record.get("tensors", ""))
        if not name.startswith("round-") or "/" in name or os.sep in name:
            raise CheckpointError(f"{self.state_path} names an invalid tensor file {name!r}")
        try:
            data = (self.directory / name).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"the checkpoint's tensors {name} cannot be read: {exc}") from None
        if hashlib.sha256(data).hexdigest() != record.get("tensors_sha256"):
            raise CheckpointError(f"the checkpoint's tensors {name} do not match their sha256 in {STATE_FILE}")
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's tensors {name} are unreadable: {exc}") from None
        weight_keys = sorted(k for k in tensors if k.startswith("weights."))
        weights = [tensors[k] for k in weight_keys]
        strategy = {k[len("strategy."):]: v for k, v in tensors.items() if k.startswith("strategy.")}
        return record, weights, strategy
