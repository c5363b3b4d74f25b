"""End-to-end: a real headless Chromium drives `streamlit run app.py` on localhost.

Checks what a user sees: the home page with the default model, the Explore heatmap and QEM
slider, that moving the slider changes the plan, and that the JSON download is a valid plan for
the model. Every page is screenshotted to artifacts/screenshots/ and docs/screenshots/ (README).
Two timings are measured and written to artifacts/browser_timings.json, never asserted:
`streamlit run` start -> first heatmap drawn, and slider key press -> changed plan figure.

Needs Debian's `chromium` + `chromium-driver` (scripts/run.sh test installs them); skipped
without them on a developer machine, failed without them in CI (CI=true).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts"
SHOTS = ARTIFACTS / "screenshots"
README_SHOTS = REPO / "docs" / "screenshots"
WINDOW = (1400, 1000)
MAX_SHOT_HEIGHT = 2600  # keeps the committed PNGs small
START_TIMEOUT = 60  # streamlit server health
RENDER_TIMEOUT = 90  # a page run (first Explore run loads the model and builds the QE table)
# The network is closed here: these flags stop Chromium phoning home and waiting on it.
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}")

# Streamlit marks the app root with the script run state; "notRunning" = the page finished.
APP_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
HEATMAP_DRAWN = '[data-testid="stPlotlyChart"] .js-plotly-plot .heatmaplayer image'
SLIDER = '[data-testid="stSlider"]'
# Streamlit's slider is react-aria: a visually hidden range input inside the thumb takes the keys.
SLIDER_INPUT = f'{SLIDER} input[type="range"]'
TIMINGS: dict = {}
# What the dashboard shows (see app.py and pages/).
DEFAULT_MODEL = "efficientnet_lite0"
EXPLORE_PATH = "Explore"
QEM_LABEL = "QEM"
PLAN_METRIC = "Average bits"
SLIDER_STEPS = 10
DOWNLOAD_LABEL = "Download plan JSON"

try:  # selenium is a test requirement; import lazily-safe so collection never breaks
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the browser fixture
    webdriver = None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if webdriver is None:
        missing.append("python package selenium")
    if not missing:
        return
    reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; scripts/run.sh test does it)"
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`streamlit run app.py` on a free localhost port; yields its URL and start time."""
    _require_browser()
    port = _free_port()
    url = f"http://localhost:{port}"
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = dict(os.environ)  # MIXQUANT_DATA and friends pass through
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "minimal"]  # no "Deploy" button in the screenshots
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = started + START_TIMEOUT
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.perf_counter() > deadline:
                pytest.fail(f"streamlit not healthy after {START_TIMEOUT}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield {"url": url, "started": started, "log": log_path}
    finally:
        _stop(proc)
        if TIMINGS:
            _write_timings()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(app, downloads):
    profile = tempfile.mkdtemp(prefix="mixquant-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # Headless Chromium ignores the download prefs unless told through DevTools too.
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------- helpers

def _wait(driver, timeout: float = RENDER_TIMEOUT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,))


def _wait_idle(driver, timeout: float = RENDER_TIMEOUT) -> None:
    """Wait until the page's script run is over and no exception box is shown."""
    _wait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, APP_IDLE)))
    _assert_no_exception(driver)


def _assert_no_exception(driver) -> None:
    errors = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not errors, f"page shows a traceback: {errors[0].text[:800]}"


def _open(driver, app, page_path: str, ready_css: str) -> None:
    """Load a page and wait until ``ready_css`` is drawn and the script run is over.

    The root says "notRunning" for a moment before the first run starts, so the idle state alone
    is no proof the page has rendered: a page-specific element is.
    """
    driver.get(f"{app['url']}/{page_path}")
    _wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, ready_css)))
    _wait_idle(driver)


def _metric(driver, label: str) -> str:
    for metric in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        name = metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text.strip()
        if name.lower().startswith(label.lower()):
            return metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
    raise AssertionError(f"no metric labelled {label!r} on the page")


def _screenshot(driver, name: str) -> Path:
    """Whole-page PNG: grow the window to the content height (Streamlit scrolls inside stMain)."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]');"
        "const s = document.querySelector('[data-testid=\"stSidebarContent\"]');"
        "const chrome = window.outerHeight - window.innerHeight;"
        "return chrome + Math.max(m ? m.scrollHeight : 0, s ? s.scrollHeight : 0, document.body.scrollHeight);")
    driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height), MAX_SHOT_HEIGHT)))
    try:
        _wait_idle(driver)
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        driver.save_screenshot(str(path))
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOTS / path.name)
        return path
    finally:
        driver.set_window_size(*WINDOW)


def _write_timings() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print(f"\nbrowser timings (s): {json.dumps(TIMINGS)}")


# ---------------------------------------------------------------- tests
# Explore runs first on purpose: its timing is from a cold server (no cached model or QE table).

def test_explore_draws_heatmap_and_slider(app, browser):
    browser.get(f"{app['url']}/{EXPLORE_PATH}")
    _wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, HEATMAP_DRAWN)))
    TIMINGS["start_to_first_heatmap_s"] = round(time.perf_counter() - app["started"], 2)
    _wait_idle(browser)
    slider = browser.find_element(By.CSS_SELECTOR, SLIDER)
    assert QEM_LABEL.lower() in slider.text.lower(), slider.text
    assert browser.find_elements(By.CSS_SELECTOR, SLIDER_INPUT)
    _screenshot(browser, "explore")


def test_home_shows_default_model(app, browser):
    _open(browser, app, "", "h1")
    main = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert DEFAULT_MODEL in main, main[:500]
    _screenshot(browser, "home")


def test_slider_changes_plan(app, browser):
    _open(browser, app, EXPLORE_PATH, HEATMAP_DRAWN)
    thumb = browser.find_element(By.CSS_SELECTOR, SLIDER_INPUT)
    value_before = thumb.get_attribute("value")
    metric_before = _metric(browser, PLAN_METRIC)
    browser.execute_script("arguments[0].focus()", thumb)
    keys = ActionChains(browser)
    for _ in range(SLIDER_STEPS):
        keys.send_keys(Keys.ARROW_RIGHT)
    pressed = time.perf_counter()
    keys.perform()
    _wait(browser).until(lambda d: _metric(d, PLAN_METRIC) != metric_before)
    TIMINGS["slider_response_s"] = round(time.perf_counter() - pressed, 3)
    _wait_idle(browser)
    thumb = browser.find_element(By.CSS_SELECTOR, SLIDER_INPUT)
    assert float(thumb.get_attribute("value")) > float(value_before)


def test_json_download_is_a_plan_for_the_model(app, browser, downloads):
    from mixquant_core.models import load_model
    from mixquant_core.plan import Plan

    _open(browser, app, EXPLORE_PATH, HEATMAP_DRAWN)
    buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"] button')
               if DOWNLOAD_LABEL.lower() in b.text.lower()]
    assert buttons, f"no download button labelled {DOWNLOAD_LABEL!r}"
    shown_bits = _metric(browser, PLAN_METRIC)
    buttons[0].click()
    done = _wait(browser, 30).until(lambda d: [p for p in downloads.glob("*.json")] or False)
    plan = Plan.load(done[0])
    model = load_model(DEFAULT_MODEL).model
    assert [layer.name for layer in plan.check_against(model)] == list(plan.layers)
    assert f"{plan.size['avg_bits']:.2f}" in shown_bits
