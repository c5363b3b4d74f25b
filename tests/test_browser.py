"""End-to-end: a real headless Chromium drives `streamlit run app.py` on localhost.

Checks what a user sees: the home page with the default model, the Explore heatmap and QEM
slider, that moving the slider changes the plan, that the JSON download is a valid plan for
the model, and that a background reconstruction shows its results without another click. Every page is screenshotted to artifacts/screenshots/ (and to docs/screenshots/ for
the README when MIXQUANT_README_SHOTS=1).
Three timings are measured and written to artifacts/browser_timings.json, never asserted:
`streamlit run` start -> first heatmap drawn, slider key press -> changed plan figure, and a
restart -> the stored sweep drawn. The Trade-off report is downloaded and opened from disk.

Needs Debian's `chromium` + `chromium-driver` (scripts/run.sh test installs them); skipped
without them on a developer machine, failed without them in CI (CI=true).
"""
from __future__ import annotations

import json
import os
import re
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
from PIL import Image

from mixquant_core import DEFAULT_MODEL

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # 1.5 to 3 min on the shared 2-core machine

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts"
SHOTS = ARTIFACTS / "screenshots"
README_SHOTS = REPO / "docs" / "screenshots"
WINDOW = (1400, 1000)
MAX_SHOT_HEIGHT = 3600  # Explore with its 50-layer heatmap fits; keeps the PNGs bounded
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

# What the dashboard shows (app.py's st.navigation pages, studio_ui/sidebar.py).
PAGE_TITLES = ["Home", "Explore", "Trade-off", "Sensitivity", "Export"]  # sidebar navigation, in order
QEM_LABEL = "QEM"
PLAN_METRICS = ("Plan", "Average bits")  # Explore's figures of the current plan
DOWNLOAD_LABEL = "Download plan (JSON)"
EVAL_LIMIT_LABEL = "Images to evaluate"
EVAL_IMAGES = 8  # a small subset keeps the evaluating pages to seconds
SWEEP_POINTS = 5  # enough points for the accuracy curves to have a shape
SENSITIVITY_BITS = ("4",)  # the bit-widths kept on Sensitivity: one plan per layer kind

try:  # a test requirement; if it is missing, _require_browser says so (skip, or fail in CI)
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
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


def _launch(log_path: Path) -> dict:
    """`streamlit run app.py` on a free localhost port, healthy; its URL, process and start time."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)  # MIXQUANT_DATA, MIXQUANT_HOME (the results store) and friends pass through
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "minimal"]  # no "Deploy" button in the screenshots
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = started + START_TIMEOUT
    while not _healthy(url):
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.perf_counter() > deadline:
            _stop(proc)
            pytest.fail(f"streamlit not healthy after {START_TIMEOUT}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return {"url": url, "started": started, "log": log_path, "proc": proc}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The running app (a dict: url, start time, log, process); a test may restart it in place."""
    _require_browser()
    server = {"proc": None}
    try:
        server.update(_launch(tmp_path_factory.mktemp("streamlit") / "streamlit.log"))
        yield server
    finally:
        if server["proc"] is not None:
            _stop(server["proc"])
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
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def _find(driver, css: str, text: str = "", last: bool = False):
    """The first (or last) element matching ``css`` whose text starts with ``text`` (case-insensitive)."""
    found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.text.strip().lower().startswith(text.lower())]
    if not found:
        raise NoSuchElementException(f"no {css} with text {text!r}")
    return found[-1] if last else found[0]


# Counts finished script runs: the root's data-test-script-state leaving "running". Waiting for
# "notRunning" alone is no proof a page has rendered: the root says so before a rerun starts.
_RUN_COUNTER = """
const root = document.querySelector('[data-testid="stApp"]');
if (root && !window.__mqRuns) {
  window.__mqRuns = {finished: 0};
  new MutationObserver(records => records.forEach(r => {
    if (r.oldValue === 'running') window.__mqRuns.finished += 1;
  })).observe(root, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
}
return window.__mqRuns ? window.__mqRuns.finished : -1;
"""


def _runs(driver) -> int:
    return driver.execute_script(_RUN_COUNTER)


def _problem(driver) -> str:
    """The text of a traceback or st.error box on the page ('' when there is none)."""
    boxes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    return boxes[0].text[:800] if boxes else ""


def _until(driver, condition, what: str, timeout: float = RENDER_TIMEOUT):
    """Wait for ``condition``; stop at once, saying so, if the page shows an error instead."""
    def check(d):
        problem = _problem(d)
        assert not problem, f"waiting for {what}, the page shows an error: {problem}"
        return condition(d)
    return _wait(driver, timeout).until(check, message=f"{what}: not within {timeout:.0f} s")


def _wait_idle(driver, after: int = -1) -> None:
    """Wait until a script run finished after run count ``after`` and the app is idle, error-free."""
    _until(driver, lambda d: _runs(d) > after and d.find_elements(By.CSS_SELECTOR, APP_IDLE), "the end of the page run")
    problem = _problem(driver)
    assert not problem, f"the page shows an error: {problem}"


def _open(driver, app, page_path: str, ready_css: str) -> float:
    """Load a page in a new session; wait for ``ready_css`` and the end of the run. Returns when
    ``ready_css`` appeared (perf_counter)."""
    driver.get(f"{app['url']}/{page_path}")
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ready_css), f"/{page_path}: {ready_css}")
    ready = time.perf_counter()
    _runs(driver)  # the run that drew ready_css is under way: idle now means it is over
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, APP_IDLE), f"/{page_path}: the end of the page run")
    return ready


def _rerun(driver, action) -> None:
    """Do ``action`` (a widget change) and wait for the rerun it causes to finish."""
    before = _runs(driver)
    action()
    _wait_idle(driver, after=before)


def _nav_links(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')


def _nav_titles(driver) -> list:
    return [a.text.strip().splitlines()[-1] for a in _nav_links(driver)]  # the first line is the icon's name


def _go(driver, page_title: str) -> None:
    """Change page through the sidebar navigation (keeps the session and its settings)."""
    link = next((a for a in _nav_links(driver) if a.text.strip().splitlines()[-1] == page_title), None)
    assert link is not None, f"no sidebar link {page_title!r}: {_nav_titles(driver)}"
    _rerun(driver, link.click)
    _until(driver, lambda d: _find(d, "h1", page_title), f"the {page_title} page title")


def _metric(driver, label: str) -> str:
    for metric in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        name = metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text.strip()
        if name.lower() == label.lower():
            return metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
    raise NoSuchElementException(f"no metric labelled {label!r}")


def _has_metric(driver, label: str) -> bool:
    try:
        return bool(_metric(driver, label))
    except NoSuchElementException:
        return False


def _plan_figures(driver) -> tuple:
    return tuple(_metric(driver, label) for label in PLAN_METRICS)


def _set_number(driver, label: str, value, last: bool = False) -> None:
    """Type ``value`` into the number input labelled ``label`` (the page's last such with ``last``)
    and wait for the rerun."""
    def box():
        return _find(driver, '[data-testid="stNumberInput"]', label, last).find_element(By.CSS_SELECTOR, "input")

    # the sidebar's widgets can be a moment behind the main area's ready element (a CI run once
    # found no 'Images to evaluate' right after the Sensitivity page's chart): wait for the box
    _until(driver, lambda d: box(), f"the number input {label!r}")
    if box().get_attribute("value") != str(value):
        def type_value():
            box().send_keys(Keys.CONTROL, "a")  # the modifier is held to the end of one send_keys
            box().send_keys(str(value), Keys.ENTER)
        _rerun(driver, type_value)
    assert box().get_attribute("value") == str(value)


def _click_button(driver, text: str, css: str = '[data-testid="stButton"] button') -> None:
    _rerun(driver, _find(driver, css, text).click)


def _screenshot(driver, name: str) -> Path:
    """Whole-page PNG: grow the window to the content height (Streamlit scrolls inside stMain)."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]');"
        "const s = document.querySelector('[data-testid=\"stSidebarContent\"]');"
        "const chrome = window.outerHeight - window.innerHeight;"
        "return chrome + Math.max(m ? m.scrollHeight : 0, s ? s.scrollHeight : 0, document.body.scrollHeight);")
    driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height), MAX_SHOT_HEIGHT)))
    # from the top of the page, even after widgets further down were used
    driver.execute_script("const m = document.querySelector('[data-testid=\"stMain\"]'); if (m) m.scrollTo(0, 0);")
    # park the pointer in the empty header: no hover effects (title anchor, sidebar arrow, chart toolbars)
    pointer = ActionBuilder(driver)
    pointer.pointer_action.move_to_location(WINDOW[0] // 2, 5)
    pointer.perform()
    try:
        # plotly re-lays out on resize: wait until every chart has its SVG again
        _until(driver, lambda d: all(c.find_elements(By.CSS_SELECTOR, ".main-svg")
                                     for c in d.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')),
               "charts redrawn after the resize", timeout=20)
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        driver.save_screenshot(str(path))
        if os.environ.get("MIXQUANT_README_SHOTS") != "1":
            return path  # the README's copies change only when asked for
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        # the README's copy: a dithered 256-colour PNG, a third of the size of the capture
        with Image.open(path) as shot:
            small = shot.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE,
                                                 dither=Image.Dither.FLOYDSTEINBERG)
        small.save(README_SHOTS / path.name, optimize=True)
        return path
    finally:
        driver.set_window_size(*WINDOW)


def _write_timings() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print(f"\nbrowser timings (s): {json.dumps(TIMINGS)}")


def _slider_to_end(driver) -> tuple:
    """Press End on the QEM slider (jump to the largest QEM); return the plan figures before and
    after and the seconds from the key press until the figures changed on screen."""
    before = _plan_figures(driver)
    thumb = driver.find_element(By.CSS_SELECTOR, SLIDER_INPUT)
    assert thumb.get_attribute("value") != thumb.get_attribute("max"), "QEM slider starts at its end"
    driver.execute_script("arguments[0].focus()", thumb)
    runs = _runs(driver)
    pressed = time.perf_counter()
    ActionChains(driver).send_keys(Keys.END).perform()
    _until(driver, lambda d: _plan_figures(d) != before, "the plan figures to change")
    elapsed = time.perf_counter() - pressed
    _wait_idle(driver, after=runs)
    thumb = driver.find_element(By.CSS_SELECTOR, SLIDER_INPUT)
    assert thumb.get_attribute("value") == thumb.get_attribute("max")
    return before, _plan_figures(driver), elapsed


# ---------------------------------------------------------------- tests
# Explore runs first on purpose: a user's bookmark of /explore on a freshly started server, and
# the start -> first heatmap timing from a cold server (no cached model or QE table).

def test_explore_draws_heatmap_and_slider(app, browser):
    drawn = _open(browser, app, "explore", HEATMAP_DRAWN)
    TIMINGS["start_to_first_heatmap_s"] = round(drawn - app["started"], 2)
    slider = browser.find_element(By.CSS_SELECTOR, SLIDER)
    assert QEM_LABEL in slider.text, slider.text
    assert browser.find_elements(By.CSS_SELECTOR, SLIDER_INPUT)
    assert all(_plan_figures(browser))
    # the app's own navigation, not one Streamlit made up from a pages/ folder's file names
    assert _nav_titles(browser) == PAGE_TITLES


def test_home_shows_default_model(app, browser):
    _open(browser, app, "", '[data-testid="stMetric"]')
    main = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert f"Model: {DEFAULT_MODEL}" in main, main[:500]
    model_box = _find(browser, '[data-testid="stSelectbox"]', "Model").find_element(By.CSS_SELECTOR, "input")
    assert model_box.get_attribute("value").startswith(DEFAULT_MODEL)
    assert int(_metric(browser, "Quantizable layers")) > 0
    _screenshot(browser, "home")


def test_slider_changes_plan(app, browser):
    _open(browser, app, "explore", HEATMAP_DRAWN)
    _screenshot(browser, "explore")  # at the default QEM: a mixed plan
    before, after, elapsed = _slider_to_end(browser)
    TIMINGS["slider_response_s"] = round(elapsed, 3)
    plan_mb = [float(figures[0].split()[0]) for figures in (before, after)]
    avg_bits = [float(figures[1]) for figures in (before, after)]
    # the largest QEM gives every layer its lowest bit-width: a smaller plan than the default QEM's
    assert plan_mb[1] < plan_mb[0] and avg_bits[1] < avg_bits[0], (before, after)


def test_export_downloads_the_slider_plan(app, browser, downloads):
    from mixquant_core.models.registry import load_model
    from mixquant_core.plans.plan import Plan

    _open(browser, app, "explore", HEATMAP_DRAWN)
    _, (plan_mb, avg_bits), _ = _slider_to_end(browser)
    qem = browser.find_element(By.CSS_SELECTOR, SLIDER_INPUT).get_attribute("aria-valuetext")
    _go(browser, "Export")  # same session: the QEM chosen on Explore is the one exported
    _screenshot(browser, "export")
    _find(browser, '[data-testid="stDownloadButton"] button', DOWNLOAD_LABEL).click()
    files = _until(browser, lambda d: sorted(downloads.glob("*.json")), "the downloaded plan file", timeout=30)
    plan = Plan.load(files[0])
    assert plan.model["name"] == DEFAULT_MODEL
    assert f"{plan.qem:.5g}" == qem
    assert (f"{plan.size['plan_mb']:.2f} MB", f"{plan.size['avg_bits']:.2f}") == (plan_mb, avg_bits)
    model = load_model(DEFAULT_MODEL).model
    assert [layer.name for layer in plan.check_against(model)] == list(plan.layers)


def test_tradeoff_evaluates_plans(app, browser):
    _open(browser, app, "tradeoff", '[data-testid="stNumberInput"]')
    _set_number(browser, EVAL_LIMIT_LABEL, EVAL_IMAGES)
    _set_number(browser, "QEM points", SWEEP_POINTS)
    _click_button(browser, "Evaluate trade-off")
    top1 = float(_metric(browser, "float32 top-1").rstrip(" %"))
    assert 0.0 <= top1 <= 100.0
    assert 2 <= int(_metric(browser, "Distinct plans in the grid")) <= SWEEP_POINTS
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .js-plotly-plot .scatterlayer .trace')
    # a (tiny) reconstruction in the background: its results must appear with no further click,
    # which only the polling fragment can do in a real browser
    _set_number(browser, "Iterations per block", 1)
    _set_number(browser, "Calibration images", 4, last=True)  # the Pareto section above has one too
    _set_number(browser, "Batch size", 4)
    _click_button(browser, "Start reconstruction")
    _until(browser, lambda d: _has_metric(d, "Reconstructed top-1"), "the reconstruction's results", timeout=240)
    assert 0.0 <= float(_metric(browser, "Reconstructed top-1").rstrip(" %")) <= 100.0
    _wait_idle(browser)
    _screenshot(browser, "tradeoff")


def test_report_opens_offline_with_its_figures(app, browser, downloads):
    """The Trade-off page's report (after the sweep above): one HTML file that draws its figures alone."""
    _open(browser, app, "tradeoff", '[data-testid="stNumberInput"]')
    _set_number(browser, EVAL_LIMIT_LABEL, EVAL_IMAGES)
    _set_number(browser, "QEM points", SWEEP_POINTS)  # the sweep above: shown from the store, no click
    if not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]'):  # run alone (-k report)
        _click_button(browser, "Evaluate trade-off")
    _find(browser, '[data-testid="stDownloadButton"] button', "Download report").click()
    files = _until(browser, lambda d: sorted(p for p in downloads.glob("*.html")), "the downloaded report", timeout=60)
    _until(browser, lambda d: not list(downloads.glob("*.crdownload")), "the report download to finish", timeout=60)
    text = files[0].read_text()
    assert "<script" in text and not re.search(r"<script[^>]*\ssrc=", text)  # plotly.js inside, nothing fetched
    browser.get(files[0].as_uri())
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 3
           and d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .heatmaplayer image"),
           "the report's figures drawn", timeout=60)
    assert "How the numbers were measured" in browser.find_element(By.TAG_NAME, "body").text
    bars = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .errorbars .errorbar")
    assert bars, "the accuracy curves draw their 95 % intervals"


def test_sensitivity_evaluates_layer_kinds(app, browser):
    _open(browser, app, "sensitivity", '[data-testid="stPlotlyChart"] .js-plotly-plot')
    _set_number(browser, EVAL_LIMIT_LABEL, EVAL_IMAGES)

    def other_bits():
        tags = _find(browser, '[data-testid="stMultiSelect"]', "Bit-widths").find_elements(By.CSS_SELECTOR, "[data-tag]")
        return [tag for tag in tags if tag.get_attribute("aria-label") not in SENSITIVITY_BITS]

    while other_bits():
        _rerun(browser, other_bits()[0].find_element(By.CSS_SELECTOR, "button").click)
    charts = len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]'))
    _click_button(browser, "Evaluate sensitivity")
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')) == charts + 1
    _screenshot(browser, "sensitivity")


def test_restarted_app_shows_the_stored_sweep(app, browser, tmp_path):
    """After a restart the Trade-off page shows the sweep measured before from the results store,
    with no click and nothing evaluated; the time from the restart to the drawn curve is measured."""
    _stop(app["proc"])
    app.update(_launch(tmp_path / "streamlit-restarted.log"))
    _open(browser, app, "tradeoff", '[data-testid="stNumberInput"]')
    _set_number(browser, EVAL_LIMIT_LABEL, EVAL_IMAGES)
    _set_number(browser, "QEM points", SWEEP_POINTS)
    _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .js-plotly-plot .scatterlayer .trace'),
           "the stored accuracy curves")
    TIMINGS["restart_to_stored_sweep_s"] = round(time.perf_counter() - app["started"], 2)
    main = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert "Shown from the results store" in main and "nothing evaluated again" in main
    assert 0.0 <= float(_metric(browser, "float32 top-1").rstrip(" %")) <= 100.0
