"""The task pages: the list with its filters, the create form, a task's detail page and its actions.

Every action is a POST with the session's CSRF token, and each one is a call of the Python API as
the logged-in user (``task.join``, ``task.aggregate(background=True)``, ``task.delete`` ...): the
platform decides whether it is allowed and says why not.
"""
from __future__ import annotations

import io
import logging

from flask import g, redirect, render_template, request, send_file, url_for
from pydantic import ValidationError

import werkbund.dashboard.datasets as store
from werkbund.dashboard.forms import (
    DP_DESCRIPTION, PRIVACY_MODES, STATUSES, TaskForm, TaskQuery, field_errors, field_of_message, option_fields,
    participant_option_fields, read_options,
)
from werkbund.dashboard.live import task_state
from werkbund.platform.errors import InvalidInput, TaskExists, TaskNotFound, WerkbundError

log = logging.getLogger("werkbund.dashboard")
GENERIC_FORM_FIELDS = ("name", "algorithm", "description", "quorum", "rounds", "max_participants", "round_timeout",
                       "kind", "pom", "dp", "dp_epsilon", "dp_delta", "dp_l2_norm_clip")


def installed_algorithms() -> list[dict]:
    """The algorithms installed here, with what the form needs of each declaration."""
    from werkbund.algorithms.registry import available
    from werkbund.client.definitions import load_algorithm

    found = []
    for name in available():
        try:
            algorithm = load_algorithm(name)
        except WerkbundError as exc:
            log.warning("algorithm %s cannot be loaded: %s", name, exc)
            continue
        found.append({"name": name, "description": algorithm.description,
                      "modes": sorted(getattr(algorithm, "privacy_modes", {1})),
                      "dp": bool(getattr(algorithm, "dp", False)), "options": option_fields(algorithm),
                      "participant_options": participant_option_fields(algorithm)})
    return found


def list_rows(session, query: TaskQuery) -> list[dict]:
    rows = session.client.list_tasks(status=query.status, algorithm=query.algorithm, search=query.search)
    if query.pom is not None:
        rows = [r for r in rows if r.get("pom", 1) == query.pom]
    if query.scope == "mine":
        rows = [r for r in rows if r.get("role") == "creator"]
    elif query.scope == "joined":
        rows = [r for r in rows if r.get("role") == "participant"]
    return rows


def _task(name: str):
    return g.bs.werkbund.task(name)


def _back(name: str, anchor: str = ""):
    return redirect(url_for("task_detail", name=name) + anchor)


def register(app):
    @app.get("/tasks")
    def tasks():
        errors = {}
        try:
            query = TaskQuery.model_validate({k: v for k, v in request.args.items() if k in TaskQuery.model_fields})
        except ValidationError as exc:
            errors, query = field_errors(exc), TaskQuery()
        rows = list_rows(g.bs.werkbund, query)
        return render_template("tasks.html", rows=rows, query=query, errors=errors, statuses=STATUSES,
                               modes=PRIVACY_MODES, algorithms=[a["name"] for a in installed_algorithms()])

    @app.route("/tasks/new", methods=["GET", "POST"])
    def task_new():
        algorithms = installed_algorithms()
        errors: dict[str, str] = {}
        values = dict(request.form) if request.method == "POST" else {}
        if request.method == "POST":
            name = create_task(algorithms, errors)
            if name:
                g.bs.say(f"Created task {name}.")
                return _back(name)
        return render_template("task_new.html", algorithms=algorithms, errors=errors, values=values,
                               modes=PRIVACY_MODES, dp_description=DP_DESCRIPTION), (400 if errors else 200)

    @app.get("/tasks/<name>")
    def task_detail(name):
        try:
            state = task_state(g.bs.werkbund, name, g.runs.of_task(g.bs.werkbund, name))
        except TaskNotFound as exc:
            return render_template("error.html", message=exc.message, status=404), 404
        algorithm = next((a for a in installed_algorithms() if a["name"] == state["algorithm"]), None)
        mine = store.list_datasets(g.bs.werkbund.url, g.bs.werkbund.name)
        report = g.bs.ledger_reports.get(name)
        return render_template("task_detail.html", task=state, algorithm=algorithm, datasets=mine, report=report,
                               modes=PRIVACY_MODES)

    @app.post("/tasks/<name>/join")
    def task_join(name):
        session = g.bs.werkbund
        dataset = store.get_dataset(session.url, session.name, request.form.get("dataset", ""))
        if dataset is None:
            g.bs.say("Choose one of your datasets to join with (or register one first).", "error")
            return _back(name, "#join")
        task = _task(name)
        algorithm = next((a for a in installed_algorithms() if a["name"] == task.definition.get("algorithm")), None)
        options, errors = read_options(algorithm["participant_options"] if algorithm else [], request.form, "popt-")
        if errors:
            g.bs.say("; ".join(f"{k.removeprefix('popt-')}: {v}" for k, v in errors.items()), "error")
            return _back(name, "#join")
        try:
            task.join(dataset["path"], target=dataset.get("target"), features=dataset.get("features"),
                      kind=dataset.get("kind") or "classification", missing=dataset.get("missing") or "drop",
                      hide_size=request.form.get("hide_size") == "on")
        except (WerkbundError, ValueError) as exc:
            g.bs.say(f"Could not join: {getattr(exc, 'message', None) or exc}", "error")
            return _back(name, "#join")
        _start_participant(task, dataset["name"], options)
        return _back(name, "#progress")

    @app.post("/tasks/<name>/participate")
    def task_participate(name):
        task = _task(name)
        joined = store_choice(task)
        _start_participant(task, joined, {})
        return _back(name, "#progress")

    @app.post("/tasks/<name>/aggregate")
    def task_aggregate(name):
        session, task = g.bs.werkbund, _task(name)
        resume = request.form.get("resume") == "1"
        holdout = store.get_dataset(session.url, session.name, request.form.get("holdout", ""))

        def launch():
            return task.aggregate(background=True, progress=False, resume=resume,
                                  holdout=holdout["path"] if holdout else None,
                                  target=holdout.get("target") if holdout else None)
        try:
            g.runs.start(session, name, "aggregator", launch, dataset=holdout["name"] if holdout else None)
        except (WerkbundError, ValueError) as exc:
            g.bs.say(f"Could not start the aggregator: {getattr(exc, 'message', None) or exc}", "error")
        else:
            g.bs.say("The aggregator runs in this dashboard" + (" from its last checkpoint." if resume else
                                                                "; it waits for the quorum, then runs the rounds."))
        return _back(name, "#progress")

    @app.post("/tasks/<name>/stop")
    def task_stop(name):
        entry = g.runs.get(g.bs.werkbund, name, request.form.get("role", ""))
        if entry is None or not entry.active:
            g.bs.say("Nothing of this task runs in this dashboard.", "error")
        else:
            entry.run.stop(timeout=0)  # it stops within a second or at the end of its epoch
            g.bs.say(f"Stopping the {entry.role}.")
        return _back(name, "#progress")

    @app.post("/tasks/<name>/leave")
    def task_leave(name):
        try:
            _task(name).leave()
            g.bs.say(f"You left task {name}.")
        except WerkbundError as exc:
            g.bs.say(exc.message, "error")
        return _back(name)

    @app.post("/tasks/<name>/delete")
    def task_delete(name):
        try:
            _task(name).delete()
        except WerkbundError as exc:
            g.bs.say(exc.message, "error")
            return _back(name)
        g.bs.say(f"Deleted task {name}.")
        return redirect(url_for("tasks"))

    @app.post("/tasks/<name>/ledger")
    def task_ledger(name):
        from werkbund.client.ledger import verify_task_ledger

        session = g.bs.werkbund
        try:
            report, bundle = verify_task_ledger(session.client, session.url, name)
        except WerkbundError as exc:
            g.bs.say(f"Could not verify the ledger: {exc.message}", "error")
            return _back(name, "#ledger")
        bad = set(report.bad_entries)
        entries = []
        for item in bundle.get("entries", []):
            entry = item.get("entry") or {}
            payload = entry.get("payload") or {}
            summary = ", ".join(f"{k} {str(v)[:24]}" for k, v in payload.items()
                                if k in ("user", "creator", "round", "n_samples", "sha256", "model_sha256", "reason"))
            entries.append({"seq": entry.get("seq"), "type": entry.get("type"), "author": entry.get("author"),
                            "timestamp": entry.get("timestamp"), "summary": summary,
                            "ok": entry.get("seq") not in bad})
        g.bs.ledger_reports[name] = {"ok": report.ok, "entries": entries,
                                     "checks": [{"name": c.name, "status": c.status, "detail": c.detail,
                                                 "problems": [p.message for p in c.problems]}
                                                for c in report.checks]}
        return _back(name, "#ledger")

    @app.get("/tasks/<name>/model")
    def task_model(name):
        data, info = g.bs.werkbund.client.get_model(name)
        data = bytes(data)
        suffix = ".keras" if data[:2] == b"PK" else ".json" if data[:1] in (b"{", b"[") else ".safetensors"
        return send_file(io.BytesIO(data), mimetype="application/octet-stream", as_attachment=True,
                         download_name=f"{name}{suffix}")


def store_choice(task) -> str | None:
    from werkbund.client import home_files

    choice = home_files.load_join(task.session.url, task.session.name, task.name) or {}
    mine = store.list_datasets(task.session.url, task.session.name)
    return next((d["name"] for d in mine if d["path"] == choice.get("data")), choice.get("data"))


def _start_participant(task, dataset_name: str | None, options: dict) -> None:
    def launch():
        return task.participate(background=True, progress=False, options=options or None)
    try:
        g.runs.start(g.bs.werkbund, task.name, "participant", launch, dataset=dataset_name)
    except (WerkbundError, ValueError) as exc:
        g.bs.say(f"Could not start training: {getattr(exc, 'message', None) or exc}", "error")
    else:
        g.bs.say(f"Training for task {task.name} runs in this dashboard, on this machine's data"
                 + (f" ({dataset_name})." if dataset_name else "."))


def create_task(algorithms: list[dict], errors: dict) -> str | None:
    """Check the create form and create the task; fills ``errors`` (by form field) when it cannot."""
    form = request.form
    raw = {k: form.get(k) for k in GENERIC_FORM_FIELDS if form.get(k, "").strip()}  # blank: the default
    raw["dp"] = form.get("dp") == "on"
    try:
        base = TaskForm.model_validate(raw)
    except ValidationError as exc:
        errors.update(field_errors(exc))
        base = None
    chosen = next((a for a in algorithms if a["name"] == form.get("algorithm")), None)
    if chosen is None:
        errors.setdefault("algorithm", "choose one of the installed algorithms")
        return None
    prefix = f"opt-{chosen['name']}-"
    options, option_errors = read_options(chosen["options"], form, prefix)
    errors.update(option_errors)
    if base is None:
        return None
    if base.pom not in chosen["modes"]:
        errors["pom"] = (f"{chosen['name']} runs in privacy mode "
                         f"{' and '.join(str(m) for m in chosen['modes'])} only")
    definition = {"algorithm": chosen["name"], "quorum": base.quorum, "rounds": base.rounds, "pom": base.pom}
    for key in ("description", "max_participants", "round_timeout", "kind"):
        if getattr(base, key) is not None:
            definition[key] = getattr(base, key)
    if base.dp:
        if not chosen["dp"]:
            errors["dp"] = f"{chosen['name']} has no differential privacy"
        elif base.dp_epsilon is None:
            errors["dp_epsilon"] = "give the target epsilon (the noise is calibrated for it)"
        else:
            definition["dp"] = {"epsilon": base.dp_epsilon, "delta": base.dp_delta or 1e-5,
                                "l2_norm_clip": base.dp_l2_norm_clip or 1.0}
    if errors:
        return None
    definition.update(options)
    try:
        g.bs.werkbund.create_task(base.name, definition)
    except TaskExists as exc:
        errors["name"] = exc.message
    except InvalidInput as exc:
        names = {*GENERIC_FORM_FIELDS, *options, *(o.name for o in chosen["options"])}
        field = field_of_message(exc.message, names)
        if field in {o.name for o in chosen["options"]}:
            field = prefix + field
        errors[field or "form"] = exc.message
    except WerkbundError as exc:
        errors["form"] = exc.message
    else:
        return base.name
    return None
