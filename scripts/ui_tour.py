"""A person's tour of the Streamlit app in a real browser (Playwright driving Debian's chromium), with screenshots.

Used by tests/test_browser.py, and by hand to refresh the screenshots in docs/ against the real champion:

    make serve &            # API on :8000, form on :8501
    .venv/bin/python scripts/ui_tour.py --ui http://127.0.0.1:8501 --out docs/screenshots

The tour only drives the browser: the form sends every model input and, if the service asks for a prediction key, the
form's own INCOMEOPS_PREDICT_API_KEY (set it where the form runs, not here).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

PAGES = (("model", "model", "The model in service"), ("batch", "batch", "Score a file"), ("monitoring", "monitoring", "Monitoring"))


def settle(page, timeout: float = 30_000) -> None:
    "Wait until Streamlit has finished the script run and the page has drawn what it loads (images, charts, tables)."
    page.wait_for_load_state("networkidle", timeout=timeout)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=timeout)
    page.locator("[data-testid='stSkeleton']").first.wait_for(state="detached", timeout=timeout)
    page.wait_for_timeout(1000)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def launch(playwright):
    "Headless Debian chromium (Playwright downloads no browser of its own here)."
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def fill_number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def tour(browser, ui_url: str, out: Path) -> dict:
    "Fill in the form, predict, visit every page; screenshots in `out`. The answer's text and how long it took to appear."
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(ui_url)
    page.get_by_text("Will this person earn more than 50K USD a year?").wait_for(timeout=60_000)
    fill_number(page, "Age", 52)
    fill_number(page, "Hours worked per week", 60)
    page.screenshot(path=out / "form.png", full_page=True)
    answer = page.get_by_text("This person likely earns")
    start = time.perf_counter()
    page.get_by_role("button", name="Predict").click()
    answer.wait_for(timeout=30_000)
    seconds = time.perf_counter() - start
    page.get_by_text("Why?").wait_for()
    page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg").first.wait_for(timeout=30_000)
    settle(page)
    page.screenshot(path=out / "prediction.png", full_page=True)
    result = {"answer": answer.inner_text(), "answer_seconds": seconds}
    for name, path, heading in PAGES:
        page.goto(f"{ui_url}/{path}")
        page.get_by_role("heading", name=heading).wait_for(timeout=30_000)
        settle(page)
        page.screenshot(path=out / f"{name}.png", full_page=True)
    page.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", default="http://127.0.0.1:8501")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch(p)
        result = tour(browser, args.ui, args.out)
        print(f"{result['answer']}\n(answer on screen {result['answer_seconds'] * 1000:.0f} ms after the click)")
        browser.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
