"""Class labels as the indices of the task's classes (what a classifier trains and is scored on)."""
from __future__ import annotations

import numpy as np


def label_indices(labels, classes: list) -> np.ndarray:
    """The index of each label in ``classes`` (compared as text); a ValueError names labels that are
    not among them."""
    index = {str(c): i for i, c in enumerate(classes)}
    values = [str(v) for v in np.asarray(labels).tolist()]
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the task's classes {classes}")
    return np.asarray([index[v] for v in values], dtype=np.int64)
