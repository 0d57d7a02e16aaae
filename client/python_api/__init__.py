"""The notebook-grade Python API of werkbund; ``import werkbund`` re-exports it.

- :mod:`.session`: ``connect``, ``register``, ``Session``, ``start_local_platform``;
- :mod:`.task`: ``Task`` (join, leave, delete, aggregate, participate, model, verify_ledger);
- :mod:`.runs`: ``Run``, the handle of a background run;
- :mod:`.results`: ``Result`` and ``FinalModel`` (DataFrames, figures, the loaded model);
- :mod:`.progress`: progress bars in Jupyter, on a terminal, or plain lines.

It drives the same engine as the CLI; the transport-level handles stay in ``werkbund.client.api``.
"""
from werkbund.algorithms.data.dataset import DataError
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.client.python_api.results import FinalModel, Result
from werkbund.client.python_api.runs import Run, RunStopped
from werkbund.client.python_api.session import (
    LocalPlatform, Session, algorithms, connect, register, start_local_platform,
)
from werkbund.client.python_api.task import Task
from werkbund.platform.errors import (
    AlgorithmNotInstalled, AlreadyJoined, AuthenticationFailed, InvalidInput, InvalidState, NotFound,
    PermissionDenied, TaskExists, TaskFull, TaskNotFound, Unavailable, UserExists, WerkbundError,
)

__all__ = [
    "AlgorithmNotInstalled", "AlreadyJoined", "AuthenticationFailed", "DataError", "FinalModel", "InvalidInput",
    "InvalidState",
    "LocalPlatform", "NotFound", "PermissionDenied", "Result", "Run", "RunStopped", "Session", "Task",
    "TaskEnded", "TaskExists", "TaskFailure", "TaskFull", "TaskNotFound", "Unavailable", "UserExists",
    "WerkbundError",
    "algorithms", "connect", "register", "start_local_platform",
]
