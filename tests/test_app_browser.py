"""The app in a real headless Chromium: a spike opened by deep link shows its verdict and its charts.

Starts `streamlit run app.py -- RUN_DIR` on a free localhost port and drives Debian's chromium
with Playwright; saves docs/screenshot-spike.png.
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.test_app_fixtures import make_folder

    root = make_folder(tmp_path_factory.mktemp("browser_runs"))
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


def test_spike_deep_link_renders_verdict_and_charts(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 2400})
        try:
            page = ctx.new_page()
            page.goto(f"{server}/?run=adam_run&spike=0", wait_until="domcontentloaded")
            page.get_by_text("VERDICT-0: adam_beta2_lag explains the ascent").first.wait_for(timeout=30_000)
            page.get_by_role("heading", name="adam_run · spike 0").wait_for(timeout=10_000)
            svg = page.locator('[data-testid="stVegaLiteChart"] svg')
            svg.nth(4).wait_for(timeout=30_000)
            assert svg.count() >= 5
            assert page.locator('[data-testid="stException"]').count() == 0
            # the preconditioned-sharpness chart drew its two limits
            page.get_by_text("38 (Cohen)").first.wait_for(timeout=10_000)
            time.sleep(1.0)  # let Vega finish its last layout pass
            page.screenshot(path=str(REPO / "docs" / "screenshot-spike.png"), full_page=True)
        finally:
            ctx.close()
