"""A participant's registered datasets: a name for a local file, its target, features and schema.

Kept per werkbund user and platform under ``WERKBUND_HOME/dashboard/datasets/`` (0600): the file's
path and the schema summary only, never a copy of a row. The file is read where it lies, on this
machine, when the dataset is registered (to check it and take its schema), when a task is joined
with it and when a participant trains. One user never sees another's registrations: every access
goes through the logged-in user's name.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

from werkbund.client import home_files

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SUFFIXES = (".csv", ".txt", ".npz", ".parquet", ".pq")
_lock = threading.Lock()


class DatasetError(ValueError):
    """A registration refused; ``field`` names the form field it concerns."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def store_path(platform_url: str | None, user: str) -> Path:
    return home_files.home() / "dashboard" / "datasets" / home_files._platform_key(platform_url) / f"{user}.json"


def list_datasets(platform_url: str | None, user: str) -> list[dict]:
    data = home_files._read(store_path(platform_url, user)) or {}
    return sorted(data.get("datasets", {}).values(), key=lambda d: d["name"].lower())


def get_dataset(platform_url: str | None, user: str, name: str) -> dict | None:
    data = home_files._read(store_path(platform_url, user)) or {}
    return data.get("datasets", {}).get(name)


def forget_dataset(platform_url: str | None, user: str, name: str) -> bool:
    """Forget a registration (the file itself is left alone)."""
    with _lock:
        path = store_path(platform_url, user)
        data = home_files._read(path) or {}
        found = data.get("datasets", {}).pop(name, None)
        if found is not None:
            home_files._write_private(path, data)
        return found is not None


def check_path(path_text: str, data_root: Path | None) -> Path:
    """The file to register: absolute, existing, of a kind werkbund reads, inside ``data_root`` if set."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        raise DatasetError("path", "give the file's absolute path on this machine, e.g. /data/plant-a.csv")
    path = path.resolve()
    if data_root is not None and data_root.resolve() not in (path, *path.parents):
        raise DatasetError("path", f"this dashboard reads data files only under {data_root}")
    if not path.is_file():
        raise DatasetError("path", f"{path} does not exist on this machine (or is not a file)")
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError("path", f"{path.name}: use a .csv, .npz or .parquet file")
    return path


def describe(path: Path, target: str | None, features: list[str] | None, kind: str, missing: str) -> dict:
    """Read the file here and return its schema summary (never a row): features, target, classes and
    how many rows hold each, the row count, missing values per column."""
    from werkbund.algorithms.data.dataset import DataError
    from werkbund.algorithms.data.loading import load_dataset

    needs_target = path.suffix.lower() not in (".npz",)
    if needs_target and not target:
        raise DatasetError("target", "a CSV or Parquet file needs the name of its target column")
    try:
        data = load_dataset(str(path), target=target if needs_target else None, features=features, kind=kind,
                            missing=missing)
    except DataError as exc:
        text = str(exc)
        named = lambda name: f"'{name}'" in text or f'"{name}"' in text  # noqa: E731
        field = ("target" if (target and named(target)) or "target" in text.lower()
                 else "features" if features and any(named(f) for f in features) else "path")
        raise DatasetError(field, text) from None
    except (OSError, ValueError) as exc:
        raise DatasetError("path", f"cannot read {path.name}: {exc}") from None
    schema = data.schema(share_size=True)
    if kind == "classification":
        counts = Counter(v.item() if hasattr(v, "item") else v for v in data.y)
        schema["class_counts"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
    schema["missing"] = {str(k): int(v) for k, v in (data.meta.get("missing") or {}).items()}
    schema["dropped_rows"] = int(data.meta.get("dropped_rows") or 0)
    return schema


def register_dataset(platform_url: str | None, user: str, name: str, path_text: str, target: str | None,
                     features: list[str] | None, kind: str, missing: str, data_root: Path | None = None) -> dict:
    """Check and describe a local file and remember it under ``name`` for this user."""
    if not NAME_RE.fullmatch(name or ""):
        raise DatasetError("name", "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    path = check_path(path_text, data_root)
    schema = describe(path, target or None, features or None, kind, missing)
    entry = {"name": name, "path": str(path), "target": schema.get("target") if target else None,
             "features": features or None, "kind": kind, "missing": missing, "schema": schema,
             "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with _lock:
        store = store_path(platform_url, user)
        data = home_files._read(store) or {}
        datasets = data.setdefault("datasets", {})
        if name in datasets:
            raise DatasetError("name", f"you already have a dataset called {name!r}")
        datasets[name] = entry
        home_files._write_private(store, data)
    return entry
