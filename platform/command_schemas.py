"""The parameters of every control command, defined once as pydantic models.

``platform/commands.py`` validates each request against its command's model before the core sees
it, on every front (HTTP, AMQP, in-process), and ``local_platform/openapi.py`` builds the local
platform's OpenAPI spec from the same models. Types are strict (no ``"3"`` for 3, no ``true`` for
1), strings, lists and objects are bounded, integers lie within JSON's exact range (±(2**53 - 1)).

Bodies are parsed by :func:`parse_json` and checked by :func:`check_json` whatever their command:
at most :data:`MAX_JSON_DEPTH` levels of nesting (a body nested 1,000 deep is refused before any
recursion can fail), no integer outside ±(2**53 - 1) (the ledger's canonical JSON, RFC 8785, cannot
write one), no lone surrogate or NUL in a string (no database stores them).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from werkbund.platform.errors import InvalidInput
from werkbund.platform.tasks import STATUSES

MAX_JSON_DEPTH = 64
MAX_SAFE_INTEGER = 2**53 - 1  # JSON numbers are IEEE doubles: beyond this, integers are not exact (RFC 8785)
MAX_LIST_ITEMS = 100_000

Count = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]
Name = Annotated[StrictStr, Field(max_length=256)]  # a user or task name; the core checks its form
Text = Annotated[StrictStr, Field(max_length=10_000)]
Key = Annotated[StrictStr, Field(max_length=256, description="base64 of a raw 32-byte Ed25519 public key")]
Signature = Annotated[StrictStr, Field(max_length=512, description="base64 of a 64-byte Ed25519 signature")]
JsonObject = Annotated[dict[StrictStr, Any], Field(max_length=MAX_LIST_ITEMS)]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
Column = Annotated[StrictStr, Field(max_length=1000)]  # a column of a participant's data


class Params(BaseModel):
    """Base of every command's parameters: strict types, no parameter it does not name."""

    model_config = ConfigDict(strict=True, extra="forbid")


class NoParams(Params):
    pass


class TaskParams(Params):
    task: Name


class CreateTaskParams(TaskParams):
    definition: JsonObject = Field(description="the task definition (docs/task-definitions.md)")


class ListTasksParams(Params):
    status: Literal[STATUSES] | None = None
    creator: Name | None = None
    algorithm: Name | None = None
    search: Annotated[StrictStr, Field(max_length=200)] | None = None


class DataSchema(BaseModel):
    """What a participant tells of its local data when it joins: never the data itself."""

    model_config = ConfigDict(strict=True, extra="allow")
    kind: Literal["classification", "regression"] | None = None
    features: Annotated[list[Column], Field(max_length=MAX_LIST_ITEMS)] | None = None
    target: Column | None = None
    classes: Annotated[list[Scalar], Field(max_length=MAX_LIST_ITEMS)] | None = None
    n_samples: Count | None = None


class JoinTaskParams(TaskParams):
    schema_: DataSchema | None = Field(None, alias="schema")


Names = Annotated[list[Name], Field(max_length=MAX_LIST_ITEMS, strict=False)]  # a tuple from Python is fine


class RoundRecordFields(Params):
    """A round's record: who reported, who was rejected (and why), who was missing, its metrics."""
    number: Count
    reported: Names = ()
    rejected: Annotated[dict[Name, Any], Field(max_length=MAX_LIST_ITEMS)] | None = None
    missing: Names = ()
    metrics: JsonObject | None = None


class RecordRoundParams(RoundRecordFields, TaskParams):
    pass


class FinishTaskParams(TaskParams):
    reason: Text | None = None


class FailTaskParams(TaskParams):
    reason: Text


class PublicKeyParams(Params):
    public_key: Key


class UserParams(Params):
    user: Name


class LedgerAppendParams(TaskParams):
    statement: JsonObject | None = Field(
        None, description="a v2 statement (an entry without seq and prev): the log sequences it")
    entry: JsonObject | None = Field(None, description="a v1 entry, signed with the seq and prev of the head")
    signature: Signature


class LedgerEntriesParams(TaskParams):
    start: Count = 0
    end: Count | None = None


class LedgerCheckpointParams(TaskParams):
    size: Count | None = None


class LedgerInclusionParams(TaskParams):
    seq: Count
    size: Count | None = None


class LedgerConsistencyParams(TaskParams):
    old_size: Count
    new_size: Count | None = None


class LedgerCosignParams(TaskParams):
    size: Count
    signature: Signature


class Cosignature(Params):
    size: Count
    signature: Signature


class LedgerAuditParams(TaskParams):
    seqs: Annotated[list[Count], Field(max_length=MAX_LIST_ITEMS, strict=False,
                                       description="your entries to prove included")] = Field(default_factory=list)
    old_size: Count | None = Field(None, description="the size of the checkpoint you verified last")
    cosign: Cosignature | None = Field(None, description="your cosignature of that checkpoint")


class SignedStatement(Params):
    statement: JsonObject = Field(description="a v2 statement, signed by its author (you or a member)")
    signature: Signature


class MemberCosignature(Cosignature):
    member: Name


class RelayAudit(Params):
    seqs: Annotated[list[Count], Field(max_length=MAX_LIST_ITEMS, strict=False,
                                       description="entries to prove included in the new checkpoint")] = ()
    old_sizes: Annotated[list[Count], Field(max_length=MAX_LIST_ITEMS, strict=False,
                                            description="checkpoint sizes to prove it consistent with")] = ()


class LedgerRelayParams(TaskParams):
    items: Annotated[list[SignedStatement], Field(max_length=MAX_LIST_ITEMS, strict=False)] = ()
    cosigns: Annotated[list[MemberCosignature], Field(max_length=MAX_LIST_ITEMS, strict=False)] = ()
    audit: RelayAudit | None = Field(None, description="sign the head covering the log and prove it")
    record: RoundRecordFields | None = Field(
        None, description="a round's record, stored with the statements in one transaction (as record_round)")


class SignedEntry(Params):
    entry: JsonObject
    signature: Signature


class RotateKeyParams(Params):
    public_key: Key
    entries: Annotated[list[SignedEntry], Field(max_length=MAX_LIST_ITEMS, strict=False)]
    statement_signature: Signature | None = Field(
        None, description="the old key's signature of the key statement (needed when you are in no task)")


class RevokeKeyParams(Params):
    reason: Annotated[StrictStr, Field(max_length=500)] = ""
    entries: Annotated[list[SignedEntry], Field(max_length=MAX_LIST_ITEMS, strict=False)] = Field(
        default_factory=list, description="key_revoked entries signed with the key revoked, one per task log")
    statement_signature: Signature | None = Field(
        None, description="the revoked key's signature of the key statement (needed when you are in no task)")


class KeyHistoryParams(Params):
    user: Name | None = None


class RegisterParams(Params):
    user: Name
    password: Annotated[StrictStr, Field(max_length=1024)]
    org: Annotated[StrictStr, Field(max_length=1024)]
    public_key: Key | None = None


class LoginParams(Params):
    user: Name
    password: Annotated[StrictStr, Field(max_length=1024)]


# the model of each command's parameters; commands.py maps the same names onto the core
PARAMS: dict[str, type[Params]] = {
    "whoami": NoParams,
    "create_task": CreateTaskParams,
    "list_tasks": ListTasksParams,
    "task_info": TaskParams,
    "delete_task": TaskParams,
    "join_task": JoinTaskParams,
    "leave_task": TaskParams,
    "participants": TaskParams,
    "start_task": TaskParams,
    "record_round": RecordRoundParams,
    "rounds": TaskParams,
    "finish_task": FinishTaskParams,
    "fail_task": FailTaskParams,
    "transfer_token": TaskParams,
    "set_identity_key": PublicKeyParams,
    "identity_key": UserParams,
    "ledger_append": LedgerAppendParams,
    "ledger_head": TaskParams,
    "ledger_entries": LedgerEntriesParams,
    "ledger_checkpoint": LedgerCheckpointParams,
    "ledger_inclusion": LedgerInclusionParams,
    "ledger_consistency": LedgerConsistencyParams,
    "ledger_cosign": LedgerCosignParams,
    "ledger_audit": LedgerAuditParams,
    "ledger_relay": LedgerRelayParams,
    "ledger_keys": TaskParams,
    "ledger_bundle": TaskParams,
    "ledger_key_logs": NoParams,
    "rotate_identity_key": RotateKeyParams,
    "revoke_identity_key": RevokeKeyParams,
    "key_history": KeyHistoryParams,
}
PUBLIC_PARAMS: dict[str, type[Params]] = {"register": RegisterParams, "login": LoginParams}


def validate_params(command: str, model: type[Params], params) -> dict:
    """The parameters as the core takes them (only those given), or InvalidInput naming the first problem."""
    if not isinstance(params, dict):
        raise InvalidInput("command parameters must be a JSON object")
    check_json(params, f"{command}: parameter")
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput(_message(command, exc)) from None
    return validated.model_dump(by_alias=True, exclude_unset=True)


def _message(command: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        return f"command {command!r} needs {', '.join(missing)}"
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
    if unknown:
        return f"command {command!r} does not take {', '.join(unknown)}"
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "parameters"
    message = first["msg"][:1].lower() + first["msg"][1:]
    return f"{command}: parameter {where}: {message}, not {_json_type(first['input'])}"


def _json_type(value) -> str:
    """What a value is, in JSON's words (the value itself only when it is a short number)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    if isinstance(value, (int, float)):
        return f"{'an integer' if isinstance(value, int) else 'a number'} ({value!r})"
    for kind, name in ((str, "a string"), (dict, "an object"), ((list, tuple), "a list")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


# -- any JSON body ------------------------------------------------------------------------------


class _TooLarge(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > 4000:  # Python refuses to convert longer ones; check_json names the parameter of the rest
        raise _TooLarge(f"the integer {text[:20]}... lies outside ±(2**53 - 1) (JSON's exact range)")
    return int(text)


def parse_json(raw: bytes | str, what: str = "the request body"):
    """Parse JSON text; empty text is ``{}``. Nesting too deep for Python's parser is refused as such
    (:func:`check_json` then bounds the depth, the integers and the strings of what was parsed)."""
    if not raw:
        return {}
    try:
        return json.loads(raw, parse_int=_parse_int)
    except _TooLarge as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply: at most {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{what} is not valid JSON") from None


def check_json(value, what: str = "parameter") -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH`, integers beyond ±(2**53 - 1) and strings with a
    lone surrogate or NUL anywhere in the JSON object ``value``; the message names where."""
    if not _fine(value, 0):  # (the walk, which keeps every value's path for its message, is slower)
        _walk(value, what)


def _walk(value, what: str) -> None:
    """:func:`check_json`'s refusals, each naming the place of what it refuses."""
    stack = [(value, 0, None)]  # (item, depth, path: None or (parent path, key or index))
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInput(f"{_where(what, path)} is nested too deeply: at most {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                if isinstance(key, str):
                    _check_str(key, what, (path, key))
                stack.append((child, depth + 1, (path, key)))
        elif isinstance(item, (list, tuple)):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInput(f"{_where(what, path)} is nested too deeply: at most {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1, (path, i)) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_str(item, what, path)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise InvalidInput(f"{_where(what, path)}: the integer {item} lies outside ±(2**53 - 1) "
                                   "(JSON's exact range)")


def _fine(value, depth: int) -> bool:
    """True when :func:`check_json` has nothing to refuse in ``value``; False when it may have (and for
    anything but plain JSON types: the walk decides)."""
    kind = type(value)
    if kind is dict:
        if depth >= MAX_JSON_DEPTH:
            return False
        for key, item in value.items():
            if (type(key) is str and not _fine_str(key)) or not _fine(item, depth + 1):
                return False
        return True
    if kind is list:
        if depth >= MAX_JSON_DEPTH:
            return False
        for item in value:  # (a list of numbers, a confusion matrix's row: no call per number)
            kind = type(item)
            if kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    return False
            elif kind is not float and kind is not bool and item is not None and not _fine(item, depth + 1):
                return False
        return True
    if kind is str:
        return _fine_str(value)
    if kind is int:
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    return kind is float or kind is bool or value is None


def _fine_str(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(what: str, path) -> str:
    parts = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return f"{what} {''.join(reversed(parts)).lstrip('.')}" if parts else what


def _check_str(text: str, what: str, path) -> None:
    if "\x00" in text:
        raise InvalidInput(f"{_where(what, path)}: a text may not hold a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{_where(what, path)}: a text may not hold a lone surrogate "
                               "(\\ud800-\\udfff)") from None
