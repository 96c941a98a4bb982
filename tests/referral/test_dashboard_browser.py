"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

A referral and three app servers; the test logs in, sees three passing
servers, kills one with SIGKILL and sees it critical within 3 s, drains
another with its button (and the confirmation), switches to the dark theme,
finds no console error and saves screenshots (``test-artifacts/``, or the
folder named by ``AFFINITY_TEST_ARTIFACTS``). Without Playwright or a
``chromium`` on PATH it is skipped with a message saying so; ``scripts/test-browser``
installs both and runs it, failing instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from affinity.testing import Deployment, wait_until

HOW = "run scripts/test-browser (apt-get install chromium; pip install playwright)"
CHROMIUM = shutil.which("chromium")
if os.environ.get("AFFINITY_REQUIRE_BROWSER") == "1":  # scripts/test-browser: no skipping
    import playwright.sync_api as sync_api

    assert CHROMIUM is not None, f"no chromium on PATH: {HOW}"
else:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason=f"Playwright is not installed: {HOW}"
    )
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium on PATH: {HOW}")

ARTIFACTS = Path(
    os.environ.get("AFFINITY_TEST_ARTIFACTS")
    or Path(__file__).resolve().parents[2] / "test-artifacts"
)
NOTHING = "\N{EN DASH}"  # what the page shows for a figure it does not have yet
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Deployment]:
    with Deployment(tmp_path, health="interval = 0.25") as d:
        d.start_referral()
        for server_id in ("s1", "s2", "s3"):
            d.start_server(server_id, wait=False)
        for server_id in ("s1", "s2", "s3"):
            d.wait_http(
                d.server_urls[server_id] + "/.well-known/affinity/health", d.servers[server_id]
            )
        wait_until(lambda: d.assignable() == {"s1", "s2", "s3"}, 20, 0.05, "three servers")
        yield d


@pytest.fixture
def traffic(fleet: Deployment) -> Iterator[None]:
    """Clients asking the referral in the background (new ones and returning ones) and
    using their servers, so that rates, sparklines and loads show something; bounded in
    count and time. A server that fails (one is killed) is the client's problem only."""
    stop = threading.Event()

    def ask() -> None:
        deadline = time.monotonic() + 60
        token = None
        with fleet.client(base_url=fleet.referral_url) as c:
            for i in range(20_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                headers = {"Affinity-Token": token} if token and i % 5 else {}
                r = c.get("/v1/assign", headers=headers)
                if r.status_code == 200:
                    token = r.json()["token"]
                    if i % 3 == 0:  # now and then a client uses its server: active clients
                        with contextlib.suppress(httpx.HTTPError):  # s2 is killed
                            c.get(
                                r.json()["server"]["url"] + "/", headers={"Affinity-Token": token}
                            )
                stop.wait(0.01)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    yield
    stop.set()
    worker.join(10)


@pytest.fixture
def page(fleet: Deployment) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The deployment's own CA is not in the browser's store: trust is not under test.
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1200, "height": 820}
            )
            yield context.new_page()
        finally:
            browser.close()


def row(page: Any, server_id: str) -> Any:
    return page.locator(f'#servers tr[data-server="{server_id}"]')


@pytest.mark.timeout(120)
def test_dashboard_shows_a_failure_and_drains_a_server(
    fleet: Deployment, traffic: None, page: Any
) -> None:
    expect = sync_api.expect
    problems: list[str] = []
    requested: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))

    page.goto(fleet.referral_url + "/dashboard")
    expect(page.locator("#token")).to_be_visible()
    page.fill("#token", fleet.admin_token)
    page.click("#login")
    page.wait_for_url(fleet.referral_url + "/dashboard")
    expect(page.locator("#servers tbody tr")).to_have_count(3)
    for server_id in ("s1", "s2", "s3"):
        expect(row(page, server_id).locator(".health .badge").first).to_have_text("passing")

    fleet.servers["s2"].signal(signal.SIGKILL)
    expect(row(page, "s2").locator(".health .badge").first).to_have_text("critical", timeout=3000)
    expect(row(page, "s2").locator(".failure")).not_to_have_text(NOTHING)

    row(page, "s3").get_by_role("button", name="Drain").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("Drain s3?")
    page.click("#confirm-ok")
    expect(row(page, "s3").locator(".health")).to_contain_text("draining")
    expect(row(page, "s3").get_by_role("button", name="Resume")).to_be_visible()
    assert fleet.assignable() == {"s1"}

    expect(page.locator("#rate")).not_to_have_text(NOTHING)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-light.png", full_page=True)
    page.click("#theme")  # auto -> light
    expect(page.locator("body")).to_have_css("background-color", "rgb(246, 247, 249)")
    page.click("#theme")  # light -> dark
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.locator("body")).to_have_css("background-color", "rgb(18, 21, 27)")
    page.screenshot(path=ARTIFACTS / "dashboard-dark.png", full_page=True)

    assert problems == []
    assert not [url for url in requested if fleet.admin_token in url]
    assert all(url.startswith(fleet.referral_url) for url in requested)  # nothing from a CDN
