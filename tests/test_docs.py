"""The documentation site (`make docs`, scripts/build_docs.py): every notebook rendered with its outputs and nbdev's
directives honoured, API docs for exported functions, the HTTP reference, the arc42 page, no broken internal link, and
the home page as a person sees it in a real browser (headless Chromium), with a screenshot in reports/screenshots/.

The site is built once for the module (notebooks executed), unless _docs/ already holds a build of the same sources
with executed notebooks and a passing link check (as `make docs` leaves it).
"""
import functools
import html
import http.server
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from conftest import REPO
from scripts import build_docs as bd
from scripts.ui_tour import chromium_path, launch

SITE = REPO / "_docs"
SHOTS = Path(os.environ.get("INCOMEOPS_SCREENSHOTS", REPO / "reports" / "screenshots"))
pytestmark = pytest.mark.timeout(1800)     # a cold build executes every notebook


def reusable_build() -> dict | None:
    "The manifest of the build in _docs/ if it is complete and current."
    try: manifest = json.loads((SITE / "build.json").read_text())
    except (OSError, ValueError): return None
    ok = manifest["executed"] and manifest["links_checked"] and not manifest["failed"] and not manifest["broken_links"]
    return manifest if ok and manifest["digest"] == bd.sources_digest() else None


@pytest.fixture(scope="module")
def site() -> dict:
    "The build manifest of a fresh (or still current) build of the site."
    if (manifest := reusable_build()) is None:
        res = subprocess.run([sys.executable, "scripts/build_docs.py", "--check-links"], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, f"the docs build failed:\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
        manifest = json.loads((SITE / "build.json").read_text())
    return manifest


def page_of(site: dict, source: str) -> Path:
    "The generated page built from `source` (a repository path such as nbs/00_config.ipynb)."
    outs = [p["out"] for p in site["pages"] if p["source"] == source]
    assert outs, f"no page was built from {source}"
    return SITE / outs[0]


def plain(markup: str) -> str:
    "HTML as text: tags removed, entities decoded, white space collapsed."
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def text_of(path: Path) -> str:
    "A page's text."
    return plain(path.read_text(encoding="utf-8"))


def code_blocks(path: Path) -> list[str]:
    "The source code shown in a notebook page's input cells."
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(r'<div class="input_area">(.*?)</div>\s*</div>', path.read_text(encoding="utf-8"), re.S)]


def directives(cell) -> dict[str, str]:
    return bd.split_directives(cell.source)[0]


# ------------------------------------------------------------------------------------------------------ the build


def test_the_build_executes_every_notebook_but_the_pipelines_and_checks_its_links(site):
    assert site["executed"] and site["links_checked"]
    assert not site["failed"] and not site["broken_links"]
    for rel in bd.discover_notebooks():
        expected = {"yes", "cached"} if bd.runs_here(rel) else {"no"}
        assert site["notebooks"][rel.as_posix()]["executed"] in expected, rel


def test_no_internal_link_or_anchor_is_broken_and_nothing_loads_from_elsewhere(site):
    assert bd.check_links([p["out"] for p in site["pages"]]) == []
    for p in site["pages"]:
        page = (SITE / p["out"]).read_text(encoding="utf-8")
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page), f"{p['out']} loads a remote resource"


# -------------------------------------------------------------------------------------------------- notebook pages


def test_every_notebook_has_a_page_with_its_outputs(site):
    with_outputs = []
    for rel in bd.discover_notebooks():
        page = page_of(site, f"nbs/{rel.as_posix()}")
        body = page.read_text(encoding="utf-8")
        title = bd.source_title(bd.NBS / rel)[0]
        assert f"<h1>{html.escape(title)}</h1>" in body, f"{page.name} lacks the title of {rel}"
        if 'class="output_wrapper"' in body: with_outputs.append(rel.stem)
    assert page_of(site, "nbs/index.ipynb").name == "index.html"
    assert len(with_outputs) >= 10, with_outputs        # some notebooks only test (their cells print nothing)
    for name in ("03_exploration", "06_evaluation"):    # tables and plots
        body = page_of(site, f"nbs/{name}.ipynb").read_text(encoding="utf-8")
        assert 'src="data:image/png;base64,' in body and 'class="dataframe"' in body, f"{name} lacks its plots"
    assert "output_wrapper" not in page_of(site, "nbs/pipelines/train.ipynb").read_text(encoding="utf-8")


def test_hidden_cells_and_directive_lines_are_not_on_the_pages(site):
    for rel in bd.discover_notebooks():
        page = page_of(site, f"nbs/{rel.as_posix()}")
        blocks, text = code_blocks(page), text_of(page)
        assert not any(ln.lstrip().startswith("#|") for b in blocks for ln in b.splitlines()), f"{page.name} shows a #| line"
        assert "default_exp" not in text
        for cell in nbformat.read(bd.NBS / rel, as_version=4).cells:
            if cell.cell_type == "code" and {"hide", "exporti"} & directives(cell).keys():
                for line in (ln.strip() for ln in bd.split_directives(cell.source)[1].splitlines()):
                    if len(line) > 15: assert not any(line in b for b in blocks), f"hidden code on {page.name}: {line}"


def test_a_hidden_cell_stays_hidden_and_an_exported_function_gets_its_api_doc(tmp_path):
    "nbdev's processing in the builder, on a notebook made for the purpose (the project's notebooks hide no cell)."
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A test notebook\n\n> Made by tests/test_docs.py."),
        nbformat.v4.new_code_cell("#| default_exp docs_probe"),
        nbformat.v4.new_code_cell("#| hide\nSECRET_OF_THE_HIDDEN_CELL = 42"),
        nbformat.v4.new_code_cell('#| export\ndef probe_double(x: int) -> int:\n    "Twice `x`, for the docs test."\n    return 2 * x'),
        nbformat.v4.new_code_cell("probe_double(21)", outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "42"},
                                                                                        execution_count=1)]),
        nbformat.v4.new_code_cell("#| echo: false\nprint('only the output of this cell')",
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="only the output of this cell\n")])])
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe.json"
    nbformat.write(nb, src)
    code = ("import json, sys; from pathlib import Path; from scripts import build_docs as bd\n"
            f"src = Path({str(src)!r}); text = bd.nbdev_process(src.read_text(), src)\n"
            f"Path({str(out)!r}).write_text(json.dumps(bd.notebook_body(text)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    front, body = json.loads(out.read_text())
    assert front["title"] == "A test notebook"
    assert "SECRET_OF_THE_HIDDEN_CELL" not in body and "default_exp" not in body and "#|" not in body
    assert re.search(r'<h3 id="probe_double"', bd.heading_ids(body)), "no show_doc heading for the exported function"
    text = plain(body).replace(" ", "")
    assert "Twicex,forthedocstest." in text and "defprobe_double(x:int)->int:" in text   # docstring, signature
    assert "probe_double(21)42" in text                                       # the visible cell and its output
    assert "onlytheoutputofthiscell" in text and "print(" not in text         # echo: false keeps the output only


def test_every_exported_function_and_class_is_documented_on_its_notebook_page(site):
    checked = 0
    for rel in bd.discover_notebooks():
        cells = nbformat.read(bd.NBS / rel, as_version=4).cells
        module_name = next((directives(c)["default_exp"] for c in cells
                            if c.cell_type == "code" and "default_exp" in directives(c)), None)
        if module_name is None: continue
        module = importlib.import_module(f"incomeops.{module_name}")
        ids = bd.parse_html(page_of(site, f"nbs/{rel.as_posix()}")).ids
        for name in module.__all__:
            obj = getattr(module, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                assert name.lower() in ids, f"incomeops.{module_name}.{name} has no API docs on the page of {rel}"
                checked += 1
    assert checked > 50


# ---------------------------------------------------------------------------------------------- the other pages


def test_the_api_reference_lists_every_route_of_the_service(site):
    from app.main import create_app
    from incomeops.config import Settings
    doc = create_app(Settings()).openapi()
    page = SITE / "api.html"
    ids, text = bd.parse_html(page).ids, text_of(page)
    routes = bd.operations(doc)
    assert len(routes) >= 10
    for method, path, _ in routes:
        assert bd.op_id(method, path) in ids, f"{method.upper()} {path} is missing from the API reference"
        assert f"{method.upper()} {path}" in text
    for name in doc["components"]["schemas"]:
        assert f"schema-{bd.slug(name)}" in ids, f"schema {name} is missing"
    assert json.loads((SITE / "openapi.json").read_text())["paths"].keys() == doc["paths"].keys()


ARC42 = ["Introduction and goals", "Constraints", "Context and scope", "Solution strategy", "Building block view",
         "Runtime view", "Deployment view", "Cross-cutting concepts", "Architecture decisions", "Quality requirements",
         "Risks and technical debt", "Glossary"]


def test_the_architecture_page_has_the_twelve_arc42_sections_and_diagrams(site):
    page = page_of(site, "docs/architecture.md")
    body = page.read_text(encoding="utf-8")
    sections = [text for _, text in bd.h2s(body)]
    assert sections[:12] == [f"{i}. {title}" for i, title in enumerate(ARC42, 1)]
    assert body.count('<pre class="mermaid">') >= 8
    assert len(re.findall(r'<h3 id="adr-\d', body)) >= 7


def test_the_form_page_shows_every_screenshot(site):
    body = page_of(site, "docs/form.md").read_text(encoding="utf-8")
    for shot in sorted((REPO / "docs" / "screenshots").glob("*.png")):
        if shot.name.startswith("docs_"): continue
        assert f'src="screenshots/{shot.name}"' in body, f"{shot.name} is not on the form page"
        assert (SITE / "screenshots" / shot.name).is_file()


def test_the_reports_page_links_each_report_or_names_the_command_that_makes_it(site):
    text = text_of(SITE / "reports.html")
    for rel, title, _, cmd in bd.REPORT_FILES:
        assert (SITE / bd.report_href(rel)).is_file() or f"{title}: not generated yet; {cmd} writes it" in text
    assert "Monitoring" in text and "Training runs" in text


# -------------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def served_site(site):
    "The built site on a loopback HTTP server."
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        if os.environ.get("CI"): pytest.fail("CI must install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_the_home_page_renders_in_a_browser_with_its_sidebar(site, served_site, browser):
    from PIL import Image, ImageStat
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{served_site}/index.html")
    page.wait_for_load_state("networkidle")
    assert page.title() == bd.site_title()
    assert page.locator("main h1").inner_text() == bd.site_title()
    links = page.locator("nav.sidebar a").all_inner_texts()
    in_nav = [p for p in site["pages"] if p["in_nav"]]
    assert len(links) >= len(in_nav)
    for name in ("Home", "Configuration", "HTTP API reference", "The prediction form", "Architecture (arc42)", "Reports"):
        assert any(name in link for link in links), f"the sidebar has no link to {name}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "docs_home.png"
    page.screenshot(path=shot)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 900)
    assert ImageStat.Stat(image).stddev[0] > 20, "the screenshot is (nearly) blank"
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    assert all(u.startswith(served_site) or u.startswith("data:") for u in requested), "the page fetched from elsewhere"
    page.close()


def test_the_architecture_diagrams_are_drawn_by_the_vendored_mermaid(site, served_site, browser):
    if not site["mermaid"]: pytest.skip("this build had no mermaid.js (npm unreachable): the diagrams are shown as source")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{served_site}/architecture.html")
    blocks = page.locator("pre.mermaid").count()
    page.wait_for_function(f"document.querySelectorAll('pre.mermaid svg').length === {blocks}", timeout=60_000)
    assert "Syntax error" not in page.locator("article").inner_text()
    page.screenshot(path=SHOTS / "docs_architecture.png")
    page.close()
