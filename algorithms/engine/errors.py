"""The engine's one error for a task that cannot go on, in a module of its own so that the round
engine, the aggregation layers (``algorithms/privacy/``) and the algorithms import it without
importing one another."""
from __future__ import annotations


class TaskFailure(RuntimeError):
    """The task cannot go on; the reason is recorded on the platform."""
