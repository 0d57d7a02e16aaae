"""The dashboard's JSON endpoints, validated and described by spectree from pydantic models.

Why spectree: it decorates plain Flask views (the app stays a Flask app like ``local_platform``),
validates a request's query or body against a pydantic model, and builds the OpenAPI 3 document
from the same models, served at ``/api/openapi.json``; pydantic also checks the HTML forms
(``forms.py``), so one set of models says what every input may be. Its documentation pages load
their scripts from a CDN, so they are switched off (``page_templates={}``) and the spec alone is served.

The pages' scripts poll these endpoints (``/api/tasks/NAME/state`` every second) and draw the
charts in the browser from them.
"""
from __future__ import annotations

from typing import Any

from flask import g, jsonify
from pydantic import BaseModel
from spectree import Response, SpecTree

import werkbund.dashboard.datasets as store
from werkbund.dashboard.forms import TaskQuery
from werkbund.dashboard.live import kmeans_scatter, task_state
from werkbund.dashboard.views_tasks import list_rows


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorReply(BaseModel):
    error: ErrorDetail


class TaskSummary(BaseModel):
    name: str
    creator: str
    org: str
    status: str
    algorithm: str | None = None
    pom: int = 1
    quorum: int | None = None
    joined: int = 0
    max_participants: int | None = None
    role: str | None = None
    created_at: str | None = None
    reason: str | None = None


class TaskList(BaseModel):
    tasks: list[TaskSummary]


class Member(BaseModel):
    user: str
    org: str | None = None
    joined_at: str | None = None
    state: str
    reason: str = ""
    rows: int | None = None


class RoundRow(BaseModel):
    round: int
    reported: list[str]
    rejected: dict[str, str]
    missing: list[str]
    metrics: dict[str, float]
    aggregator: dict[str, float]
    participants: dict[str, dict[str, float]]
    epsilon: float | None = None
    duration_s: float | None = None
    stopped: str | None = None


class Epsilon(BaseModel):
    spent: float | None = None
    delta: float | None = None
    budget: float | None = None
    worst_participant: str | None = None


class Confusion(BaseModel):
    round: int
    matrix: list[list[float]]
    classes: list[str]


class Actions(BaseModel):
    join: bool
    participate: bool
    aggregate: bool
    resume: bool
    stop: list[str]
    delete: bool
    leave: bool
    download: bool


class TaskState(BaseModel):
    """What the detail page shows and polls: status, round x of y, members, per-round history."""

    name: str
    status: str
    reason: str | None = None
    creator: str
    org: str
    algorithm: str | None = None
    pom: int
    pom_name: str
    description: str
    quorum: int | None = None
    joined: int
    max_participants: int | None = None
    role: str | None = None
    round: int
    rounds: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    definition: dict[str, Any]
    members: list[Member]
    history: list[RoundRow]
    metric: str | None = None
    epsilon: Epsilon | None = None
    confusion: Confusion | None = None
    runs: dict[str, dict[str, Any]]
    actions: Actions


class Clusters(BaseModel):
    axes: list[str]
    centroids: list[list[float]]
    sizes: list[float] | None = None
    points: list[list[float]]
    labels: list[int]


class DatasetSummary(BaseModel):
    name: str
    path: str
    target: str | None = None
    features: list[str] | None = None
    kind: str
    missing: str
    registered_at: str
    data_schema: dict[str, Any]


class DatasetList(BaseModel):
    datasets: list[DatasetSummary]


def make_spec() -> SpecTree:
    return SpecTree("flask", title="werkbund dashboard", version="1", path="openapi", filename="openapi.json",
                    page_templates={}, mode="strict", annotations=True,
                    description="The JSON endpoints the dashboard's pages poll. Every endpoint needs a logged-in "
                                "dashboard session (its cookie); the platform's rules decide what each user sees.")


def register(app):
    spec = make_spec()

    @app.get("/api/tasks")
    @spec.validate(query=TaskQuery, resp=Response(HTTP_200=TaskList, HTTP_401=ErrorReply), tags=["tasks"])
    def api_tasks(query: TaskQuery):
        """The tasks this user can see, filtered as on the task list."""
        rows = list_rows(g.bs.werkbund, query)
        return TaskList(tasks=[TaskSummary.model_validate({k: r.get(k) for k in TaskSummary.model_fields
                                                           if r.get(k) is not None}) for r in rows])

    @app.get("/api/tasks/<name>/state")
    @spec.validate(resp=Response(HTTP_200=TaskState, HTTP_401=ErrorReply, HTTP_404=ErrorReply), tags=["tasks"])
    def api_task_state(name: str):
        """A task now: status, round x of y, members and their state, every round's figures, local runs."""
        return TaskState.model_validate(task_state(g.bs.werkbund, name, g.runs.of_task(g.bs.werkbund, name)))

    @app.get("/api/tasks/<name>/clusters")
    @spec.validate(resp=Response(HTTP_200=Clusters, HTTP_404=ErrorReply), tags=["tasks"])
    def api_task_clusters(name: str):
        """A COMPLETE k-means task's centroids, over this user's own rows if a dataset of theirs joined it."""
        from werkbund.client import home_files

        session = g.bs.werkbund
        choice = home_files.load_join(session.url, session.name, name) or {}
        mine = next((d for d in store.list_datasets(session.url, session.name) if d["path"] == choice.get("data")),
                    None)
        result = kmeans_scatter(session, name, mine)
        if result is None:
            return ErrorReply(error=ErrorDetail(code="not_found", message="no k-means model for this task")), 404
        return Clusters.model_validate(result)

    @app.get("/api/datasets")
    @spec.validate(resp=Response(HTTP_200=DatasetList, HTTP_401=ErrorReply), tags=["datasets"])
    def api_datasets():
        """This user's registered datasets: paths and schemas, never rows."""
        session = g.bs.werkbund
        return DatasetList(datasets=[DatasetSummary.model_validate({**d, "data_schema": d["schema"]})
                                     for d in store.list_datasets(session.url, session.name)])

    @app.get("/api/openapi.json", endpoint="openapi_spec")
    def openapi_spec():
        """The OpenAPI 3 document of the endpoints above (spectree serves its own under /openapi/, a path its
        route scan leaves out; so the spec goes here, beside the endpoints it describes)."""
        return jsonify(spec.spec)
