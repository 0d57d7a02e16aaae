"""Typed errors a user can cause. Every front maps them the same way.

Each error has a stable ``code`` (used in RPC replies and JSON bodies) and an
HTTP status for the Flask front. Clients turn a code back into the same class,
so ``except TaskNotFound`` works whatever the transport was.
"""
from __future__ import annotations


class WerkbundError(Exception):
    """Base class of every error a user can cause."""

    code = "error"
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class InvalidInput(WerkbundError):
    code = "invalid_input"
    http_status = 400


class AlgorithmNotInstalled(InvalidInput):
    """The task's algorithm is not installed where the code runs (raised by clients; the message names
    the distribution to install)."""

    code = "algorithm_not_installed"


class AuthenticationFailed(WerkbundError):
    code = "authentication_failed"
    http_status = 401


class PermissionDenied(WerkbundError):
    code = "permission_denied"
    http_status = 403


class NotFound(WerkbundError):
    code = "not_found"
    http_status = 404


class UserNotFound(NotFound):
    code = "user_not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(WerkbundError):
    code = "conflict"
    http_status = 409

    @classmethod
    def from_wire(cls, message: str, data: dict) -> "Conflict":
        if cls is Conflict and "head" in data:  # a moved ledger head, with where the log ends now
            return LedgerHeadMoved.from_wire(message, data)
        return cls(message)


class LedgerHeadMoved(Conflict):
    """Another entry was appended first. ``head`` ({"size", "prev"}) is where the log now ends, so the
    author signs again there at once, with no extra request and no sleep. On the wire it is a
    ``conflict`` with a ``head`` beside the message, so clients that know no ``head`` still retry."""

    code = "conflict"

    def __init__(self, message: str, head: dict | None = None):
        super().__init__(message)
        self.head = head

    def to_dict(self) -> dict:
        return {**super().to_dict(), **({"head": self.head} if self.head else {})}

    @classmethod
    def from_wire(cls, message: str, data: dict) -> "LedgerHeadMoved":  # noqa: D102
        head = data.get("head")
        ok = (isinstance(head, dict) and isinstance(head.get("size"), int) and not isinstance(head["size"], bool)
              and head["size"] >= 0 and isinstance(head.get("prev"), str))
        return cls(message, {"size": head["size"], "prev": head["prev"]} if ok else None)


class UserExists(Conflict):
    code = "user_exists"


class TaskExists(Conflict):
    code = "task_exists"


class AlreadyJoined(Conflict):
    code = "already_joined"


class TaskFull(Conflict):
    code = "task_full"


class InvalidState(Conflict):
    code = "invalid_state"


class SchemaMismatch(Conflict):
    code = "schema_mismatch"


class PayloadTooLarge(WerkbundError):
    code = "payload_too_large"
    http_status = 413


class InboxFull(WerkbundError):
    """A sender has as many messages waiting in one inbox as it may; it sends again once they are read."""

    code = "inbox_full"
    http_status = 429


class Unavailable(WerkbundError):
    """The platform cannot be reached (not a user's mistake, but still no traceback)."""

    code = "unavailable"
    http_status = 503


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


ERRORS_BY_CODE: dict = {}
for _cls in [WerkbundError, *_all_subclasses(WerkbundError)]:
    ERRORS_BY_CODE.setdefault(_cls.code, _cls)  # a subclass sharing its parent's code (LedgerHeadMoved) is no entry


def error_from_dict(data: dict) -> WerkbundError:
    """Rebuild a typed error from its wire form ``{"code": ..., "message": ...}``."""
    cls = ERRORS_BY_CODE.get(data.get("code"), WerkbundError)
    message = str(data.get("message", "unknown error"))
    return cls.from_wire(message, data) if hasattr(cls, "from_wire") else cls(message)
