"""The HTML report in a real browser: headless Chromium opens it, CircuitsVis mounts, no console errors.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the ``selenium``
dev dependency; skipped with the reason when either is missing.
"""

import shutil
import time
from pathlib import Path

import pytest
from zoo_heads import PREV

from mechheads import zoo
from mechheads.report import ReportConfig, build_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine has no network; without these Chromium keeps trying
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium (dev dependency)"
    )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    cfg = ReportConfig(n=12, chg_seeds=2, chg_updates=6, chg_batch=8, top_heads=3)
    out = tmp_path_factory.mktemp("browser-report")
    rep = build_report(
        zoo.load("induction-2l"), zoo_name="induction-2l", out_dir=out, config=cfg, progress=False
    )
    return rep.html_path


def _wait(driver, script: str, timeout: float = 20.0):
    end = time.time() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.time() > end:
            return value
        time.sleep(0.2)


def test_report_renders_in_headless_chromium(browser, page):
    browser.get(page.resolve().as_uri())
    assert browser.title.startswith("mechheads report")
    # every CircuitsVis container gets a React tree mounted into it by the inlined bundle
    mounted = _wait(
        browser,
        "const d=[...document.querySelectorAll('div[id^=\"circuits-vis-\"]')];"
        "return d.length>0 && d.every(e=>e.children.length>0) ? d.length : 0;",
    )
    assert mounted == 1, "the CircuitsVis widget did not mount"
    widget_text = browser.execute_script(
        "return document.querySelector('div[id^=\"circuits-vis-\"]').innerText"
    )
    assert PREV in widget_text, widget_text[:300]  # head labels were rendered (the top heads include it)
    # every embedded figure decoded (a broken data URI has naturalWidth 0)
    sizes = browser.execute_script("return [...document.images].map(i=>i.complete && i.naturalWidth)")
    assert len(sizes) >= 10 and all(w and w > 100 for w in sizes)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], f"console errors: {errors}"
