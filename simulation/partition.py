"""Cut one data set into the local data of N virtual companies.

Every partitioner returns a list of N arrays of row indices (sorted, disjoint, together all rows
unless said otherwise) and is deterministic for a given ``seed``:

- :func:`iid`: rows shuffled and dealt into N nearly equal parts;
- :func:`by_column`: rows grouped by the values of one column (AI4I's product type ``Type``,
  C-MAPSS's operating condition, a site id); participants are shared out over the groups in
  proportion to the groups' sizes, so each virtual company holds rows of one group only (with
  fewer participants than groups, whole groups are dealt to participants, largest first);
- :func:`dirichlet`: label skew; for every class, its rows are shared out over the participants
  with proportions drawn from Dirichlet(alpha, ..., alpha) (small ``alpha``: each company sees few
  classes; large: close to IID), as in Hsu et al. 2019 and NIID-Bench (Li et al. 2021);
- :func:`quantity`: quantity skew; the parts' sizes are drawn from Dirichlet(beta, ..., beta)
  (small ``beta``: a few large companies and many small ones), the rows themselves at random.

``min_rows`` (default 2) is the fewest rows a participant gets: a skewed draw that leaves a
participant below it is fixed by moving rows, one at a time, from the largest parts (for the
label skew, rows of the class that part holds most of), so no virtual company is empty.

A spec string, as the CLI takes it: ``iid``, ``column:NAME``, ``dirichlet:ALPHA``,
``quantity:BETA`` (:func:`parse_partition`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_ROWS = 2


@dataclass(frozen=True)
class PartitionSpec:
    """A partitioner by name: ``kind`` is iid, column, dirichlet or quantity."""

    kind: str
    column: str | None = None
    alpha: float | None = None

    def __str__(self) -> str:
        if self.kind == "column":
            return f"column:{self.column}"
        if self.kind in ("dirichlet", "quantity"):
            return f"{self.kind}:{self.alpha:g}"
        return self.kind


def parse_partition(spec: "str | PartitionSpec") -> PartitionSpec:
    """``iid``, ``column:NAME``, ``dirichlet:0.5`` or ``quantity:1.5`` as a :class:`PartitionSpec`."""
    if isinstance(spec, PartitionSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("a partition is iid, column:NAME, dirichlet:ALPHA or quantity:BETA")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    if kind == "column":
        if not arg:
            raise ValueError("column: needs the column's name, e.g. column:Type")
        return PartitionSpec("column", column=arg)
    if kind in ("dirichlet", "quantity"):
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"{kind}: needs a positive number, e.g. {kind}:0.5, not {arg!r}") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{kind}: the concentration must be a positive number, not {arg!r}")
        return PartitionSpec(kind, alpha=value)
    raise ValueError(f"unknown partition {spec!r}: use iid, column:NAME, dirichlet:ALPHA or quantity:BETA")


def _check(n_rows: int, parts: int, min_rows: int) -> None:
    if not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ValueError(f"the number of participants must be at least 1, not {parts!r}")
    if min_rows < 0:
        raise ValueError("min_rows must be 0 or more")
    if n_rows < parts * max(min_rows, 1):
        raise ValueError(f"{n_rows} rows cannot give {parts} participants {max(min_rows, 1)} row(s) each; "
                         "use fewer participants or more data")


def _sorted_parts(parts: list) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(n_rows: int, parts: int, seed: int = 0, min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """Rows shuffled and dealt into ``parts`` nearly equal parts."""
    _check(n_rows, parts, min_rows)
    order = np.random.default_rng(seed).permutation(n_rows)
    return _sorted_parts(np.array_split(order, parts))


def _apportion(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """``total`` split in proportion to ``weights`` (largest remainders), then every share below
    ``minimum`` topped up, one at a time, from the largest share."""
    weights = np.asarray(weights, dtype=np.float64)
    if total < minimum * len(weights):
        raise ValueError(f"{total} cannot give {len(weights)} shares of at least {minimum}")
    exact = weights / weights.sum() * total
    shares = np.floor(exact).astype(np.int64)
    left = total - shares.sum()
    if left:
        shares[np.argsort(-(exact - shares), kind="stable")[:left]] += 1
    for small in np.flatnonzero(shares < minimum):
        while shares[small] < minimum:
            shares[int(np.argmax(shares))] -= 1
            shares[small] += 1
    return shares


def by_column(values, parts: int, seed: int = 0, min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """One group of a column's values per participant (several participants per group when there
    are more participants than groups, in proportion to the groups' sizes)."""
    values = np.asarray(values)
    _check(len(values), parts, min_rows)
    rng = np.random.default_rng(seed)
    keys, inverse = np.unique(values.astype(str), return_inverse=True)
    groups = [np.flatnonzero(inverse == g) for g in range(len(keys))]
    sizes = np.array([len(g) for g in groups])
    if parts < len(groups):  # whole groups to participants: largest group to the smallest part
        result: list[list[int]] = [[] for _ in range(parts)]
        for g in np.argsort(-sizes, kind="stable"):
            smallest = min(range(parts), key=lambda p: (len(result[p]), p))
            result[smallest].extend(groups[g].tolist())
        return _sorted_parts(result)
    # participants per group in proportion to its rows, at least one each, and no more than the
    # group's rows allow at min_rows each
    per_group = _apportion(parts, sizes, 1)
    cap = np.maximum(sizes // max(min_rows, 1), 1)
    while (per_group > cap).any():  # move participants from over-full groups to the roomiest
        over = int(np.flatnonzero(per_group > cap)[0])
        room = cap - per_group
        target = int(np.argmax(room))
        if room[target] <= 0:
            raise ValueError(f"the groups of the column cannot give {parts} participants {min_rows} rows each")
        per_group[over] -= 1
        per_group[target] += 1
    result = []
    for rows, count in zip(groups, per_group):
        result.extend(np.array_split(rng.permutation(rows), int(count)))
    return _sorted_parts(result)


def _fill_small(parts: list[list[int]], min_rows: int, labels=None) -> None:
    """Move rows from the largest parts to any part below ``min_rows`` (deterministic)."""
    sizes = np.array([len(p) for p in parts])
    for small in np.flatnonzero(sizes < min_rows):
        while len(parts[small]) < min_rows:
            donor = int(np.argmax([len(p) for p in parts]))
            rows = parts[donor]
            if labels is not None:  # give away a row of the donor's most common class: keeps its skew
                values, counts = np.unique(labels[rows], return_counts=True)
                common = values[np.argmax(counts)]
                where = max(i for i, r in enumerate(rows) if labels[r] == common)
            else:
                where = len(rows) - 1
            parts[small].append(rows.pop(where))


def dirichlet(labels, parts: int, alpha: float, seed: int = 0,
              min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """Label skew: each class's rows shared out with proportions ~ Dirichlet(alpha)."""
    labels = np.asarray(labels)
    _check(len(labels), parts, min_rows)
    if not alpha > 0:
        raise ValueError("the Dirichlet concentration alpha must be positive")
    rng = np.random.default_rng(seed)
    keys, inverse = np.unique(labels.astype(str), return_inverse=True)
    result: list[list[int]] = [[] for _ in range(parts)]
    for c in range(len(keys)):
        rows = rng.permutation(np.flatnonzero(inverse == c))
        shares = rng.dirichlet(np.full(parts, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for p, piece in enumerate(np.split(rows, cuts)):
            result[p].extend(piece.tolist())
    _fill_small(result, min_rows, inverse)
    return _sorted_parts(result)


def quantity(n_rows: int, parts: int, beta: float, seed: int = 0,
             min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """Quantity skew: part sizes ~ Dirichlet(beta) (at least ``min_rows`` each), rows at random."""
    _check(n_rows, parts, min_rows)
    if not beta > 0:
        raise ValueError("the Dirichlet concentration beta must be positive")
    rng = np.random.default_rng(seed)
    sizes = _apportion(n_rows, rng.dirichlet(np.full(parts, float(beta))), min_rows)
    order = rng.permutation(n_rows)
    return _sorted_parts(np.split(order, np.cumsum(sizes)[:-1]))


def partition_rows(spec: "str | PartitionSpec", parts: int, seed: int = 0, labels=None, column_values=None,
              n_rows: int | None = None, min_rows: int = DEFAULT_MIN_ROWS) -> list[np.ndarray]:
    """Row indices per participant for a spec (``labels`` for dirichlet, ``column_values`` for column)."""
    spec = parse_partition(spec)
    if n_rows is None:
        n_rows = len(labels) if labels is not None else len(column_values)
    if spec.kind == "iid":
        return iid(n_rows, parts, seed, min_rows)
    if spec.kind == "quantity":
        return quantity(n_rows, parts, spec.alpha, seed, min_rows)
    if spec.kind == "dirichlet":
        if labels is None:
            raise ValueError("the Dirichlet label skew needs the labels")
        return dirichlet(labels, parts, spec.alpha, seed, min_rows)
    if column_values is None:
        raise ValueError(f"partition by column {spec.column!r} needs that column's values")
    return by_column(column_values, parts, seed, min_rows)


def describe(parts: list[np.ndarray], labels=None) -> dict:
    """Sizes (min, median, max) and, with labels, the mean share of a participant's largest class."""
    sizes = np.array([len(p) for p in parts])
    out = {"participants": len(parts), "rows": int(sizes.sum()), "min_rows": int(sizes.min()),
           "median_rows": float(np.median(sizes)), "max_rows": int(sizes.max())}
    if labels is not None:
        labels = np.asarray(labels).astype(str)
        top = []
        for p in parts:
            if len(p):
                _, counts = np.unique(labels[p], return_counts=True)
                top.append(counts.max() / len(p))
        out["mean_top_class_share"] = float(np.mean(top))
    return out
