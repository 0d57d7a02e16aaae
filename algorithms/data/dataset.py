"""The ``Dataset`` type: a participant's rows (features as a float matrix), their labels, and what it
reports of them (``schema``); split into train and test, a shard or the task's column order, all
locally. ``DataError``: local data that cannot be used as given."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """The local data cannot be used as given (a user's mistake, with the reason)."""


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    features: list[str]
    target: str
    kind: str = "classification"
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def classes(self) -> list:
        return _json_values(np.unique(self.y)) if self.kind == "classification" else []

    def schema(self, share_size: bool = True) -> dict:
        schema = {"kind": self.kind, "features": list(self.features), "target": self.target,
                  "classes": self.classes}
        if share_size:
            schema["n_samples"] = len(self)
        return schema

    def split(self, test_size: float, seed: int) -> tuple["Dataset", "Dataset"]:
        order = np.random.default_rng(seed).permutation(len(self))
        n_test = int(round(len(self) * test_size))
        test, train = order[:n_test], order[n_test:]
        return self._take(train), self._take(test)

    def shard(self, index: int, count: int, seed: int = 0) -> "Dataset":
        if not 1 <= index <= count:
            raise DataError(f"shard {index}/{count}: the index must be between 1 and {count}")
        order = np.random.default_rng(seed).permutation(len(self))
        return self._take(np.array_split(order, count)[index - 1])

    def in_order(self, features: list[str]) -> "Dataset":
        """The same rows with the feature columns in the task's order (a participant whose file lists
        the same columns in another order trains on them as the others do)."""
        if list(features) == list(self.features):
            return self
        if sorted(features) != sorted(self.features):
            raise DataError(f"your feature columns {self.features} are not the task's {list(features)}")
        index = [self.features.index(name) for name in features]
        return Dataset(self.x[:, index], self.y, list(features), self.target, self.kind, self.source, self.meta)

    def _take(self, rows) -> "Dataset":
        return Dataset(self.x[rows], self.y[rows], self.features, self.target, self.kind, self.source, self.meta)


def _json_values(values) -> list:
    out = []
    for v in values:
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v)
    return out
