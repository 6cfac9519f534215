"""A person's tour of the Streamlit app in a real browser (Playwright driving Debian's chromium), with screenshots.

Used by tests/test_browser.py, and by hand to refresh the screenshots in docs/ against the champion `make train` registered:

    INCOMEOPS_API_KEY=some-admin-key make serve &      # API on :8000, form on :8501
    INCOMEOPS_API_KEY=some-admin-key .venv/bin/python scripts/ui_tour.py --replay 2000 --batch-file people.csv --out docs/screenshots

`--replay N` first sends N rows of the held-out census to the API as its users would (predictions, their true incomes
one batch later, a monitoring check after each batch of 500: `incomeops.simulation.replay`), so that the monitoring page
has checks, drift and live performance to show; the checks are admin jobs, hence the key. `--batch-file` is scored on
the batch page (a CSV in the Adult format; a bad row in it shows how problems are named). Screenshots taken from the
command line are written with 256 colours, which keeps the committed files small.

Otherwise the tour only drives the browser: the form sends every model input and, if the service asks for a prediction
key, the form's own INCOMEOPS_PREDICT_API_KEY (set it where the form runs, not here).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path

# Each page: its screenshot, its path, its heading, and what it shows once it has what it loads from the API, whatever
# the service's state (the monitoring page: the last check, or that none has run yet, or why its data is missing).
PAGES = (("model", "model", "The model in service", r"^Model card$|The model card is not available|is not available right now"),
         ("batch", "batch", "Score a file", r"^CSV file$"),
         ("monitoring", "monitoring", "Monitoring",
          r"^Checked at .* UTC|No monitoring check has run yet|Monitoring data is not available|^Performance on labelled|not available right now"))
VIEWPORT = {"width": 1280, "height": 1600}
TALLEST = {"monitoring": 2600}     # pages shown whole up to this height (the monitoring page's history is below 1,600 px)


def settle(page, timeout: float = 30_000) -> None:
    "Wait until Streamlit has finished the script run and the page has drawn what it loads (images, charts, tables)."
    page.wait_for_load_state("networkidle", timeout=timeout)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=timeout)
    page.locator("[data-testid='stSkeleton']").first.wait_for(state="detached", timeout=timeout)
    charts = page.locator("[data-testid='stVegaLiteChart']")
    for i in range(charts.count()): charts.nth(i).locator("canvas, svg").first.wait_for(timeout=timeout)
    page.wait_for_function("Array.from(document.images).every(img => img.complete)", timeout=timeout)
    page.wait_for_timeout(1000)


def screenshot(page, path: Path, tallest: int = VIEWPORT["height"]) -> None:
    "The page as high as its content, up to `tallest` px (Streamlit scrolls inside its main block, which full_page does not see)."
    height = page.evaluate("document.querySelector('[data-testid=stMain]')?.scrollHeight ?? 0")
    if height > VIEWPORT["height"]:
        page.set_viewport_size({**VIEWPORT, "height": min(height, tallest)})
        page.wait_for_timeout(1000)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(VIEWPORT)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def launch(playwright):
    "Headless Debian chromium (Playwright downloads no browser of its own here)."
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def fill_number(page, label: str, value: int) -> None:
    "Type `value` into a number box and leave it (blur, not Enter: in the form, Enter would submit it)."
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.blur()


def score_file(page, csv: Path, timeout: float = 60_000) -> None:
    "On the batch page: upload `csv`, wait for its rows to be checked, score them and wait for the results."
    page.locator("input[type='file']").set_input_files(csv)
    page.get_by_text(re.compile(r"row\(s\) ready to score")).wait_for(timeout=timeout)
    page.get_by_role("button", name=re.compile(r"^Score .* people$")).click()
    page.get_by_text(re.compile(r"^Scored .* people")).wait_for(timeout=timeout)


def tour(browser, ui_url: str, out: Path, batch_csv: Path | None = None) -> dict:
    """Fill in the form, predict, visit every page (scoring `batch_csv` on the batch page, if given); screenshots in `out`.
    The answer's text and how long it took to appear."""
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
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
    for name, path, heading, loaded in PAGES:
        page.goto(f"{ui_url}/{path}")
        page.get_by_role("heading", name=heading).wait_for(timeout=30_000)
        page.get_by_text(re.compile(loaded)).first.wait_for(timeout=60_000)   # the script has the API's answer: a run is on
        if name == "batch" and batch_csv: score_file(page, batch_csv)
        settle(page)
        screenshot(page, out / f"{name}.png", TALLEST.get(name, VIEWPORT["height"]))
    page.close()
    return result


def replay_census(api_url: str, rows: int, batch: int = 500) -> None:
    "Send the first `rows` rows of the held-out census to the API as its users would, with monitoring checks (needs INCOMEOPS_API_KEY)."
    from incomeops.cleaning import build_dataset
    from incomeops.client import ApiClient
    from incomeops.config import IncomeOpsError, get_settings
    from incomeops.monitoring import split_test_file
    from incomeops.simulation import SCENARIOS, replay
    settings = get_settings()
    if settings.api_key is None: raise IncomeOpsError("--replay runs monitoring checks, admin jobs: set INCOMEOPS_API_KEY to the service's admin key")
    clean = build_dataset(settings).load()
    stream = split_test_file(clean[clean["split"] == "test"], settings)[1].head(rows)
    client = ApiClient(api_url, api_key=settings.api_key.get_secret_value(), timeout=120, retries=5)
    say = lambda step: print(f"{step['rows_served']:>6,} rows sent, {step['labelled']:>6,} labelled; alarms: {step['alarms'] or 'none'}")
    try: replay(client, stream, SCENARIOS["no_drift"], batch_rows=batch, label_delay=1, seed=settings.seed, progress=say)
    finally: client.close()


def shrink(png: Path) -> None:
    "Rewrite a screenshot with 256 colours, which a page of text and flat charts needs, in less than half the bytes."
    from PIL import Image
    with Image.open(png) as image: small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", default="http://127.0.0.1:8501")
    parser.add_argument("--api", default=os.environ.get("INCOMEOPS_API_URL", "http://127.0.0.1:8000"), help="the API the form talks to (for --replay)")
    parser.add_argument("--replay", type=int, default=0, metavar="ROWS", help="first send this many held-out census rows through the API, with checks")
    parser.add_argument("--batch-file", type=Path, help="a CSV in the Adult format to score on the batch page")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    if args.replay: replay_census(args.api, args.replay)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch(p)
        result = tour(browser, args.ui, args.out, args.batch_file)
        print(f"{result['answer']}\n(answer on screen {result['answer_seconds'] * 1000:.0f} ms after the click)")
        browser.close()
    for png in args.out.glob("*.png"): shrink(png)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
