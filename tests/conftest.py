"""Shared fixtures: a real local platform process and a way to run the real `werkbund` CLI."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WERKBUND = str(Path(sys.executable).parent / "werkbund")
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333",
             "mallory": "mallory-secret-4"}


def quiet_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})
    env.pop("WERKBUND_PASSWORD", None)
    env.update(extra)
    return env


class Cli:
    """Runs `werkbund` as a separate process, as a user at a terminal would."""

    def __init__(self, url: str, home: Path, platform: str = "local"):
        self.url, self.home, self.platform = url, home, platform

    def env(self, user: str | None, password: str | None = None) -> dict:
        env = quiet_env(WERKBUND_URL=self.url, WERKBUND_HOME=str(self.home / (user or "anon")),
                        WERKBUND_PLATFORM=self.platform)
        if user:
            env["WERKBUND_USER"] = user
            env["WERKBUND_PASSWORD"] = password if password is not None else PASSWORDS[user]
        return env

    def run(self, user: str | None, *args: str, password: str | None = None, timeout: float = 120):
        return subprocess.run([WERKBUND, *args], env=self.env(user, password), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.home)

    def start(self, user: str, *args: str, log: Path):
        handle = open(log, "w")
        return subprocess.Popen([WERKBUND, *args], env=self.env(user), stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.home)


def start_local_platform(tmp: Path, db_url: str | None = None):
    """Start `werkbund local-platform` on a free port; return (process, url)."""
    log = tmp / "platform.log"
    args = [WERKBUND, "local-platform", "--port", "0"]
    if db_url:
        args += ["--db", db_url]
    proc = subprocess.Popen(args, env=quiet_env(WERKBUND_HOME=str(tmp / "platform-home")),
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc, line.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"local platform did not start: {line!r} {log.read_text()}")


@pytest.fixture(scope="module")
def local_platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("platform")
    proc, url = start_local_platform(tmp)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@contextlib.contextmanager
def running_platform(kind: str, tmp):
    """(platform kind, URL) of a platform started for a test: "local", "cloud-sqlite" or "cloud-postgres"."""
    if kind == "local":
        proc, url = start_local_platform(tmp)
        try:
            yield "local", url
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        return
    from support.cloud_support import cloud_platform

    with cloud_platform(tmp, kind.split("-")[1]) as url:
        yield "cloud", url


@pytest.fixture(scope="module", params=["local", pytest.param("cloud-sqlite", marks=pytest.mark.broker),
                                        pytest.param("cloud-postgres", marks=[pytest.mark.broker, pytest.mark.postgres])])
def platform_under_test(request, tmp_path_factory):
    """(platform kind, URL): the local platform, or the cloud platform on SQLite or PostgreSQL."""
    with running_platform(request.param, tmp_path_factory.mktemp(request.param)) as platform:
        yield platform


@pytest.fixture(scope="module")
def cli(platform_under_test, tmp_path_factory):
    kind, url = platform_under_test
    return Cli(url, tmp_path_factory.mktemp("users"), platform=kind)


# ------------------------------------------------------------------ markers that are checked
# What a test may need from this machine, and the markers that must say so (pyproject.toml declares
# them; `-m "not broker and not postgres"` then runs without a broker or PostgreSQL). The one place of
# the rule; checked when the suite is collected (pytest_collection_modifyitems below). Keys:
#   NAME        a fixture of the test, or a helper of the support modules (tests/support/cloud_support.py,
#               broker_node.py, tls_support.py, platform_data_support.py, process_federation.py)
#               that the test function, a fixture of its module or a function or class of its module
#               that they use names;
#   [VALUE]     a parameter (of a fixture or of parametrize) with this value;
#   SCHEME://   a parameter that is a URL of this scheme.
SERVICE_MARKERS = {
    "cloud_platform": ("broker",),
    "start_cloud_platform": ("broker",),
    "require_broker": ("broker",),
    "broker_node": ("broker",),
    "BrokerNode": ("broker",),
    "broker_cluster": ("broker",),
    "BrokerCluster": ("broker",),
    "tls_broker_node": ("broker",),
    "CloudFederation": ("broker",),
    "postgres_database": ("postgres",),
    "[cloud-sqlite]": ("broker",),
    "[cloud-postgres]": ("broker", "postgres"),
    "[postgresql]": ("postgres",),
    "postgresql+psycopg://": ("postgres",),
}


def _module_needs(path: Path) -> dict[str, set[str]]:
    """For each top-level function and class of a test module: the SERVICE_MARKERS names it reaches,
    through the functions and classes of the same module it names (lazy imports inside count)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    defs = {node.name: node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    named = {}
    for name, node in defs.items():
        names = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                names.add(sub.attr)
            elif isinstance(sub, ast.alias):  # an import inside: the helper's name, and the name it gets here
                names |= {sub.name.rpartition(".")[2], sub.asname or ""} - {""}
        named[name] = names
    reach = {}
    for name in defs:
        seen, todo, found = {name}, [name], set()
        while todo:
            names = named[todo.pop()]
            found |= names & SERVICE_MARKERS.keys()
            for other in names & defs.keys() - seen:
                seen.add(other)
                todo.append(other)
        reach[name] = found
    return reach


_REACH_BY_FILE: dict[Path, dict[str, set[str]]] = {}


def service_needs(item) -> dict[str, set[str]]:
    """The markers ``item`` needs, each with the reasons (SERVICE_MARKERS keys) why."""
    keys = set()
    path = Path(item.path)
    if path not in _REACH_BY_FILE:
        try:
            _REACH_BY_FILE[path] = _module_needs(path)
        except (OSError, SyntaxError):
            _REACH_BY_FILE[path] = {}
    reach = _REACH_BY_FILE[path]
    function = getattr(item, "function", None)
    roots = [getattr(item, "originalname", None) or getattr(function, "__name__", "")]
    if getattr(item, "cls", None) is not None:
        roots.append(item.cls.__name__)
    fixtures = set(getattr(item, "fixturenames", ()))
    roots += sorted(fixtures)
    for root in roots:
        keys |= reach.get(root, set())
    keys |= fixtures & SERVICE_MARKERS.keys()
    callspec = getattr(item, "callspec", None)
    for value in (callspec.params.values() if callspec else ()):
        if isinstance(value, str):
            keys |= {key for key in (f"[{value}]", value.split("//", 1)[0] + "//" if "://" in value else None)
                     if key in SERVICE_MARKERS}
    needs: dict[str, set[str]] = {}
    for key in keys:
        for marker in SERVICE_MARKERS[key]:
            needs.setdefault(marker, set()).add(key)
    return needs


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every collected test is checked
def pytest_collection_modifyitems(session, config, items):
    missing: dict[tuple[str, str], list] = {}  # (file, marker) -> [(test, reasons)]
    for item in items:
        marked = {mark.name for mark in item.iter_markers()}
        for marker, reasons in sorted(service_needs(item).items()):
            if marker not in marked:
                missing.setdefault((item.nodeid.split("::")[0], marker), []).append((item.nodeid, reasons))
    if missing:
        lines = []
        for (file, marker), tests in sorted(missing.items()):
            reasons = sorted(set().union(*(r for _, r in tests)))
            lines.append(f"{file}: {len(tests)} test(s) need the '{marker}' marker (they use {', '.join(reasons)}), "
                         f"e.g. {tests[0][0]}")
        raise pytest.UsageError(
            "tests that need a service lack its marker; add `pytestmark = pytest.mark.<marker>` to the module, or the "
            "mark on the test or on its parameter (the rule: SERVICE_MARKERS in tests/conftest.py):\n  "
            + "\n  ".join(lines))
    items[:] = heaviest_files_first(items)


# ------------------------------------------------------------------ the order of files
# On several workers (scripts/test.sh: pytest-xdist, each file on one worker, --no-loadscope-reorder) a
# run ends when its last file does, so the files that take longest go first and the short ones fill in
# after them. Seconds of each file on 4 workers (2026-12-06, `--durations=0`, setup and teardown counted);
# a file not named here keeps its place after these. Refresh when a file grows a lot.
HEAVIEST_FILES = {
    "e2e/test_crash_recovery.py": 581, "e2e/test_crash_recovery_privacy.py": 357, "e2e/test_pom.py": 328,
    "e2e/test_cli_end_to_end.py": 280, "e2e/test_dp.py": 197, "e2e/test_cloud_durability.py": 128,
    "e2e/test_notebooks.py": 115, "e2e/test_poisoning.py": 88, "unit/test_service.py": 78,
    "e2e/test_simulation.py": 78, "e2e/test_cloud_replicas.py": 76, "unit/test_engine.py": 69,
    "e2e/test_cloud_queue_bounds.py": 68, "e2e/test_ledger_keys.py": 64, "e2e/test_dashboard_flow.py": 62,
}


def heaviest_files_first(items: list) -> list:
    """``items`` with the files of HEAVIEST_FILES first, longest first; within a file the order stays."""
    def weight(item) -> float:
        relative = item.nodeid.split("::")[0].removeprefix("tests/")
        return -HEAVIEST_FILES.get(relative, 0)

    return sorted(items, key=weight)  # stable: the rest keep their order
