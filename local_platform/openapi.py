"""The local platform's OpenAPI 3.1 spec, built from the same parameter models that ``dispatch`` checks.

Served at ``GET /api/v1/openapi.json`` (``local_platform/app.py``); one operation per control command
(``POST /api/v1/call/<command>``), plus register, login, task messages, the final model and health.
"""
from __future__ import annotations

from pydantic.json_schema import models_json_schema

from werkbund.platform.command_schemas import MAX_JSON_DEPTH, PARAMS, PUBLIC_PARAMS

REF = "#/components/schemas/{model}"
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
DATA = {"type": "object", "required": ["data"], "properties": {"data": {}}}
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
TASK = {"name": "task", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 256}}
# the same id on every retry of one call: the platform answers a repetition from its record (platform/request_replies.py)
REQUEST_ID = {"name": "X-Werkbund-Request-Id", "in": "header", "required": False,
              "description": "one id per logical call, repeated on its retries; a repetition gets the first reply",
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict:
    reasons = {400: "invalid input (code invalid_input and others)", 401: "not logged in",
               403: "not allowed", 404: "no such task, user or model", 409: "conflicts with the state",
               413: "too large", 503: "unavailable"}
    return {str(s): {"description": reasons[s], "content": _json({"$ref": "#/components/schemas/Error"})}
            for s in statuses}


def _operation(summary: str, ok: dict, *statuses: int, authenticated: bool = True, **more) -> dict:
    operation = {"summary": summary, "responses": {**ok, **_errors(400, *statuses)}, **more}
    if authenticated:
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(_errors(401))
    return operation


def openapi_spec() -> dict:
    """The spec as a JSON-able dict."""
    models = {**PARAMS, **PUBLIC_PARAMS}
    refs, defs = models_json_schema([(m, "validation") for m in set(models.values())], ref_template=REF)
    schemas = dict(defs.get("$defs", {}), Error=ERROR)
    ok = {"200": {"description": "the command's result", "content": _json(DATA)}}
    paths = {}
    for command, model in PARAMS.items():
        body = {"required": bool(model.model_json_schema().get("required")),
                "content": _json(refs[(model, "validation")])}
        paths[f"/api/v1/call/{command}"] = {"post": _operation(
            f"the control command {command}", ok, 403, 404, 409, 503, operationId=command, requestBody=body,
            parameters=[REQUEST_ID])}
    for command, status in (("register", "201"), ("login", "200")):
        body = {"required": True, "content": _json(refs[(PUBLIC_PARAMS[command], "validation")])}
        paths[f"/api/v1/{command}"] = {"post": _operation(
            command, {status: {"description": f"{command} done", "content": _json(DATA)}}, 401, 409,
            authenticated=False, operationId=command, requestBody=body)}
    paths["/api/v1/logout"] = {"post": _operation(
        "revoke the session token this request carries", ok, operationId="logout")}
    paths["/api/v1/tasks/{task}/messages"] = {
        "post": _operation(
            "send a task message (the raw frame) to the aggregator, to all participants or to one",
            {"202": {"description": "delivered", "content": _json(DATA)}}, 403, 404, 409, 413,
            operationId="send_message", requestBody={"required": True, "content": BINARY},
            parameters=[TASK, {"name": "to", "in": "query", "required": True,
                               "schema": {"type": "string", "maxLength": 256},
                               "description": "aggregator, all, or a participant's name"},
                              {"name": "X-Werkbund-Message-Id", "in": "header", "required": False,
                               "schema": {"type": "string", "maxLength": 128},
                               "description": "the sender's id of the message: a repeat is not stored again"}]),
        "get": _operation(
            "long-poll for the caller's next message in the task",
            {"200": {"description": "the message; with most above 1, the messages waiting (up to most, about 1 MiB "
                                    "of them), their frames one after another",
                     "content": BINARY,
                     "headers": {"X-Werkbund-Sender": {"schema": {"type": "string"},
                                                       "description": "the sender (one message)"},
                                 "X-Werkbund-Batch": {"schema": {"type": "string"},
                                                      "description": "with most above 1: a JSON list of "
                                                                     "[sender, size] of each frame, in order"}}},
             "204": {"description": "no message came in time"}}, 403, 404,
            operationId="receive_message",
            parameters=[TASK, {"name": "timeout", "in": "query", "required": False,
                               "schema": {"type": "number", "minimum": 0, "default": 30},
                               "description": "seconds to wait, at most 60"},
                        {"name": "most", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 256, "default": 1},
                         "description": "how many waiting messages one reply may carry"}]),
    }
    paths["/api/v1/tasks/{task}/model"] = {
        "put": _operation(
            "store the task's final model (its creator, while the task runs)", ok, 403, 404, 409, 413,
            operationId="put_model", requestBody={"required": True, "content": BINARY},
            parameters=[TASK, {"name": "X-Werkbund-Meta", "in": "header", "required": False,
                               "description": f"the model's metadata: a JSON object, at most {MAX_JSON_DEPTH} "
                                              "levels deep", "schema": {"type": "string"}},
                        {"name": "X-Werkbund-Meta-Bytes", "in": "header", "required": False,
                         "description": "instead of X-Werkbund-Meta: the body opens with the metadata's JSON, "
                                        "this many bytes (at most 16 MiB), then the model",
                         "schema": {"type": "integer", "minimum": 0}}]),
        "get": _operation(
            "fetch the final model of a COMPLETE task (its creator and participants)",
            {"200": {"description": "the model; with meta=body, its info's JSON (X-Werkbund-Meta-Bytes long) first",
                     "content": BINARY,
                     "headers": {"X-Werkbund-Meta": {"schema": {"type": "string"}},
                                 "X-Werkbund-Meta-Bytes": {"schema": {"type": "integer"}}}}}, 403, 404,
            operationId="get_model",
            parameters=[TASK, {"name": "meta", "in": "query", "required": False,
                               "description": "body: the model's info (size, sha256, metadata) as JSON at the "
                                              "start of the body instead of in a header",
                               "schema": {"type": "string", "enum": ["body"]}}]),
    }
    paths["/api/v1/health"] = {"get": {"summary": "is the platform up", "operationId": "health",
                                       "responses": {"200": {"description": "ok", "content": _json(DATA)}}}}
    paths["/api/v1/openapi.json"] = {"get": {"summary": "this spec", "operationId": "openapi",
                                             "responses": {"200": {"description": "the OpenAPI spec",
                                                                   "content": _json({"type": "object"})}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "werkbund local platform", "version": "1",
                 "description": "The control commands of the platform core over HTTP; docs/architecture.md"},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "the session token that login returns"}}},
    }
