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
    from cloud_support import cloud_platform

    with cloud_platform(tmp, kind.split("-")[1]) as url:
        yield "cloud", url


@pytest.fixture(scope="module", params=["local", "cloud-sqlite", "cloud-postgres"])
def platform_under_test(request, tmp_path_factory):
    """(platform kind, URL): the local platform, or the cloud platform on SQLite or PostgreSQL."""
    with running_platform(request.param, tmp_path_factory.mktemp(request.param)) as platform:
        yield platform


@pytest.fixture(scope="module")
def cli(platform_under_test, tmp_path_factory):
    kind, url = platform_under_test
    return Cli(url, tmp_path_factory.mktemp("users"), platform=kind)
