"""The app in a real headless Chromium: a spike opened by deep link shows its verdict and its charts.

Starts `streamlit run app.py -- RUN_DIR` on a free localhost port over a copy of the shipped
Adam β₂-lag sample run, analyzed here, and drives Debian's chromium with Playwright. The
screenshot goes to the test's temp folder, or to $FORENSICS_SCREENSHOT when set (that is how
docs/screenshot-spike.png is made: `FORENSICS_SCREENSHOT=docs/screenshot-spike.png pytest
tests/test_app_browser.py`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install it with `make browser` "
                              "(apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUN = "adam_beta2_lag"


@pytest.fixture(scope="module")
def analyzed_root(tmp_path_factory):
    """A folder with a fresh copy of the Adam sample run, analyzed; returns (folder, spike row)."""
    import shutil

    from forensics.analyzer.pipeline import analyze

    root = tmp_path_factory.mktemp("browser_runs")
    shutil.copytree(REPO / "sample_runs" / RUN, root / RUN, ignore=shutil.ignore_patterns("analysis"))
    result = analyze(root / RUN)
    return root, result.spikes[0]


@pytest.fixture(scope="module")
def server(analyzed_root):
    root, _ = analyzed_root
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FORENSICS_APP_ROOT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--", str(root)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not answer within 30 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_spike_deep_link_renders_verdict_and_charts(server, analyzed_root, tmp_path):
    from playwright.sync_api import sync_playwright

    _, spike = analyzed_root
    shot = Path(os.environ.get("FORENSICS_SCREENSHOT") or tmp_path / "screenshot-spike.png")

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 2400})
        try:
            page = ctx.new_page()
            page.goto(f"{server}/?run={RUN}&spike={spike.context.spike_id}",
                      wait_until="domcontentloaded")
            assert spike.verdict == "adam_beta2_lag"
            page.get_by_text(spike.verdict_message[:60]).first.wait_for(timeout=30_000)
            page.get_by_role("heading", name=f"{RUN} · spike {spike.context.spike_id}").wait_for(
                timeout=10_000)
            svg = page.locator('[data-testid="stVegaLiteChart"] svg')
            svg.nth(4).wait_for(timeout=30_000)
            assert svg.count() >= 5
            assert page.locator('[data-testid="stException"]').count() == 0
            # the preconditioned-sharpness chart drew its two limits
            page.get_by_text("38/η (β₁-aware").first.wait_for(timeout=10_000)
            time.sleep(1.0)  # let Vega finish its last layout pass
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            ctx.close()


def test_runs_page_loss_chart_fits_its_column_at_1400px(server, tmp_path):
    """The Runs page's loss chart (spikes at the last steps of the Adam run) lies inside its
    column at a 1400 px window: nothing is cut off on the right."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 1600})
        try:
            page = ctx.new_page()
            page.goto(f"{server}/?page=runs&run={RUN}", wait_until="domcontentloaded")
            chart = page.locator('[data-testid="stVegaLiteChart"]').first
            chart.locator("svg").first.wait_for(timeout=30_000)
            time.sleep(1.0)  # let Vega finish its last layout pass
            sizes = chart.evaluate("""el => {
                const svg = el.querySelector('svg').getBoundingClientRect();
                const box = el.getBoundingClientRect();
                return {svg_right: svg.right, box_right: box.right, window: window.innerWidth};
            }""")
            page.screenshot(path=str(tmp_path / "runs-1400.png"), full_page=True)
            assert sizes["svg_right"] <= sizes["box_right"] + 1, sizes
            assert sizes["svg_right"] <= sizes["window"], sizes
        finally:
            ctx.close()
