"""The dashboard on the cloud platform (a real RabbitMQ broker, a real `werkbund platform serve`):
register and log in, the task list, a k-means task created from the form, joined from the dashboard,
aggregated from the dashboard to COMPLETE, and its cluster scatter drawn in the browser."""
from __future__ import annotations

import re

import pytest

from support.cloud_support import cloud_platform
from conftest import PASSWORDS
from support.dashboard_support import (  # noqa: F401  (fixtures)
    RUN_TIMEOUT_MS, _expect_timeout, browser_type_launch_args, check_page, register_in_browser, shot,
    start_dashboard, stop,
)

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture(scope="module")
def cloud_board(tmp_path_factory):
    pytest.importorskip("playwright")
    tmp = tmp_path_factory.mktemp("dashboard-cloud")
    with cloud_platform(tmp) as url:
        board, base = start_dashboard(tmp, url, "cloud")
        try:
            yield {"url": url, "base": base, "tmp": tmp}
        finally:
            stop(board)


def test_a_kmeans_task_on_the_cloud_platform(cloud_board, browser):
    from playwright.sync_api import expect
    from sklearn.datasets import load_digits

    base = cloud_board["base"]
    alice = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    bob = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    alice.goto(f"{base}/login")
    expect(alice.get_by_text("the cloud platform at 127.0.0.1:5672").first).to_be_visible()
    register_in_browser(alice, base, "alice", "Acme", PASSWORDS["alice"])
    register_in_browser(bob, base, "bob", "Bobwerk", PASSWORDS["bob"])
    bob.get_by_role("button", name="Log out").click()  # and in again, with the password
    bob.get_by_label("User name").fill("bob")
    bob.get_by_label(re.compile(r"^Password\W*$")).fill("wrong-password")
    bob.get_by_role("button", name="Log in").click()
    expect(bob.locator("#password-error")).to_be_visible()
    bob.get_by_label(re.compile(r"^Password\W*$")).fill(PASSWORDS["bob"])
    bob.get_by_role("button", name="Log in").click()
    expect(bob).to_have_url(f"{base}/tasks")

    alice.get_by_role("link", name="New task").first.click()
    alice.get_by_label("Task name").fill("clusters-1")
    alice.get_by_label("Algorithm", exact=True).select_option("kmeans")
    expect(alice.locator("#opt-kmeans-clusters")).to_be_visible()
    expect(alice.get_by_label("Secure aggregation")).to_be_disabled()  # k-means declares POM 1 only
    alice.locator("#opt-kmeans-clusters").fill("3")
    alice.get_by_label("Quorum").fill("1")
    alice.get_by_label("Rounds").fill("2")
    alice.get_by_role("button", name="Create the task").click()
    expect(alice).to_have_url(f"{base}/tasks/clusters-1")

    bob.reload()
    expect(bob.locator("#task-table tbody tr", has_text="clusters-1")).to_contain_text("kmeans")
    shot(bob, "cloud-01-tasks")
    csv = cloud_board["tmp"] / "bob.csv"
    load_digits(as_frame=True).frame.iloc[:400].to_csv(csv, index=False)
    bob.goto(f"{base}/datasets?next=/tasks/clusters-1")
    bob.get_by_label(re.compile(r"^Name\W*$")).fill("plant-b")
    bob.get_by_label("File on this machine").fill(str(csv))
    bob.get_by_label("Target column").fill("target")
    bob.get_by_role("button", name="Register the dataset").click()
    expect(bob).to_have_url(f"{base}/tasks/clusters-1")  # back to the task it was registered for
    bob.get_by_role("button", name="Join and train").click()
    expect(bob.locator("#runs")).to_contain_text("participant")

    alice.reload()
    alice.get_by_role("button", name="Start the aggregator").click()
    expect(alice.locator("#task-status [data-status]")).to_have_attribute("data-status", "COMPLETE",
                                                                         timeout=RUN_TIMEOUT_MS)
    expect(alice.locator("#round-counter")).to_have_text(re.compile(r"Round [12] of 2"))
    expect(bob.locator("#task-status [data-status]")).to_have_attribute("data-status", "COMPLETE",
                                                                       timeout=RUN_TIMEOUT_MS)
    expect(bob.locator("#clusters-figure")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(bob.locator("#chart-clusters .scatterlayer .trace")).to_have_count(2)  # bob's rows, the centroids
    check_page(bob, "cloud-02-kmeans-complete")
