"""A real browser on the real app: headless Chromium (Debian's package) fills in the form of the running Streamlit app,
which talks to the running API, and the answer must appear. Screenshots of every page go to reports/screenshots/
(uploaded by CI as an artifact, and used by the docs).
"""
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO
from incomeops.harness import Server, free_port
from scripts.ui_tour import chromium_path, launch, tour

CHROMIUM = chromium_path()
SHOTS = Path(os.environ.get("INCOMEOPS_SCREENSHOTS", REPO / "reports" / "screenshots"))
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed (`make system-deps` installs it)")]


@pytest.fixture(scope="module")
def ui(api):
    "The Streamlit app on a free loopback port, talking to the test API."
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1", "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with Server("the Streamlit app", command, f"http://127.0.0.1:{port}", api.settings.root / "streamlit.log", cwd=REPO,
                env={**os.environ, "INCOMEOPS_API_URL": api.url}, ready_path="/_stcore/health", ready_timeout=60) as app:
        yield app.url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    assert CHROMIUM, "CI must install Debian's chromium"
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_a_person_fills_in_the_form_and_sees_the_answer(ui, browser):
    result = tour(browser, ui, SHOTS)
    assert "probability of more than 50K" in result["answer"]
    assert {p.name for p in SHOTS.glob("*.png")} >= {"form.png", "prediction.png", "model.png", "batch.png", "monitoring.png"}
