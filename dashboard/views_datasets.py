"""The datasets page: register a local file under a name, see its schema, forget it.

Only the path and the schema summary are kept (``datasets.py``); the rows stay in the file, on
this machine, and are read only to check the file, to join a task and to train.
"""
from __future__ import annotations

from flask import g, redirect, render_template, request, url_for
from pydantic import ValidationError

import werkbund.dashboard.datasets as store
from werkbund.dashboard.forms import DatasetForm, field_errors, safe_next


def register(app):
    @app.route("/datasets", methods=["GET", "POST"])
    def datasets():
        session = g.bs.werkbund
        errors, values = {}, {"kind": "classification", "missing": "drop"}
        if request.method == "POST":
            values = {k: request.form.get(k, "").strip() for k in DatasetForm.model_fields}
            try:
                form = DatasetForm.model_validate(values)
            except ValidationError as exc:
                errors = field_errors(exc)
            else:
                features = [f.strip() for f in (form.features or "").split(",") if f.strip()] or None
                try:
                    entry = store.register_dataset(session.url, session.name, form.name, form.path, form.target,
                                                   features, form.kind, form.missing, g.settings.data_root)
                except store.DatasetError as exc:
                    errors[exc.field] = exc.message
                else:
                    g.bs.say(f"Registered dataset {entry['name']}: {entry['schema'].get('n_samples')} rows, "
                             f"{len(entry['schema']['features'])} features. Its rows stay in the file.")
                    return redirect(safe_next(request.args.get("next"),
                                              url_for("dataset_detail", name=entry["name"])))
        mine = store.list_datasets(session.url, session.name)
        return render_template("datasets.html", datasets=mine, errors=errors, values=values,
                               data_root=g.settings.data_root), (400 if errors else 200)

    @app.get("/datasets/<name>")
    def dataset_detail(name):
        session = g.bs.werkbund
        entry = store.get_dataset(session.url, session.name, name)
        if entry is None:  # another user's dataset is no dataset for this one
            return render_template("error.html", message=f"You have no dataset called {name!r}.", status=404), 404
        return render_template("dataset_detail.html", dataset=entry)

    @app.post("/datasets/<name>/forget")
    def dataset_forget(name):
        session = g.bs.werkbund
        if store.forget_dataset(session.url, session.name, name):
            g.bs.say(f"Forgot dataset {name} (the file itself is left alone).")
        return redirect(url_for("datasets"))
