"""A task's state as the detail page shows it and polls it: one JSON document, built from the platform.

Everything comes from the platform through the logged-in user's session (``task_info``, the round
records, the members), so the platform's rules decide what a user may see; plus the progress of
the runs this dashboard started for that user. The browser draws the charts from it.
"""
from __future__ import annotations

import math

from werkbund.dashboard.forms import PRIVACY_MODES
from werkbund.platform.errors import PermissionDenied, WerkbundError

METRICS = ("accuracy", "loss", "rmse", "mae")
MAX_SCATTER_POINTS = 2000


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def round_rows(records: list[dict]) -> list[dict]:
    """One row per recorded round (numbered from 1): who reported, who was rejected and why, who was
    missing, the combined and per-participant figures, epsilon spent."""
    rows = []
    for record in records:
        m = record.get("metrics") or {}
        dp = m.get("dp") or {}
        rows.append({
            "round": record["round"] + 1,
            "reported": sorted(record.get("reported") or []),
            "rejected": {str(k): str(v) for k, v in sorted((record.get("rejected") or {}).items())},
            "missing": sorted(record.get("missing") or []),
            "metrics": {k: _number(m.get(k)) for k in METRICS if _number(m.get(k)) is not None},
            "aggregator": {k: _number(v) for k, v in (m.get("aggregator") or {}).items()
                           if k in METRICS and _number(v) is not None},
            "participants": {str(name): {k: _number(v) for k, v in (figures or {}).items()
                                         if k in METRICS and _number(v) is not None}
                             for name, figures in sorted((m.get("participants") or {}).items())},
            "epsilon": _number(dp.get("epsilon")),
            "duration_s": _number(m.get("duration_s")),
            "stopped": m.get("stopped") if isinstance(m.get("stopped"), str) else None,
        })
    return rows


def main_metric(rows: list[dict]) -> str | None:
    for metric in ("accuracy", "rmse", "loss"):
        if any(metric in r["metrics"] or any(metric in p for p in r["participants"].values()) for r in rows):
            return metric
    return None


def member_rows(participants: list[dict], rows: list[dict]) -> list[dict]:
    """Each member, with what the last recorded round says of it."""
    last = rows[-1] if rows else None
    members = []
    for p in participants:
        name = p.get("user")
        state, reason = "joined", ""
        if last is not None:
            if name in last["rejected"]:
                state, reason = "rejected", last["rejected"][name]
            elif name in last["missing"]:
                state, reason = "missed the deadline", f"no update in round {last['round']}"
            elif name in last["reported"]:
                state = "reported"
        schema = p.get("schema") or {}
        members.append({"user": name, "org": p.get("org"), "joined_at": p.get("joined_at"), "state": state,
                        "reason": reason, "rows": schema.get("n_samples")})
    return members


def confusion(records: list[dict], classes: list | None) -> dict | None:
    with_matrix = [r for r in records if (r.get("metrics") or {}).get("confusion")]
    if not with_matrix:
        return None
    matrix = with_matrix[-1]["metrics"]["confusion"]
    labels = [str(c) for c in (classes or range(len(matrix)))]
    return {"round": with_matrix[-1]["round"] + 1, "matrix": matrix, "classes": labels[:len(matrix)]}


def task_state(session, name: str, runs: list) -> dict:
    """The detail page's document for ``name`` as ``session``'s user sees it."""
    client = session.client
    info = client.task_info(name)
    definition = info.get("definition") or {}
    role = info.get("role")
    records, participants = [], []
    if role is not None:  # only members and the creator see rounds and members
        try:
            records = client.rounds(name)
            participants = client.transport.call("participants", task=name)
        except PermissionDenied:
            pass
    rows = round_rows(records)
    local = {entry.role: entry.progress() for entry in runs}
    running = {r for r, p in local.items() if p.get("status") in ("running", "stopping")}
    done_rounds = len(rows)
    current = max([done_rounds] + [int(p.get("round") or 0) for p in local.values()])
    total = definition.get("rounds")
    last_dp = next((r for r in reversed(records) if (r.get("metrics") or {}).get("dp")), None)
    epsilon = None
    if last_dp is not None:
        dp = last_dp["metrics"]["dp"]
        epsilon = {"spent": _number(dp.get("epsilon")), "delta": _number(dp.get("delta")),
                   "budget": _number(dp.get("budget")), "worst_participant": dp.get("worst_participant")}
    status = info["status"]
    me = session.name
    joined = me in (info.get("participants") or [])
    return {
        "name": info["name"], "status": status, "reason": info.get("reason"), "creator": info["creator"],
        "org": info["org"], "algorithm": info.get("algorithm"), "pom": info.get("pom", 1),
        "pom_name": PRIVACY_MODES.get(info.get("pom", 1), ("unknown", ""))[0],
        "description": definition.get("description") or "", "quorum": info.get("quorum"),
        "joined": info.get("joined"), "max_participants": info.get("max_participants"), "role": role,
        "round": min(current, total) if total else current, "rounds": total,
        "created_at": info.get("created_at"), "started_at": info.get("started_at"),
        "finished_at": info.get("finished_at"),
        "definition": definition, "members": member_rows(participants, rows), "history": rows,
        "metric": main_metric(rows), "epsilon": epsilon,
        "confusion": confusion(records, (info.get("schema") or {}).get("classes")),
        "runs": local,
        "actions": {
            "join": role is None and status == "CREATED",
            "participate": joined and status in ("CREATED", "STARTED") and "participant" not in running,
            "aggregate": role == "creator" and status == "CREATED" and "aggregator" not in running,
            "resume": role == "creator" and status == "STARTED" and "aggregator" not in running,
            "stop": sorted(running),
            "delete": role == "creator" and status != "STARTED" and "aggregator" not in running,
            "leave": joined and status == "CREATED" and "participant" not in running,
            "download": role is not None and status == "COMPLETE",
        },
    }


def kmeans_scatter(session, name: str, dataset: dict | None) -> dict | None:
    """The k-means clusters of a COMPLETE task: centroids (sized by cluster), and the user's own rows
    (from the dataset registered here, at most MAX_SCATTER_POINTS of them) coloured by their cluster,
    projected to two dimensions. The rows go from this dashboard to this user's browser only."""
    import numpy as np

    from werkbund.algorithms.builtin.kmeans import assign
    from werkbund.algorithms.plots import _projection
    from werkbund.algorithms.standardization import standardized
    from werkbund.client.python_api.results import load_model_bytes

    try:
        data, info = session.client.get_model(name)
    except WerkbundError:
        return None
    arrays = load_model_bytes(data, info.get("meta"))
    if not isinstance(arrays, dict) or "centroids" not in arrays:
        return None
    centroids = np.asarray(arrays["centroids"], dtype=np.float64)
    features = (info.get("meta") or {}).get("features") or [f"x{i}" for i in range(centroids.shape[1])]
    x = labels = None
    if dataset is not None:
        from werkbund.algorithms.data.loading import load_dataset

        local = load_dataset(dataset["path"], target=dataset.get("target"), features=dataset.get("features"),
                             kind=dataset.get("kind") or "classification", missing=dataset.get("missing") or "drop")
        x = np.asarray(local.x, dtype=np.float64)
        if x.shape[1] == centroids.shape[1]:
            if len(x) > MAX_SCATTER_POINTS:
                x = x[np.random.default_rng(0).choice(len(x), MAX_SCATTER_POINTS, replace=False)]
            labels, _ = assign(standardized(x, arrays["mean"], arrays["scale"]), arrays["centroids_standardized"])
        else:
            x = None
    reference = x if x is not None and len(x) > 2 else centroids
    project, axes = _projection(reference if len(reference) > 1 else centroids, list(features))
    centres = project(centroids)
    sizes = arrays.get("sizes")
    result = {"axes": axes, "centroids": [[float(a), float(b)] for a, b in centres],
              "sizes": [float(s) for s in np.asarray(sizes).ravel()] if sizes is not None else None,
              "points": [], "labels": []}
    if x is not None:
        points = project(x)
        result["points"] = [[round(float(a), 5), round(float(b), 5)] for a, b in points]
        result["labels"] = [int(c) for c in labels]
    return result
