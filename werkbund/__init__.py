"""werkbund: train one model on data that none of the companies may share.

The Python API, for notebooks and scripts::

    import werkbund

    alice = werkbund.connect(url="http://127.0.0.1:5000", user="alice", password="...")
    task = alice.create_task("weld-1", algorithm="neural_network", quorum=2, rounds=5)
    result = task.aggregate()              # or task.aggregate(background=True) -> a Run handle
    result.history                         # a pandas DataFrame, one row per round

``help(werkbund.connect)``, ``help(werkbund.Session)``, ``help(werkbund.Task)``,
``help(werkbund.Run)`` and ``help(werkbund.Result)`` say the rest; ``docs/python-api.md`` walks
through it.
"""


def _map_the_core_namespace() -> None:
    """Make ``werkbund.platform`` importable from a source checkout (``pip install -e .``).

    The core's folder ``platform/`` has no ``__init__.py`` on purpose: a regular package of that
    name would shadow the standard library's ``platform`` for anyone running Python in the
    repository root. setuptools' editable finder resolves such a namespace folder only below a
    namespace parent, so below this regular package it is registered here, exactly as that finder
    would. An installed wheel has ``werkbund/platform/`` inside this folder and needs nothing.
    """
    import importlib.util
    import sys
    from importlib.machinery import ModuleSpec
    from pathlib import Path

    core = Path(__file__).resolve().parent.parent / "platform"
    if "werkbund.platform" in sys.modules or (Path(__file__).parent / "platform").is_dir():
        return
    if not (core / "commands.py").is_file():
        return
    spec = ModuleSpec("werkbund.platform", None, is_package=True)
    spec.submodule_search_locations = [str(core)]
    module = importlib.util.module_from_spec(spec)
    sys.modules["werkbund.platform"] = module
    setattr(sys.modules[__name__], "platform", module)


_map_the_core_namespace()

# The public names, imported on first use (PEP 562): `import werkbund.client.cli` (every `werkbund`
# command) and the platform's own processes then do not load the notebook API, pandas included.
_EXPORTS = {"simulate": "werkbund.simulation"}


def __getattr__(name: str):
    import importlib

    if name in __all__:
        module = importlib.import_module(_EXPORTS.get(name, "werkbund.client.python_api"))
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'werkbund' has no attribute {name!r}")


import werkbund.algorithms  # noqa: E402  the subpackage is bound first; the function below takes its name here


def algorithms(name: str | None = None):
    """The installed algorithms as their declarations say (see ``werkbund.client.python_api.session.algorithms``).

    Without ``name``: a DataFrame, one row per algorithm; with ``name``: that algorithm's fields.
    """
    import importlib

    return importlib.import_module("werkbund.client.python_api.session").algorithms(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AlgorithmNotInstalled", "AlreadyJoined", "AuthenticationFailed", "DataError", "FinalModel", "InvalidInput",
    "InvalidState", "LocalPlatform", "NotFound", "PermissionDenied", "Result", "Run", "RunStopped", "Session",
    "Task", "TaskEnded", "TaskExists", "TaskFailure", "TaskFull", "TaskNotFound", "Unavailable", "UserExists",
    "WerkbundError", "algorithms", "connect", "register", "simulate", "start_local_platform",
]
