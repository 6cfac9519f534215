"""The documentation site (`make docs`: Sphinx + MyST-NB + PyData theme, configured in docs/site/): every notebook a
page with its outputs and nbdev's directives honoured, every exported name documented, the HTTP reference listing every
route, the arc42 page with its diagrams drawn by the vendored mermaid in a real browser, the reports page, no broken
internal link and nothing loaded from another host.

The site is built once for the module with `make docs`; Sphinx rebuilds only what changed and jupyter-cache
(.docs-cache/) keeps the notebooks' executions, so a build of unchanged sources takes seconds.
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
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from conftest import REPO
from scripts.ui_tour import chromium_path, launch

sys.path.insert(0, str(REPO / "docs" / "site"))
import nbdev_cells  # noqa: E402
import site_pages  # noqa: E402

SITE = REPO / "_docs"
NBS = REPO / "nbs"
SHOTS = Path(os.environ.get("INCOMEOPS_SCREENSHOTS", REPO / "reports" / "screenshots"))
pytestmark = pytest.mark.timeout(1800)     # a cold build executes every notebook
NOTEBOOKS = sorted(NBS.glob("[0-9]*.ipynb"))


@pytest.fixture(scope="module")
def site() -> Path:
    "_docs/ as `make docs` builds it (warnings, broken references and failing notebooks fail the build)."
    res = subprocess.run(["make", "--no-print-directory", "docs"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, f"make docs failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return SITE


def page_of(nb: Path) -> Path:
    "The page built from a notebook of nbs/ (nbs/index.ipynb is the home page)."
    return SITE / "index.html" if nb.name == "index.ipynb" else SITE / "nbs" / f"{nb.stem}.html"


def plain(markup: str) -> str:
    "HTML as text: tags removed, entities decoded, white space collapsed."
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def article(path: Path) -> str:
    "The page's main content (without the theme's navigation)."
    body = path.read_text(encoding="utf-8")
    m = re.search(r'<article class="bd-article">(.*?)</article>', body, re.S)
    assert m, f"{path.name} has no article"
    return m[1]


def code_inputs(path: Path) -> list[str]:
    "The source shown in a notebook page's input cells."
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(r'<div class="cell_input[^"]*">.*?<pre>(.*?)</pre>', article(path), re.S)]


def title_of(nb: Path) -> str:
    "A notebook's title: its first Markdown heading."
    first = next(c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "markdown")
    return re.match(r"#\s+(.+)", first.source.strip())[1].strip()


class Links(HTMLParser):
    "The ids of a page and the URLs it links to or loads."
    def __init__(self):
        super().__init__()
        self.ids, self.urls = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key): self.urls.append((tag, key, a[key]))


@functools.cache
def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def pages() -> list[Path]:
    "The site's HTML pages (not the copied reports, which are the jobs' own files)."
    return [p for p in SITE.rglob("*.html") if "reports" not in p.relative_to(SITE).parts[:1]
            and "_static" not in p.relative_to(SITE).parts]


# -------------------------------------------------------------------------------------------------- notebook pages


def test_every_notebook_but_the_pipelines_has_a_page_with_its_outputs(site):
    with_outputs = []
    for nb in [NBS / "index.ipynb", *NOTEBOOKS]:
        page = page_of(nb)
        assert page.is_file(), f"{nb.name} has no page"
        body = article(page)
        h1 = plain(re.search(r"<h1>(.*?)</h1>", body, re.S)[1]).rstrip("#").strip()
        assert h1 == title_of(nb), f"{page.name} lacks the title of {nb.name}"
        if 'class="cell_output' in body: with_outputs.append(nb.stem)
    assert len(with_outputs) >= 15, with_outputs           # some notebooks only test (their cells print nothing)
    for name in ("03_exploration", "06_evaluation"):        # tables and plots
        body = article(page_of(NBS / f"{name}.ipynb"))
        assert re.search(r'<img[^>]+src="\.\./_images/[^"]+\.png"', body), f"{name} lacks its plots"
        assert 'class="dataframe' in body, f"{name} lacks its tables"
    assert not (SITE / "nbs" / "pipelines").exists()        # they train and register models: `make train`


def test_hidden_cells_and_directive_lines_are_not_on_the_pages(site):
    for nb in NOTEBOOKS:
        page = page_of(nb)
        blocks = code_inputs(page)
        assert blocks, f"{page.name} shows no code"
        assert not any(ln.lstrip().startswith("#|") for b in blocks for ln in b.splitlines()), f"{page.name} shows a #| line"
        assert "default_exp" not in plain(article(page)), f"{page.name} shows its default_exp cell"
        assert not any("show_doc(" in b for b in blocks), f"{page.name} shows a show_doc cell's input"


def test_nbdev_directives_become_cell_tags_and_exports_get_a_show_doc_cell():
    "The reader MyST-NB uses (docs/site/nbdev_cells.py), on a notebook made for the purpose."
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#| default_exp docs_probe"),
        nbformat.v4.new_markdown_cell("# A test notebook"),
        nbformat.v4.new_code_cell("#| hide\nSECRET_OF_THE_HIDDEN_CELL = 42"),
        nbformat.v4.new_code_cell('#| export\ndef probe_double(x: int) -> int:\n    "Twice `x`."\n    return 2 * x'),
        nbformat.v4.new_code_cell("#| echo: false\nprint('only the output')"),
        nbformat.v4.new_code_cell("#| eval: false\nraise SystemExit"),
        nbformat.v4.new_code_cell("probe_double(21)")])
    out = nbdev_cells.read(nbformat.writes(nb))
    nbformat.validate(out)
    by_source = {c.source: c.metadata.get("tags", []) for c in out.cells if c.cell_type == "code"}
    assert not any("#|" in s for s in by_source), "a directive line is left in a cell"
    assert by_source["SECRET_OF_THE_HIDDEN_CELL = 42"] == ["remove-cell"]
    assert by_source["print('only the output')"] == ["remove-input"]
    assert by_source["raise SystemExit"] == ["skip-execution"]
    assert by_source["probe_double(21)"] == []
    assert by_source[""] == ["remove-cell"]                            # the default_exp cell
    sources = [c.source for c in out.cells]
    export = next(i for i, s in enumerate(sources) if s.startswith("def probe_double"))
    shown = "show_doc(probe_double, renderer=SiteShowDoc)"
    assert sources[export + 1] == shown and by_source[shown] == ["remove-input"]
    assert by_source[nbdev_cells.SHOW_DOC_IMPORT] == ["remove-cell"]
    assert out == nbdev_cells.read(nbformat.writes(nb)), "the same notebook must give the same cells (the cache key)"


def exported(nb: Path) -> tuple[str, list[str]] | None:
    "The module a notebook exports to and its documented functions and classes (from `__all__`)."
    cells = nbformat.read(nb, as_version=4).cells
    m = next((re.search(r"#\|\s*default_exp\s+(\S+)", c.source) for c in cells if "default_exp" in c.source), None)
    if m is None: return None
    module = importlib.import_module(f"incomeops.{m[1]}")
    names = [n for n in module.__all__ if (inspect.isfunction(o := getattr(module, n)) or inspect.isclass(o))
             and o.__module__ == module.__name__]
    return module.__name__, names


def test_every_exported_function_and_class_is_documented_on_its_page_and_in_the_library_reference(site):
    checked = 0
    for nb in NOTEBOOKS:
        if (found := exported(nb)) is None: continue
        module, names = found
        shown = plain(article(page_of(nb)))
        ref = SITE / "reference" / f"{module}.html"
        assert ref.is_file(), f"{module} has no library reference page"
        ids = parse(ref).ids
        for name in names:
            assert f"{module}.{name}" in ids, f"{module}.{name} is missing from the library reference"
            assert name in shown, f"{module}.{name} has no show_doc on the page of {nb.name}"
            checked += 1
    assert checked > 50
    # show_doc's output is on the page: the signature and docstring of the settings object
    config = plain(article(page_of(NBS / "00_config.ipynb")))
    from incomeops.config import Settings
    assert inspect.getdoc(Settings).split("\n")[0] in config


# ---------------------------------------------------------------------------------------------- the other pages


def test_the_api_reference_lists_every_route_of_the_service(site):
    doc = site_pages.openapi_document()
    page = SITE / "api.html"
    ids, text = parse(page).ids, plain(article(page))
    routes = [(m, p) for p, ops in doc["paths"].items() for m in ops if m in {"get", "post", "put", "patch", "delete"}]
    assert len(routes) >= 10
    for method, path in routes:
        anchor = f"{method}-" + re.sub(r"[{}]", "", path).replace("/", "-")    # httpdomain's id: get--jobs-job_id
        assert anchor in ids, f"{method.upper()} {path} is missing from the API reference"
        summary = doc["paths"][path][method].get("summary")
        if summary: assert summary in text, f"the summary of {method.upper()} {path} is missing"
    assert json.loads((SITE / "openapi.json").read_text())["paths"].keys() == doc["paths"].keys()


ARC42 = ["Introduction and goals", "Constraints", "Context and scope", "Solution strategy", "Building block view",
         "Runtime view", "Deployment view", "Cross-cutting concepts", "Architecture decisions", "Quality requirements",
         "Risks and technical debt", "Glossary"]


def test_the_architecture_page_has_the_twelve_arc42_sections_and_its_diagrams(site):
    body = article(SITE / "docs" / "architecture.html")
    sections = [plain(h).rstrip("#").strip() for h in re.findall(r"<h2>(.*?)</h2>", body, re.S)]
    assert sections[:12] == [f"{i}. {title}" for i, title in enumerate(ARC42, 1)]
    assert body.count('class="mermaid"') >= 8
    assert len(re.findall(r'<section id="adr-\d', body)) >= 7


def test_the_form_page_shows_every_screenshot(site):
    body = article(SITE / "docs" / "form.html")
    for shot in sorted((REPO / "docs" / "screenshots").glob("*.png")):
        m = re.search(rf'<img[^>]+src="\.\./(_images/{re.escape(shot.name)})"', body)
        assert m, f"{shot.name} is not on the form page"
        assert (SITE / m[1]).read_bytes() == shot.read_bytes()


def test_the_reports_page_links_each_report_or_names_the_command_that_makes_it(site):
    body = article(SITE / "reports.html")
    text = plain(body)
    for rel, title, _, cmd in site_pages.REPORT_FILES:
        if (REPO / "reports" / rel).is_file() or (SITE / "reports" / rel).is_file():   # the job's or this build's
            assert f'href="reports/{rel}"' in body and (SITE / "reports" / rel).is_file(), f"{rel} is not linked"
        else:
            expected = f"{title}: not generated yet; {cmd.replace('`', '')} writes it"
            assert expected.replace(" ", "") in text.replace(" ", ""), f"no command for {rel}"
    assert "Training runs" in text and "Monitoring" in text


def test_no_internal_link_or_anchor_is_broken_and_nothing_loads_from_elsewhere(site):
    broken, remote = [], []
    for page in pages():
        for tag, key, url in parse(page).urls:
            parts = urlsplit(url)
            if parts.scheme in {"http", "https"} or url.startswith("//"):
                if tag in {"script", "img", "iframe"} or (tag == "link" and key == "href"): remote.append((page, url))
                continue
            if parts.scheme in {"mailto", "data", "javascript"}: continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir(): target = target / "index.html"
            if not target.is_file(): broken.append((page.relative_to(SITE), url)); continue
            if parts.fragment and target.suffix == ".html" and parts.fragment not in parse(target).ids:
                broken.append((page.relative_to(SITE), url))
    assert not broken, f"broken internal links: {broken[:20]}"
    assert not remote, f"pages load from another host: {remote[:10]}"
    # mermaid is served from the site itself
    assert (SITE / "_static" / site_pages.MERMAID_LOCAL).is_file()
    assert site_pages.MERMAID_LOCAL in (SITE / "docs" / "architecture.html").read_text(encoding="utf-8")


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
        pytest.skip("Debian's chromium is not installed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_the_home_page_renders_in_a_browser_with_its_navigation(site, served_site, browser):
    from PIL import Image, ImageStat
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{served_site}/index.html")
    page.wait_for_load_state("networkidle")
    title = title_of(NBS / "index.ipynb")
    assert page.title().startswith(title)
    assert page.locator("article h1").first.inner_text().rstrip("#").strip() == title
    links = " ".join(page.locator("nav a").all_text_contents())
    for name in ("Notebooks", "HTTP API reference", "Library reference", "Architecture (arc42)", "Reports"):
        assert name in links, f"the navigation has no link to {name}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "docs_home.png"
    page.screenshot(path=shot)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 900)
    assert ImageStat.Stat(image).stddev[0] > 20, "the screenshot is (nearly) blank"
    assert all(u.startswith(served_site) or u.startswith("data:") for u in requested), "the page fetched from elsewhere"
    page.close()


def test_the_full_text_search_finds_a_page(site, served_site, browser):
    page = browser.new_page()
    page.goto(f"{served_site}/search.html?q=champion+alias")
    results = page.locator("#search-results li")
    results.first.wait_for(timeout=30_000)
    assert results.count() >= 2
    page.close()


def test_the_architecture_diagrams_are_drawn_by_the_vendored_mermaid(site, served_site, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{served_site}/docs/architecture.html")
    blocks = page.locator(".mermaid").count()
    assert blocks >= 8
    page.wait_for_function(f"document.querySelectorAll('.mermaid svg').length >= {blocks}", timeout=60_000)
    assert "Syntax error" not in page.locator("article").inner_text()
    assert any(u.endswith("mermaid.esm.min.mjs") for u in requested)
    assert all(u.startswith(served_site) or u.startswith("data:") for u in requested), "the page fetched from elsewhere"
    page.screenshot(path=SHOTS / "docs_architecture.png")
    page.close()
