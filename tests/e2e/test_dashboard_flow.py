"""The MUSKETEER flow in a real browser (Debian's Chromium, headless) against a real local platform
and a real `werkbund dashboard` process: two users register, one creates a task from the form
(after a refused value is shown beside its field), the other registers a dataset and joins from the
dashboard while a third joins from the CLI, the aggregator starts from the dashboard, and the round
counter and the charts advance to COMPLETE without a reload; the model downloads and the ledger
verifies. Every page is screenshotted, checked by axe-core and for a label on every input; the login
and the way to a task are walked with the keyboard alone.
"""
from __future__ import annotations

import re

import pytest

from conftest import PASSWORDS, Cli, start_local_platform
from support.dashboard_support import (  # noqa: F401  (fixtures)
    RUN_TIMEOUT_MS, _expect_timeout, browser_type_launch_args, check_page, register_in_browser, shot,
    start_dashboard, stop,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("playwright")
    tmp = tmp_path_factory.mktemp("dashboard")
    platform, url = start_local_platform(tmp)
    board, base = start_dashboard(tmp, url)
    try:
        yield {"url": url, "base": base, "tmp": tmp, "cli": Cli(url, tmp_path_factory.mktemp("cli-users"))}
    finally:
        stop(board)
        stop(platform)


def _digits_csv(path, part: int, parts: int):
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.rename(columns={"target": "digit"})
    frame.iloc[part::parts].to_csv(path, index=False)
    return path


def test_the_musketeer_flow_in_a_browser(setup, browser):
    from playwright.sync_api import expect

    base, cli = setup["base"], setup["cli"]
    alice = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True).new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()

    # ---------------------------------------------------------------- register, log in
    alice.goto(f"{base}/tasks")  # not logged in: the login page, which names the platform
    expect(alice).to_have_url(re.compile(r"/login\?next=/tasks$"))
    expect(alice.get_by_text(setup["url"]).first).to_be_visible()
    check_page(alice, "01-login")
    alice.goto(f"{base}/register")
    check_page(alice, "02-register")
    register_in_browser(alice, base, "alice", "Acme <Werke> & Co", PASSWORDS["alice"])
    register_in_browser(bob, base, "bob", "Bobwerk", PASSWORDS["bob"])
    assert cli.run("carol", "register", "--org", "Carol AG").returncode == 0

    # ---------------------------------------------------------------- create a task from the form
    alice.get_by_role("link", name="New task").first.click()
    expect(alice.get_by_role("heading", name="New task")).to_be_visible()
    check_page(alice, "03-task-new")
    alice.get_by_label("Task name").fill("weld-1")
    alice.get_by_label("Description").fill("weld quality <script>window.pwned = 1</script>")
    alice.get_by_label("Algorithm", exact=True).select_option("neural_network")
    alice.locator("#opt-neural_network-epochs").fill("1")
    alice.get_by_label("Quorum").fill("0")  # refused: shown beside the quorum
    alice.get_by_label("Rounds").fill("2")
    alice.get_by_label("Secure aggregation").check()
    alice.get_by_role("button", name="Create the task").click()
    quorum = alice.get_by_label("Quorum")
    expect(quorum).to_have_attribute("aria-invalid", "true")
    expect(alice.locator("#quorum-error")).to_have_text(re.compile("at least 1"))
    expect(quorum).to_have_attribute("aria-describedby", re.compile("quorum-error"))
    expect(alice.locator(".field-error")).to_have_count(1)
    expect(alice.get_by_label("Task name")).to_have_value("weld-1")  # the rest is kept
    check_page(alice, "04-task-new-error")
    quorum.fill("2")
    alice.get_by_label("Plain").check()
    alice.get_by_role("button", name="Create the task").click()
    expect(alice).to_have_url(f"{base}/tasks/weld-1")
    expect(alice.locator("#round-counter")).to_have_text("Round 0 of 2")
    assert alice.evaluate("window.pwned") is None  # the description is text, never markup
    expect(alice.locator(".description")).to_contain_text("<script>")

    # ---------------------------------------------------------------- the task list, its filters
    bob.get_by_role("link", name="Tasks").first.click()
    row = bob.locator("#task-table tbody tr", has_text="weld-1")
    expect(row).to_contain_text("Acme <Werke> & Co")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "CREATED")
    check_page(bob, "05-tasks")
    bob.get_by_label("Search").fill("welding robots")
    bob.get_by_role("button", name="Filter").click()
    expect(bob.locator("#task-table")).to_have_count(0)
    bob.get_by_label("Search").fill("weld quality")
    bob.get_by_label("Status").select_option("CREATED")
    bob.get_by_label("Privacy mode").select_option("1")
    bob.get_by_role("button", name="Filter").click()
    expect(bob.locator("#task-table tbody tr")).to_have_count(1)
    bob.get_by_label("Whose").select_option("joined")
    bob.get_by_role("button", name="Filter").click()
    expect(bob.locator("#task-table")).to_have_count(0)

    # ---------------------------------------------------------------- bob's dataset, and joining with it
    csv = _digits_csv(setup["tmp"] / "bob-plant.csv", 0, 2)
    bob.get_by_role("link", name="Datasets").first.click()
    bob.get_by_label(re.compile(r"^Name\W*$")).fill("plant-b")
    bob.get_by_label("File on this machine").fill(str(csv))
    bob.get_by_label("Target column").fill("no_such_column")
    bob.get_by_role("button", name="Register the dataset").click()
    expect(bob.locator("#target-error")).to_contain_text("no_such_column")
    bob.get_by_label("Target column").fill("digit")
    bob.get_by_role("button", name="Register the dataset").click()
    expect(bob).to_have_url(f"{base}/datasets/plant-b")
    expect(bob.locator("#features li")).to_have_count(64)
    expect(bob.get_by_text("899", exact=True)).to_be_visible()
    check_page(bob, "06-dataset")
    bob.get_by_role("link", name="All datasets").click()
    check_page(bob, "07-datasets")
    bob.goto(f"{base}/tasks/weld-1")
    check_page(bob, "08-task-join")
    bob.get_by_label("Dataset").select_option("plant-b")
    bob.get_by_role("button", name="Join and train").click()
    expect(bob.locator("#runs")).to_contain_text("participant: running")

    # carol joins from the CLI, on her own machine
    assert cli.run("carol", "join", "--task", "weld-1", "--data", "builtin:digits", "--shard", "2/2").returncode == 0
    carol = cli.start("carol", "participate", "--task", "weld-1", log=setup["tmp"] / "carol.log")

    # ---------------------------------------------------------------- the aggregator, live
    alice.reload()
    expect(alice.locator("#joined-counter")).to_contain_text("2 joined of quorum 2")
    expect(alice.locator("#members tbody tr")).to_have_count(2)
    alice.get_by_role("button", name="Start the aggregator").click()
    expect(alice.locator("#runs")).to_contain_text("aggregator")
    alice.evaluate("window.__sameDocument = true")  # gone if the page reloads
    expect(alice.locator("#task-status [data-status]")).to_have_attribute("data-status", "STARTED",
                                                                         timeout=RUN_TIMEOUT_MS)
    expect(alice.locator("#round-counter")).to_have_text(re.compile(r"Round [12] of 2"), timeout=RUN_TIMEOUT_MS)
    expect(alice.locator("#chart-metric")).to_have_attribute("data-points", re.compile("[12]"),
                                                           timeout=RUN_TIMEOUT_MS)
    shot(alice, "09-task-running")
    expect(alice.locator("#task-status [data-status]")).to_have_attribute("data-status", "COMPLETE",
                                                                         timeout=RUN_TIMEOUT_MS)
    expect(alice.locator("#round-counter")).to_have_text("Round 2 of 2")
    expect(alice.locator("#chart-metric")).to_have_attribute("data-points", "2")
    expect(alice.locator("#chart-metric .scatterlayer .trace")).to_have_count(3)  # combined, bob, carol
    expect(alice.locator("#confusion-figure")).to_be_visible()
    expect(alice.locator("#rounds tbody tr")).to_have_count(2)
    expect(alice.locator("#members tbody")).to_contain_text("reported")
    assert alice.evaluate("window.__sameDocument") is True  # all of it without a reload
    check_page(alice, "10-task-complete")

    # ---------------------------------------------------------------- the model, the ledger
    with alice.expect_download() as download:
        alice.get_by_role("link", name="Download the model").click()
    assert download.value.suggested_filename == "weld-1.keras"
    with open(download.value.path(), "rb") as handle:
        assert handle.read(2) == b"PK"
    alice.get_by_role("button", name="Verify the ledger").click()
    expect(alice.locator("#ledger-verdict")).to_contain_text("Verified")
    expect(alice.locator("#ledger-entries tbody tr").last).to_contain_text("task_finished")
    shot(alice, "11-ledger")
    expect(bob.locator("#task-status [data-status]")).to_have_attribute("data-status", "COMPLETE",
                                                                       timeout=RUN_TIMEOUT_MS)
    expect(bob.locator("#runs")).to_contain_text("participant: done")
    shot(bob, "12-task-complete-participant")
    assert carol.wait(timeout=120) == 0

    # ---------------------------------------------------------------- one user never sees another's datasets
    alice.goto(f"{base}/datasets")
    expect(alice.get_by_text("plant-b")).to_have_count(0)
    response = alice.goto(f"{base}/datasets/plant-b")
    assert response.status == 404
    assert alice.request.get(f"{base}/api/datasets").json() == {"datasets": []}
    assert [d["name"] for d in bob.request.get(f"{base}/api/datasets").json()["datasets"]] == ["plant-b"]


def test_keyboard_alone_logs_in_and_reaches_a_task(setup, browser):
    from playwright.sync_api import expect

    base = setup["base"]
    page = browser.new_context().new_page()
    page.goto(f"{base}/login")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type("bob")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORDS["bob"])
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/tasks(#main)?$"))
    # from the list to the task: skip link, then the focusable things in order, until the task's link
    page.goto(f"{base}/tasks")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    page.keyboard.press("Enter")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "weld-1":
            break
    expect(page.get_by_role("link", name="weld-1")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/tasks/weld-1")
    expect(page.get_by_role("heading", name=re.compile("weld-1"))).to_be_visible()
    shot(page, "13-keyboard")
