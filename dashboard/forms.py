"""What the forms ask and how their answers are checked: pydantic models, the algorithms' own options.

The generic fields (name, quorum, rounds, privacy mode, DP target, ...) are pydantic models, so a
refused value is named with its field and shown beside it; the same models describe the JSON
endpoints in the OpenAPI spec (``api.py``). An algorithm's own options come from what it declares
(:func:`option_fields`, the one place that reads the declaration); each is checked by the
declaration's own ``Field.validate`` before the whole definition goes through the client's check
(``werkbund.client.definitions``) and the platform's.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field as Schema, ValidationError

# one honest sentence each (docs/privacy.md, algorithms/privacy/README.md)
PRIVACY_MODES = {
    1: ("Plain", "The aggregator sees each participant's model update (never its rows); an update can still "
                 "reveal something about the data it was trained on."),
    2: ("Secure aggregation", "Updates are masked so that the aggregator learns only their weighted sum and the "
                              "sample counts, never one participant's update, unless it colludes with enough "
                              "participants."),
    3: ("Homomorphic encryption", "Updates are encrypted (CKKS); the aggregator adds ciphertexts and learns only "
                                  "the decrypted mean, which two participants decrypt; CKKS adds a tiny numeric "
                                  "error."),
}
DP_DESCRIPTION = ("Differential privacy (DP-SGD): each participant clips and noises its training so that no one, "
                  "the aggregator and the final model's users included, can learn much about any single record; "
                  "a smaller epsilon is more private and costs accuracy. It protects records, not a company's "
                  "totals.")
STATUSES = ("CREATED", "STARTED", "COMPLETE", "FAILED")
TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USER_NAME = TASK_NAME


def _blank_is_none(value):
    return None if isinstance(value, str) and not value.strip() else value


Blank = BeforeValidator(_blank_is_none)  # an empty form field is an absent one
OptStr = Annotated[str | None, Blank]
OptInt = Annotated[int | None, Blank]
OptFloat = Annotated[float | None, Blank]
Kind = Literal["classification", "regression"]
OptKind = Annotated[Kind | None, Blank]
OptStatus = Annotated[Literal["CREATED", "STARTED", "COMPLETE", "FAILED"] | None, Blank]
OptScope = Annotated[Literal["all", "mine", "joined"] | None, Blank]


# ------------------------------------------------------------------ forms and queries
class LoginForm(BaseModel):
    user: str = Schema(min_length=1, max_length=64, description="your werkbund user name")
    password: str = Schema(min_length=1, max_length=1024, description="your password")


class RegisterForm(BaseModel):
    user: str = Schema(pattern=USER_NAME, description="a new user name: letters, digits, '.', '_' or '-'")
    org: str = Schema(min_length=1, max_length=200, description="your organisation, shown to others")
    password: str = Schema(min_length=8, max_length=1024, description="at least 8 characters")
    password2: str = Schema(description="the password again")


class TaskForm(BaseModel):
    """The generic part of the create-task form."""

    name: str = Schema(pattern=TASK_NAME, description="a unique task name")
    algorithm: str = Schema(min_length=1, max_length=64)
    description: OptStr = Schema(None, max_length=2000)
    quorum: int = Schema(2, ge=1, le=10000, description="participants needed before round 1 starts")
    rounds: int = Schema(5, ge=1, le=100000)
    max_participants: OptInt = Schema(None, ge=1, le=10000, description="default: the quorum")
    round_timeout: OptFloat = Schema(None, gt=0, le=7 * 86400, description="seconds to wait for updates")
    kind: OptKind = None
    pom: int = Schema(1, ge=1, le=3)
    dp: bool = False
    dp_epsilon: OptFloat = Schema(None, gt=0, lt=1000, description="the privacy budget epsilon")
    dp_delta: OptFloat = Schema(None, gt=0, lt=1)
    dp_l2_norm_clip: OptFloat = Schema(None, gt=0, lt=1e6)


class DatasetForm(BaseModel):
    name: str = Schema(pattern=TASK_NAME, description="a name for this dataset, yours only")
    path: str = Schema(min_length=1, max_length=4096, description="the file's absolute path on this machine")
    target: OptStr = Schema(None, max_length=200)
    features: OptStr = Schema(None, max_length=20000, description="comma-separated; default all but the target")
    kind: Kind = "classification"
    missing: Literal["drop", "mean", "error"] = "drop"


class TaskQuery(BaseModel):
    """Filters of the task list."""

    search: OptStr = Schema(None, max_length=200)
    status: OptStatus = None
    pom: OptInt = Schema(None, ge=1, le=3)
    algorithm: OptStr = Schema(None, max_length=64)
    scope: OptScope = None


def field_errors(error: ValidationError) -> dict[str, str]:
    """A pydantic error as {form field: message}, the first problem of each field."""
    found: dict[str, str] = {}
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem.get("loc") else "form"
        message = _friendly(problem)
        found.setdefault(name, message)
    return found


def _friendly(problem: dict) -> str:
    """pydantic's message in the words the rest of werkbund uses."""
    kind, ctx = problem.get("type", ""), problem.get("ctx") or {}
    words = {
        "string_pattern_mismatch": "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be above {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be below {ctx.get('lt')}",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "missing": "required",
        "string_too_short": "required" if ctx.get("min_length") == 1 else f"at least {ctx.get('min_length')} characters",
        "string_too_long": f"at most {ctx.get('max_length')} characters",
        "literal_error": f"must be one of {ctx.get('expected')}",
    }
    return words.get(kind) or problem.get("msg", "invalid value").removeprefix("Value error, ")


# ------------------------------------------------------------------ the algorithms' own options
@dataclass(frozen=True)
class OptionField:
    """One option of an algorithm as the form renders it."""

    name: str
    label: str
    input: str  # "number", "checkbox-like select" ("bool"), "select", "text", "json"
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    choices: tuple = ()
    help: str = ""
    declared: Any = None  # the registry's Field, when the algorithm declares one

    @property
    def default_text(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, (dict, list)):
            return json.dumps(self.default)
        return str(self.default)


GENERIC_OPTIONS = (
    OptionField("epochs", "Epochs", "number", 1, 1, 10000, "1", help="local epochs per round"),
    OptionField("batch_size", "Batch size", "number", 32, 1, None, "1", help="local mini-batch size"),
    OptionField("learning_rate", "Learning rate", "number", 0.001, None, None, "any", help="local learning rate"),
)
SKIPPED = {"dp"}  # rendered in a section of its own


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _option(field) -> OptionField:
    types = field.type if isinstance(field.type, tuple) else (field.type,)
    low = field.minimum if field.minimum is not None else field.exclusive_minimum
    high = field.maximum if field.maximum is not None else field.exclusive_maximum
    hint = " ".join(p for p in (field.help, f"({field.explain()})" if field.explain() else "") if p)
    if field.choices:
        return OptionField(field.name, _label(field.name), "select", field.default, choices=tuple(field.choices),
                           help=hint, declared=field)
    if types == (bool,):
        return OptionField(field.name, _label(field.name), "bool", field.default, help=hint, declared=field)
    if set(types) <= {int, float}:
        step = "1" if types == (int,) else "any"
        return OptionField(field.name, _label(field.name), "number", field.default, low, high, step, help=hint,
                           declared=field)
    if dict in types or list in types:
        return OptionField(field.name, _label(field.name), "json", field.default, help=hint + " (JSON)",
                           declared=field)
    return OptionField(field.name, _label(field.name), "text", field.default, help=hint, declared=field)


def option_fields(algorithm) -> list[OptionField]:
    """The options the form shows for an algorithm: what it declares (``Algorithm.fields``), else the
    generic training options every gradient-trained algorithm takes. The one place that decides."""
    declared = getattr(algorithm, "all_fields", None) or getattr(algorithm, "fields", None)
    if declared is None:
        return list(GENERIC_OPTIONS)
    return [_option(f) for f in declared if f.name not in SKIPPED]


def participant_option_fields(algorithm) -> list[OptionField]:
    return [_option(f) for f in getattr(algorithm, "participant_options", ()) or ()]


def parse_option(option: OptionField, text: str):
    """A form value as the option's type; ValueError with the reason."""
    text = text.strip()
    if option.input == "bool":
        if text not in ("true", "false"):
            raise ValueError("choose yes or no")
        return text == "true"
    if option.input == "number":
        declared = option.declared
        types = (declared.type if isinstance(declared.type, tuple) else (declared.type,)) if declared else (
            (int,) if option.step == "1" else (float,))
        if int in types and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if float in types:
            try:
                return float(text)
            except ValueError:
                pass
        raise ValueError("must be " + ("a whole number" if types == (int,) else "a number"))
    if option.input == "json":
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
        return text  # a plain string where the declaration takes one (e.g. a strategy's name)
    if option.input == "select":
        for choice in option.choices:
            if str(choice) == text:
                return choice
        raise ValueError("choose one of the listed values")
    return text


def read_options(options: list[OptionField], form, prefix: str) -> tuple[dict, dict[str, str]]:
    """The options given in a form (blank ones left out) and the errors, by form field name."""
    values, errors = {}, {}
    for option in options:
        key = f"{prefix}{option.name}"
        text = form.get(key, "")
        if not text.strip():
            continue
        try:
            value = parse_option(option, text)
            if option.declared is not None:
                option.declared.validate(value, {}, what="option")
        except ValueError as exc:  # DefinitionError is a ValueError
            errors[key] = _short(str(exc), option.name)
            continue
        values[option.name] = value
    return values, errors


def _short(message: str, name: str) -> str:
    """A declaration's message without the field's name in front (the label says it)."""
    return re.sub(rf"^(option|task definition field|participant option) '{re.escape(name)}':? ", "", message)


def field_of_message(message: str, names) -> str | None:
    """Which form field a platform or client message is about, if it names one."""
    quoted = re.search(r"field '(\w+)'", message)
    if quoted and quoted.group(1) in names:
        return quoted.group(1)
    if re.search(r"\bPOM \d|pom_options|\bpom\b", message):
        return "pom"
    if "'dp'" in message or "differential privacy" in message:
        return "dp"
    for name in names:
        if re.match(rf"^{re.escape(name)}\b", message):
            return name
    return None


def safe_next(target: str | None, default: str) -> str:
    """A redirect target inside this dashboard only (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default
