"""For the dashboard's browser tests: Debian's Chromium driven by pytest-playwright, a real
`werkbund dashboard` process, accessibility checks with axe-core, screenshots as artifacts.

The browser is the system's (`apt-get install chromium`, as .ci/run does), never one downloaded
at test time. Without it, or without playwright, the browser tests skip (and fail under CI=true).
Import the fixtures into a test module: ``from dashboard_support import browser_type_launch_args``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, WERKBUND, quiet_env

CHROMIUM = os.environ.get("WERKBUND_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("WERKBUND_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
EXPECT_TIMEOUT_MS = 10_000
RUN_TIMEOUT_MS = 240_000  # a whole 2-round task on a small machine, TensorFlow's start included


def unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments with Debian's Chromium, headless, without the sandbox
    (CI runs as root)."""
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"], "headless": True}


@pytest.fixture(autouse=True)
def _expect_timeout():
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)


def start_dashboard(tmp: Path, url: str, platform: str = "local", *extra: str):
    """Start `werkbund dashboard` on a free port; return (process, its URL)."""
    log = tmp / "dashboard.log"
    args = [WERKBUND, "dashboard", "--platform", platform, "--url", url, "--port", "0", *extra]
    env = quiet_env(WERKBUND_HOME=str(tmp / "dashboard-home"))
    for name in ("WERKBUND_USER", "WERKBUND_CREDENTIALS", "WERKBUND_PLATFORM", "WERKBUND_URL"):
        env.pop(name, None)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            stdin=subprocess.DEVNULL)
    deadline, line = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving on" in line:
            return proc, line.split("serving on ")[1].split()[0]
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"dashboard did not start: {line!r} {log.read_text()}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def shot(page, name: str) -> Path:
    """A full-page screenshot under test-artifacts/dashboard/ (ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page) -> list[str]:
    """axe-core's WCAG 2 A/AA violations on the page (axe.min.js as axe-playwright-python ships it)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                                            "wcag21aa", "best-practice"]},
                                       "resultTypes": ["violations"]})
    return [f"{v['id']} ({v['impact']}): {v['help']}: " + "; ".join(n["target"][0] for n in v["nodes"][:3])
            for v in results.response["violations"]]


UNLABELLED_JS = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => el.type !== 'hidden' && !el.closest('[hidden]'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id || el.outerHTML.slice(0, 60))"""


def check_page(page, name: str) -> None:
    """Every page of the flow: a screenshot, a label on every input, and no axe-core violation."""
    shot(page, name)
    assert page.evaluate(UNLABELLED_JS) == [], f"{name}: inputs without a label"
    violations = axe_violations(page)
    assert violations == [], f"{name}: accessibility violations:\n" + "\n".join(violations)


def register_in_browser(page, base: str, user: str, org: str, password: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/register")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Organisation").fill(org)
    page.get_by_label(re.compile(r"^Password\W*$")).fill(password)
    page.get_by_label("Password, again").fill(password)
    page.get_by_role("button", name="Register").click()
    expect(page).to_have_url(f"{base}/tasks")
    expect(page.locator(".user")).to_have_text(user)
