"""reports/index.html in a real headless browser (Debian's chromium through chromedriver), served over HTTP on
127.0.0.1 from a registry filled by real trainings: no console errors, every plot renders, every run link
opens that run's report. Without chromium the tests skip with the reason; under CI=true that is a failure."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.conftest import under_ci
from tests.runs_registry import Filled, fill

from mlci import dashboard

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return fill(tmp_path_factory.mktemp("dashboard") / "project")


@pytest.fixture(scope="module")
def site(filled: Filled) -> Iterator[str]:
    """The reports folder over HTTP, as a runner's web server would serve it."""
    folder = filled.config.path(filled.config.registry.reports)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        why = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        if under_ci():
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _broken_images(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )


def test_dashboard_loads_without_console_errors_and_its_plot_renders(browser, site: str, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/index.html")
    assert _errors(browser) == []
    plot = browser.find_element(By.ID, "gate-metrics")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0
    assert browser.execute_script("return document.images.length") >= 1 and _broken_images(browser) == []

    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tr[id]")
    assert [r.get_attribute("id") for r in rows] == ["r0004", "r0003", "r0002", "r0001"]
    champion = browser.find_element(By.CSS_SELECTOR, "#runs tr.champion")
    assert champion.get_attribute("id") == "r0001" and "champion" in champion.text
    assert "failed" in browser.find_element(By.ID, "r0003").text
    assert "passed" in browser.find_element(By.ID, "r0002").text

    ledger = browser.find_element(By.ID, "ledger").text
    for outcome in ("first champion", "promoted", "refused", "rolled back"):
        assert outcome in ledger
    assert filled.evil in ledger  # shown as text: the escaped script never ran (an alert would be open)
    assert "rolled back from run r0002" in ledger


def test_each_run_link_opens_that_runs_report(browser, site: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/index.html")
    links = {
        row.get_attribute("id"): row.find_element(By.CSS_SELECTOR, "a.report").get_attribute("href")
        for row in browser.find_elements(By.CSS_SELECTOR, "#runs tr[id]")
        if row.find_elements(By.CSS_SELECTOR, "a.report")
    }
    assert sorted(links) == ["r0001", "r0002", "r0003"]  # r0004 failed while training: it has no report
    for run_id in links:
        browser.get(f"{site}/index.html")
        browser.find_element(By.CSS_SELECTOR, f"tr[id='{run_id}'] a.report").click()
        assert browser.current_url == f"{site}/{run_id}/report.html"
        assert run_id in browser.find_element(By.TAG_NAME, "h1").text
        assert _errors(browser) == [] and _broken_images(browser) == []


def test_a_refused_deploy_rewrites_the_dashboard_with_its_reason(filled: Filled) -> None:
    page = filled.config.path(filled.config.registry.reports) / dashboard.INDEX
    before = page.read_text().count("class='refused'")
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "deploy", "--run", "r0003", "--config", str(filled.config_path),
         f"deploy.inventory={ROOT / 'inventories/local'}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "refused" in out.stderr  # refused before anything is delivered
    text = page.read_text()
    assert text.count("class='refused'") == before + 1
    assert "run r0003 failed its gates (min_accuracy)" in text
