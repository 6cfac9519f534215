"""Build the documentation site into _docs/ with Python only (nbdev-docs needs Quarto, which cannot be installed here).

1. Every notebook in nbs/ except nbs/pipelines/ (which trains and registers models) is executed the way `make nbtest`
   runs it (nbdev's CaptureShell, two notebooks at a time, one thread each), keeping the outputs; a cell that fails
   fails the build. Executions are cached in .docs-cache/ by the content of the notebook, library and lock file.
2. Each executed notebook goes through nbdev's own docs processors, the ones `nbdev-proc-nbs` runs (`show_doc` for every
   exported name, `#| hide` and the other directives, links between names), into _proc/.
3. nbconvert renders them (nbs/index.ipynb is the home page) inside one layout with a sidebar in reading order.
4. Pages from docs/*.md (architecture, the form), an HTTP API reference from the service's OpenAPI document (also saved
   as openapi.json) and the generated reports are added. Nothing is loaded from a CDN: mermaid.js comes from the npm
   registry once and is kept in .docs-cache/ (git-ignored); without it diagrams are shown as their source.

Usage: python scripts/build_docs.py [--no-execute] [--force] [--jobs N] [--check-links]
  --no-execute   render the notebooks without running them (no outputs; a quick look at the layout)
  --force        execute every notebook even if .docs-cache/ holds an execution of the same sources
  --jobs N       notebooks executed in parallel (default 2)
  --check-links  check every internal link and #anchor of the generated pages; exit 1 if one is broken
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import html
import importlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import jinja2
import nbformat
import yaml
from markupsafe import Markup
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune
from nbformat.v4.rwbase import rejoin_lines
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC, OUT, DOCS, REPORTS = (ROOT / d for d in ("nbs", "_proc", "_docs", "docs", "reports"))
CACHE = ROOT / ".docs-cache"              # git-ignored: executed notebooks, their reports, the mermaid bundle
EXECUTED, RUN_REPORTS = CACHE / "executed", CACHE / "reports"
CELL_TIMEOUT = 600                        # seconds, as `cell_timeout` in [tool.nbdev]
MERMAID_VERSION = "12.3.0"
CSS, MERMAID_JS = "_static/site.css", "_static/mermaid.min.js"
DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
SHOW_DOC_DIRECTIVES = {"export", "exports", "exporti", "exec_doc"}
# as the Makefile sets for its jobs and `make nbtest`: no phoning home, one thread per notebook (two run at once)
EXECUTE_ENV = {"YDATA_PROFILING_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
               "OMP_NUM_THREADS": "1"}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# notebooks that write into reports/: while they run here, INCOMEOPS_REPORTS_DIR points at .docs-cache/reports/, so
# that the reports of `make profile` stay as they are (the Reports page falls back on these when reports/ has none)
REPORT_WRITERS = {"03_exploration.ipynb"}


@dataclass
class Page:
    "One HTML page of the site."
    out: str                  # path inside _docs/, POSIX style
    title: str
    section: str              # sidebar group ("" for the home page)
    source: str = ""          # the repository file it was built from (links to that file lead to this page)
    description: str = ""
    label: str = ""           # short prefix in the sidebar: a notebook's number
    body: str = ""            # rendered HTML content
    in_nav: bool = True       # listed in the sidebar (report sub-pages are reached from the Reports page)
    order: float = 0          # position in the sidebar within its section
    toc: bool = False         # list the page's h2 sections at its top and under its sidebar entry
    notes: list[str] = field(default_factory=list)   # shown at the top of the page
    headings: list[tuple[str, str]] = field(default_factory=list)  # (id, text) of the h2 sections, filled when written

    @property
    def nav_title(self) -> str:
        return "Home" if self.out == "index.html" else self.title

    @property
    def root(self) -> str:
        "Relative path from this page to the site root."
        return "../" * (len(PurePosixPath(self.out).parts) - 1)


WARNINGS: list[str] = []


def warn(msg: str) -> None:
    "Print a warning now and repeat it in the summary."
    WARNINGS.append(msg)
    print(f"  WARNING: {msg}", flush=True)


# ------------------------------------------------------------------------------------------- executing, processing


def discover_notebooks() -> list[Path]:
    "Notebooks in reading order, relative to nbs/: index (the home page), the numbered ones, the pipelines."
    home = [NBS / "index.ipynb"] if (NBS / "index.ipynb").is_file() else []
    found = home + sorted(NBS.glob("[0-9]*.ipynb")) + sorted((NBS / "pipelines").glob("*.ipynb"))
    return [p.relative_to(NBS) for p in found]


def runs_here(rel: Path) -> bool:
    "Whether the build executes nbs/`rel`: not the pipelines (they train and register models: `make train`)."
    return rel.parts[0] != "pipelines"


@cache
def code_digest() -> str:
    "A digest of what a notebook's outputs depend on besides itself: the library, the app, the locked environment."
    h = hashlib.sha256()
    for f in sorted([*ROOT.glob("incomeops/*.py"), *ROOT.glob("app/*.py"), ROOT / "uv.lock", ROOT / "pyproject.toml"]):
        if f.is_file(): h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


EXECUTOR = "nbdev CaptureShell v1"   # how notebooks are executed: part of the cache key


def execution_key(rel: Path) -> str:
    "When this changes, the cached execution of nbs/`rel` is stale."
    return hashlib.sha256((NBS / rel).read_bytes() + code_digest().encode() + EXECUTOR.encode()).hexdigest()


def cached_execution(rel: Path) -> str | None:
    "The executed copy of nbs/`rel` in .docs-cache/ (JSON) if it ran from the same notebook, library and environment."
    nb_file, key_file = EXECUTED / rel, (EXECUTED / rel).with_suffix(".key")
    if nb_file.is_file() and key_file.is_file() and key_file.read_text().strip() == execution_key(rel):
        return nb_file.read_text(encoding="utf-8")
    return None


def execute(rel: Path) -> tuple[str, str | None]:
    """Run nbs/`rel` as `nbdev-test` does (`make nbtest`): nbdev's `CaptureShell` in this process, from the notebook's
    folder, `IN_TEST=1`, the configured skip flags and cell timeout; but keep the outputs. The executed notebook (JSON)
    and, if a cell failed, its traceback."""
    from execnb.shell import CaptureShell
    from fastcore.nbio import nb2str
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.test import nb_test_cells

    src, cfg = NBS / rel, get_config()
    flags = cfg.get("tst_flags", "")
    flags = flags.split() if isinstance(flags, str) else list(flags or [])
    runs = {c.idx_ for c in nb_test_cells(src, flags)}
    nb = NBProcessor(src, rm_directives=False, process=True).nb
    env = {"IN_TEST": "1", **({"INCOMEOPS_REPORTS_DIR": str(RUN_REPORTS)} if rel.name in REPORT_WRITERS else {})}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    shell, error = CaptureShell(src, profile=bool(cfg.get("exec_profile", False))), None
    try:
        with working_directory(src.parent):
            shell.run_all(nb, exc_stop=True, preproc=lambda cell: cell.idx_ not in runs,
                          cell_timeout=int(cfg.get("cell_timeout", CELL_TIMEOUT)) or None)
    except BaseException as e:  # noqa: BLE001 - any failure of the notebook fails the build
        error = (shell.prettytb(fname=src) or f"{type(e).__name__}: {e}").strip()
    finally:
        shell.close()
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    text = nb2str(nb)
    if error is None:
        (EXECUTED / rel).parent.mkdir(parents=True, exist_ok=True)
        (EXECUTED / rel).write_text(text, encoding="utf-8")
        (EXECUTED / rel).with_suffix(".key").write_text(execution_key(rel) + "\n")
    return text, error


def import_only_source(source: str) -> str | None:
    "The top-level import statements of `source`, if it has other statements too (else None)."
    try: tree = ast.parse(source)
    except SyntaxError: return None
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    if len(imports) == len(tree.body): return None
    return "\n".join(ast.unparse(n) for n in imports)


def nbdev_process(text: str, src: Path) -> str:
    """The notebook `text` (JSON) processed by nbdev's docs processors (`FilterDefaults`, as nbdev-proc-nbs runs them),
    with one change: where nbdev would run a whole cell because it contains an import, only its import statements run
    (nbdev's rule runs test code that needs the notebook's earlier cells and aborts: see its FAQ on imports mixed with
    code)."""
    from fastcore.nbio import dict2nb, nb2str
    from nbdev.processors import FilterDefaults, exec_show_docs

    class ExecShowDocs(exec_show_docs):
        "nbdev's `exec_show_docs`, running only the imports of cells that are neither exported nor `show_doc` cells."
        def __call__(self, cell):
            direct = cell.cell_type == "code" and (set(cell.directives_) & SHOW_DOC_DIRECTIVES or
                                                    re.search(r"^show_doc", cell.source, re.M))
            only = None if direct or cell.cell_type != "code" else import_only_source(cell.source)
            if only is None: return super().__call__(cell)
            if not self.nb.has_docs_ or not hasattr(self, "k"): return
            if only: self.k.run(only)
            if self.k.exc: raise Exception(f"Error in {src.name} running the imports of cell {cell.idx_}: "
                                           f"{type(self.k.exc).__name__}: {self.k.exc}") from self.k.exc

    class Defaults(FilterDefaults):
        def base_procs(self): return [ExecShowDocs if p is exec_show_docs else p for p in super().base_procs()]

    nb = dict2nb(json.loads(text))
    nb["path_"] = str(src)
    old = os.environ.get("IN_TEST")
    os.environ["IN_TEST"] = "1"           # as nbdev-proc-nbs does
    try: Defaults()(nb)
    finally:
        if old is None: os.environ.pop("IN_TEST", None)
        else: os.environ["IN_TEST"] = old
    return nb2str(nb)


def prepare(rel: Path, run: bool, force: bool) -> dict:
    "Execute (or reuse an execution of) nbs/`rel`, then process it for the docs into _proc/. Runs in a worker process."
    os.chdir(ROOT)                        # nbdev reads pyproject.toml from the working directory
    started, result = time.perf_counter(), {"rel": rel, "error": None, "executed": "no", "exec_s": 0.0}
    text = None
    if run and not force and (text := cached_execution(rel)) is not None: result["executed"] = "cached"
    elif run:
        text, result["error"] = execute(rel)
        result["executed"] = "failed" if result["error"] else "yes"
    else: text = (NBS / rel).read_text(encoding="utf-8")
    result["exec_s"], started = time.perf_counter() - started, time.perf_counter()
    try:
        processed = nbdev_process(text, NBS / rel)
        (PROC / rel).parent.mkdir(parents=True, exist_ok=True)
        (PROC / rel).write_text(processed, encoding="utf-8")
        result["nb"] = processed
    except Exception as e:  # noqa: BLE001 - shown on the page and fails the build
        result["proc_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        result["nb"] = text
    result["proc_s"] = time.perf_counter() - started
    return result


def prepare_all(notebooks: list[Path], run: bool, force: bool, jobs: int) -> dict[Path, dict]:
    "Execute and process every notebook, `jobs` at a time (one worker process each); rel -> result of `prepare`."
    for k, v in EXECUTE_ENV.items(): os.environ.setdefault(k, v)        # inherited by the workers
    slow_first = ("07_tuning.ipynb", "12_predictor.ipynb", "05_training.ipynb", "04_features.ipynb")
    todo = sorted(notebooks, key=lambda rel: slow_first.index(rel.name) if rel.name in slow_first else len(slow_first))
    fresh = [rel for rel in todo if run and runs_here(rel) and (force or cached_execution(rel) is None)]
    print(f"Notebooks: {len(notebooks)}; executing {len(fresh)} ({jobs} at a time, one thread each), "
          f"{sum(run and runs_here(r) for r in todo) - len(fresh)} unchanged since their cached execution", flush=True)
    results: dict[Path, dict] = {}
    # the workers find `prepare` in this file imported as a module: nbdev's IPython shell replaces their __main__
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    work = importlib.import_module("scripts.build_docs").prepare
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(work, rel, run and runs_here(rel), force) for rel in todo]):
            r = fut.result()
            results[r["rel"]] = r
            what = {"yes": f"executed in {r['exec_s']:.1f}s", "cached": "cached execution", "no": "not executed",
                    "failed": f"FAILED after {r['exec_s']:.1f}s"}[r["executed"]]
            print(f"  nbs/{r['rel']}: {what}; processed in {r['proc_s']:.1f}s"
                  + (f"; nbdev processing FAILED: {r['proc_error']}" if r.get("proc_error") else ""), flush=True)
            if r["error"]: print("    " + r["error"].replace("\n", "\n    "), flush=True)
    return results


# ---------------------------------------------------------------------------------------------- notebook pages


def sanitize(nb: nbformat.NotebookNode) -> None:
    "Keep what nbconvert needs: drop the metadata nbdev adds (`has_sd`, timings) and widget views (they need a CDN)."
    nb.metadata = nbformat.NotebookNode({k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")})
    for cell in nb.cells:
        for key in set(cell) - {"id", "cell_type", "metadata", "source", "attachments", "outputs", "execution_count"}:
            del cell[key]
        cell.metadata = nbformat.NotebookNode({k: v for k, v in cell.metadata.items() if k == "tags"})
        for out in cell.get("outputs", []):
            if WIDGET_MIME in out.get("data", {}): del out["data"][WIDGET_MIME]
        if cell.get("outputs"): cell.outputs = [o for o in cell.outputs if o.get("output_type") not in ("display_data",)
                                                or o.get("data")]


def pop_frontmatter(nb: nbformat.NotebookNode) -> dict:
    "Remove nbdev's frontmatter raw cell; its fields (title, description, output-file)."
    if nb.cells and nb.cells[0].cell_type == "raw":
        if m := re.match(r"\s*---\n(.*?)\n---", nb.cells[0].source, re.S):
            nb.cells.pop(0)
            return yaml.safe_load(m[1]) or {}
    return {}


def split_directives(source: str) -> tuple[dict[str, str], str]:
    "A cell's `#|` directives (name -> lower-case value) and its source without the directive lines."
    found, kept = {}, []
    for line in source.splitlines():
        if m := DIRECTIVE.match(line): found[m[1]] = m[2].lower()
        else: kept.append(line)
    return found, "\n".join(kept).strip("\n")


def apply_directives(nb: nbformat.NotebookNode) -> None:
    """Act on the directives nbdev leaves for the renderer (Quarto's `echo`, `output`, `include`, and `hide` for an
    unprocessed notebook) and remove every directive line from the code shown."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "AUTOGENERATED! DO NOT EDIT!" in cell.source: continue
        if cell.cell_type != "code": cells.append(cell); continue
        dirs, cell.source = split_directives(cell.source)
        if {"hide", "default_exp", "exporti"} & dirs.keys() or dirs.get("include") == "false": continue
        if dirs.get("output") == "false": cell.outputs = []
        if dirs.get("echo") == "false":
            if dirs.get("output") == "asis":  # raw Markdown output (nbdev's show_doc): inline it as a Markdown cell
                md = "\n".join(o.get("data", {}).get("text/markdown", "") for o in cell.outputs).strip()
                if md: cells.append(nbformat.v4.new_markdown_cell(md))
                continue
            cell.metadata.transient = {"remove_source": True}
        if cell.source.strip() or cell.outputs: cells.append(cell)
    nb.cells = cells


@cache
def exporter() -> HTMLExporter:
    "nbconvert's HTML exporter with the bare `basic` template (layout and CSS are ours), no prompts."
    return HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)


def source_title(src: Path) -> tuple[str, str]:
    "A notebook's title and description: its first `# heading` and the `> quote` under it (nbdev's convention)."
    for cell in nbformat.read(src, as_version=4).cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^#\s+(.+)$", cell.source, re.M)):
            quote = re.search(r"^>\s*(.+)$", cell.source[m.end():], re.M)
            return m[1].strip(), quote[1].strip() if quote else ""
    return src.stem, ""


def drop_title_cell(nb: nbformat.NotebookNode) -> None:
    "Without nbdev's processing: remove the `# title` and `> description` (the layout shows them)."
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.search(r"^#\s", cell.source, re.M):
            cell.source = re.sub(r"^#\s.*$|^>.*$", "", cell.source, count=2, flags=re.M).strip()
            break
    nb.cells = [c for c in nb.cells if c.source.strip() or c.get("outputs")]


def notebook_body(text: str, processed: bool = True) -> tuple[dict, str]:
    "A notebook (JSON text, processed by nbdev unless `processed` is False): its frontmatter, and its body as HTML."
    nb = rejoin_lines(nbformat.from_dict(json.loads(text)))   # not validated: see `sanitize`
    sanitize(nb)
    front = pop_frontmatter(nb)
    if not processed: drop_title_cell(nb)
    apply_directives(nb)
    return front, exporter().from_notebook_node(nb)[0]


def notebook_page(rel: Path, result: dict) -> Page:
    "The page of nbs/`rel` from its processed notebook (or, if nbdev failed on it, the executed one)."
    front, body = notebook_body(result["nb"], processed=not result.get("proc_error"))
    title, description = source_title(NBS / rel)
    title, description = str(front.get("title") or title), str(front.get("description") or description)
    number = re.match(r"^(\d+[a-z]?)_", rel.name)
    name = front.get("output-file") or re.sub(r"^\d+[a-z]?_", "", rel.stem) + ".html"
    out = "index.html" if rel == Path("index.ipynb") else (rel.parent / name).as_posix()
    notes = []
    if result.get("error"): notes.append("Executing this notebook failed: outputs stop at the failing cell.")
    if result.get("proc_error"): notes.append(f"nbdev could not process this notebook ({html.escape(result['proc_error'])}); "
                                              "it is shown without its API documentation.")
    if not runs_here(rel):
        notes.append("This notebook trains, evaluates and registers a model, so the site shows it without outputs. "
                     "<code>make train</code> runs it with Papermill; the executed notebook of every run is listed "
                     'under <a href="%sreports.html#training-runs">Reports</a>.' % ("../" * (len(rel.parts) - 1)))
    elif result["executed"] == "no":
        notes.append("Built with <code>--no-execute</code>: outputs are not shown.")
    section = "" if out == "index.html" else "Pipelines" if not runs_here(rel) else "Notebooks"
    return Page(out=out, title=title, section=section, source=f"nbs/{rel.as_posix()}", description=description,
                label=number[1] if number else "", body=body, notes=notes)


# -------------------------------------------------------------------------------------------------- Markdown pages


def markdown_html(text: str) -> str:
    "Markdown -> HTML with nbconvert's renderer, as in notebooks (heading anchors, Pygments, tables, mermaid blocks)."
    return markdown2html_mistune(text)


def front_matter(text: str) -> tuple[dict, str]:
    "A Markdown file's YAML front matter (between `---` lines) and the rest."
    if m := re.match(r"---\n(.*?)\n---\n", text, re.S): return yaml.safe_load(m[1]) or {}, text[m.end():]
    return {}, text


def markdown_page(src: Path, out: str, section: str, in_nav: bool = True, source: str = "") -> Page:
    """A page from a Markdown file. Front matter may set title, description, section, order and toc; else the leading
    `# heading` is the title."""
    meta, text = front_matter(src.read_text(encoding="utf-8"))
    if m := re.match(r"\s*#\s+(.+?)\s*\n", text): title, text = m[1], text[m.end():]
    else: title = src.stem.replace("_", " ").capitalize()
    return Page(out=out, title=str(meta.get("title", title)), section=str(meta.get("section", section)),
                source=source or src.relative_to(ROOT).as_posix(),
                description=str(meta.get("description", "")),
                body=markdown_html(text), in_nav=in_nav, order=float(meta.get("order", 0)), toc=bool(meta.get("toc")))


def docs_pages(taken: set[str]) -> list[Page]:
    "Pages from the hand-written docs/*.md, at the site root (docs/<name>.html if a notebook took the name)."
    pages = []
    for src in sorted(DOCS.glob("*.md")):
        out = f"{src.stem}.html"
        pages.append(markdown_page(src, out if out not in taken else f"docs/{out}", "Guides"))
    return pages


# ------------------------------------------------------------------------------------------------ API reference


def openapi_document() -> dict:
    "The HTTP service's OpenAPI document from `create_app(...)` (no model is loaded: that happens in the lifespan)."
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    from app.main import create_app
    from incomeops.config import Settings
    return create_app(Settings()).openapi()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-")


def op_id(method: str, path: str) -> str:
    "The anchor of an operation: `post-predict`, `get-jobs-job_id`."
    return slug(f"{method} {path}")


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def esc(value) -> str:
    return html.escape(str(value))


def code(value) -> str:
    return f"<code>{esc(value)}</code>"


def md_inline(text: str) -> str:
    "Escape `text` and render its `backtick` spans as code (OpenAPI and nbdev descriptions use them)."
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def type_html(s: dict) -> str:
    "A schema's type in a few words, with links to named schemas."
    if not isinstance(s, dict) or not s: return "any"
    if "$ref" in s: return f'<a href="#schema-{slug(ref_name(s["$ref"]))}"><code>{esc(ref_name(s["$ref"]))}</code></a>'
    for key in ("anyOf", "oneOf"):
        if key in s and "properties" not in s: return " | ".join(type_html(x) for x in s[key])
    if "const" in s: return code(json.dumps(s["const"]))
    if "enum" in s and "type" not in s: return "one of " + ", ".join(code(json.dumps(v)) for v in s["enum"])
    t = s.get("type", "object" if "properties" in s else "any")
    if isinstance(t, list): return " | ".join(esc(x) for x in t)
    if t == "array":
        bounds = [f"{k[:3]} {s[k]:,}" for k in ("minItems", "maxItems") if k in s]
        return f"array of {type_html(s.get('items', {}))}" + (f" ({', '.join(bounds)})" if bounds else "")
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"object of {type_html(s['additionalProperties'])}"
    return esc(t) + (f" ({esc(s['format'])})" if "format" in s else "")


def rules_html(s: dict) -> str:
    "A schema's constraints, allowed values and default."
    if not isinstance(s, dict): return ""
    alts = [x for key in ("anyOf", "oneOf") for x in s.get(key, []) if isinstance(x, dict)]
    words = []
    for x in [s, *alts]:
        for k, w in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
                     ("minLength", "length ≥"), ("maxLength", "length ≤")):
            if k in x: words.append(f"{w} {esc(x[k] if not isinstance(x[k], float) or not x[k].is_integer() else int(x[k]))}")
        if "pattern" in x: words.append(f"matches {code(x['pattern'])}")
        if "enum" in x and "type" in x: words.append("one of " + ", ".join(code(v) for v in x["enum"]))
    if "default" in s: words.append(f"default {code(json.dumps(s['default']))}")
    return "; ".join(words)


def example_of(s: dict, schemas: dict, depth: int = 0):
    "An example value for schema `s`: its own example if it has one, else one made from its type."
    if not isinstance(s, dict) or depth > 6: return None
    if "$ref" in s: return example_of(schemas.get(ref_name(s["$ref"]), {}), schemas, depth + 1)
    if s.get("examples"): return s["examples"][0]
    if "example" in s: return s["example"]
    if "default" in s and s["default"] is not None: return s["default"]
    if "const" in s: return s["const"]
    if s.get("enum"): return s["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in s and "properties" not in s:
            alts = [x for x in s[key] if x.get("type") != "null"] or s[key]
            return example_of(alts[0], schemas, depth + 1)
    t = s.get("type", "object" if "properties" in s else None)
    if t == "object":
        return {k: example_of(v, schemas, depth + 1) for k, v in s.get("properties", {}).items()}
    if t == "array": return [example_of(s.get("items", {}), schemas, depth + 1)]
    return {"string": "string", "integer": 0, "number": 0.0, "boolean": True, "null": None}.get(t)


def json_block(value) -> str:
    return f'<pre class="json">{esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>'


def properties_table(s: dict) -> str:
    "The fields of an object schema as a table: name, type, required, rules, description."
    props, required = s.get("properties", {}), set(s.get("required", []))
    if not props: return ""
    rows = "".join(f"<tr><td>{code(name)}</td><td>{type_html(p)}</td><td>{'yes' if name in required else ''}</td>"
                   f"<td>{rules_html(p)}</td><td>{md_inline(p.get('description', ''))}</td></tr>"
                   for name, p in props.items())
    return ('<table class="fields"><thead><tr><th>field</th><th>type</th><th>required</th><th>rules</th>'
            f"<th>description</th></tr></thead><tbody>{rows}</tbody></table>")


def schema_section(name: str, s: dict) -> str:
    "One named schema: description, fields, further rules, example and the JSON Schema itself."
    parts = [f'<h3 id="schema-{slug(name)}">{esc(name)}</h3>']
    if s.get("description"): parts.append(f"<p>{md_inline(s['description'])}</p>")
    if "properties" not in s: parts.append(f"<p>Type: {type_html(s)}</p>")
    parts.append(properties_table(s))
    if s.get("additionalProperties") is False: parts.append("<p>No other fields are accepted.</p>")
    for key in ("anyOf", "oneOf"):
        if key in s and "properties" in s:
            parts.append(f"<p>The object must also match {'one' if key == 'oneOf' else 'at least one'} of "
                         f"{len(s[key])} alternatives (see the JSON Schema below).</p>")
    if s.get("examples"):
        parts.append("<p>Examples:</p>" + "".join(json_block(x) for x in s["examples"]))
    parts.append(f"<details><summary>JSON Schema</summary>{json_block(s)}</details>")
    return "\n".join(parts)


def parameters_html(params: list[dict]) -> str:
    if not params: return ""
    rows = "".join(f"<tr><td>{code(p['name'])}</td><td>{esc(p['in'])}</td><td>{type_html(p.get('schema', {}))}</td>"
                   f"<td>{'yes' if p.get('required') else ''}</td><td>{rules_html(p.get('schema', {}))}</td>"
                   f"<td>{md_inline(p.get('description') or p.get('schema', {}).get('description', ''))}</td></tr>"
                   for p in params)
    return ('<h4>Parameters</h4><table class="fields"><thead><tr><th>name</th><th>in</th><th>type</th><th>required</th>'
            f"<th>rules</th><th>description</th></tr></thead><tbody>{rows}</tbody></table>")


def body_examples(media: dict, schemas: dict) -> list[tuple[str, object, bool]]:
    "Examples of a request or response body: (name, value, whether made from the schema)."
    if media.get("examples"): return [(k, v.get("value"), False) for k, v in media["examples"].items()]
    if "example" in media: return [("example", media["example"], False)]
    value = example_of(media.get("schema", {}), schemas)
    return [("example", value, True)] if value is not None else []


def curl_html(method: str, path: str, op: dict, schemas: dict) -> str:
    "A curl command for the operation, with the first example body."
    url = "http://127.0.0.1:8000" + re.sub(r"\{(\w+)\}", lambda m: f"<{m[1]}>", path)
    cmd = ["curl -s"] + ([f"-X {method.upper()}"] if method != "get" else []) + [f"'{url}'"]
    if "403" in op.get("responses", {}): cmd.append("-H \"X-API-Key: $INCOMEOPS_API_KEY\"")
    media = op.get("requestBody", {}).get("content", {}).get("application/json")
    if media and (examples := body_examples(media, schemas)):
        cmd += ["-H 'content-type: application/json'", f"-d '{json.dumps(examples[0][1])}'"]
    return f'<pre class="curl">{esc(" ".join(cmd))}</pre>'


def operation_html(method: str, path: str, op: dict, schemas: dict) -> str:
    "One endpoint: summary, parameters, request body, responses, examples."
    parts = [f'<section class="operation"><h3 id="{op_id(method, path)}"><span class="method {method}">{method.upper()}'
             f"</span> <code>{esc(path)}</code></h3>"]
    if op.get("summary"): parts.append(f'<p class="summary">{md_inline(op["summary"])}</p>')
    if op.get("description"): parts.append(markdown_html(op["description"]))
    parts.append(curl_html(method, path, op, schemas))
    parts.append(parameters_html(op.get("parameters", [])))
    if body := op.get("requestBody"):
        parts.append(f"<h4>Request body{' (required)' if body.get('required') else ''}</h4>")
        for mime, media in body.get("content", {}).items():
            parts.append(f"<p>{code(mime)}: {type_html(media.get('schema', {}))}</p>")
            for name, value, made in body_examples(media, schemas):
                parts.append(f"<p class=\"example-name\">Example <em>{esc(name)}</em>{' (from the schema)' if made else ''}:</p>"
                             + json_block(value))
    rows = []
    for status, resp in op.get("responses", {}).items():
        content = resp.get("content", {})
        kinds = "; ".join(f"{code(mime)} {type_html(m.get('schema', {}))}" for mime, m in content.items()) or "no body"
        rows.append(f"<tr><td>{code(status)}</td><td>{md_inline(resp.get('description', ''))}</td><td>{kinds}</td></tr>")
    parts.append('<h4>Responses</h4><table class="fields"><thead><tr><th>status</th><th>meaning</th><th>body</th></tr>'
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    ok = next((r for s, r in op.get("responses", {}).items() if s.startswith("2")), {})
    if media := ok.get("content", {}).get("application/json"):
        for _, value, made in body_examples(media, schemas)[:1]:
            parts.append(f"<p class=\"example-name\">Example answer{' (from the schema)' if made else ''}:</p>" + json_block(value))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(doc: dict) -> list[tuple[str, str, dict]]:
    "Every (method, path, operation) of an OpenAPI document, in its order."
    return [(m, path, op) for path, item in doc.get("paths", {}).items() for m, op in item.items() if m in METHODS]


def api_page(doc: dict) -> Page:
    "The HTTP API reference: an index of endpoints, each endpoint by tag, then every named schema."
    schemas = doc.get("components", {}).get("schemas", {})
    ops = operations(doc)
    info = doc.get("info", {})
    parts = [markdown_html(info.get("description", "")),
             f"<p>Version {esc(info.get('version', ''))}, OpenAPI {esc(doc.get('openapi', ''))}. The machine-readable "
             'document is <a href="openapi.json">openapi.json</a>; a running service also serves it at '
             "<code>/openapi.json</code>, with interactive documentation at <code>/docs</code>. Errors share one body, "
             f'{type_html({"$ref": "#/components/schemas/ErrorBody"})}: a sentence in <code>detail</code> and, for '
             "invalid input, one entry per offending field in <code>errors</code> (the values sent are never echoed).</p>",
             '<h2 id="endpoints">Endpoints</h2><table class="fields"><thead><tr><th>endpoint</th><th>tag</th><th>summary</th>'
             "</tr></thead><tbody>"]
    parts += [f'<tr><td><a href="#{op_id(m, p)}"><code>{m.upper()} {esc(p)}</code></a></td><td>{esc(", ".join(op.get("tags", [])))}'
              f"</td><td>{md_inline(op.get('summary', ''))}</td></tr>" for m, p, op in ops]
    parts.append("</tbody></table>")
    tags = list(dict.fromkeys(t for _, _, op in ops for t in op.get("tags", ["other"])))
    for tag in tags:
        parts.append(f'<h2 id="tag-{slug(tag)}">{esc(tag.capitalize())}</h2>')
        parts += [operation_html(m, p, op, schemas) for m, p, op in ops if (op.get("tags") or ["other"])[0] == tag]
    parts.append('<h2 id="schemas">Schemas</h2>')
    parts += [schema_section(name, s) for name, s in schemas.items()]
    return Page(out="api.html", title="HTTP API reference", section="Service", source="app/main.py", order=1, toc=True,
                description=f"Every endpoint of the {info.get('title', 'HTTP')} service, generated from its OpenAPI "
                            "document (`create_app(...).openapi()`).", body="\n".join(parts))


# ------------------------------------------------------------------------------------------------------- reports

REPORT_FILES = [  # (path in reports/, title, what it is, the command that writes it)
    ("profile.html", "Data profile", "the ydata-profiling report of the clean training data", "make profile"),
    ("exploration.html", "Exploration notebook, executed", "03_exploration as run by the profile job", "make profile"),
    ("exploration_summary.md", "Exploration summary", "the findings the exploration asserts, in numbers", "make profile"),
    ("champion/model_card.md", "Model card of the champion", "the promoted model: data, metrics, slices, limits",
     "make train"),
]
CHAMPION_TABLES = [("champion/slices.csv", "Results by group (slices)"), ("champion/leaderboard.csv", "Leaderboard of the model families"),
                   ("champion/tuning_trials.csv", "Tuning trials"), ("champion/feature_importance.csv", "Permutation importance")]
MONITORING_FILES = [  # (title, what writes it)
    ("Drift report (Evidently, HTML)", "the monitoring job (<code>incomeops monitor</code> or <code>POST /jobs/monitor</code>) "
     "writes <code>reports/monitoring/drift.html</code>"),
    ("Scenario table of the replay simulator (Markdown)", "<code>incomeops simulate</code> writes it while it replays "
     "adult.test through a fresh service per scenario (it starts them itself)"),
    ("Timeline of the replay (PNG)", "<code>incomeops simulate</code> writes it with the scenario table")]


def report_href(rel: str) -> str:
    "The site path of a file in reports/ (Markdown files are rendered as HTML pages)."
    return "reports/" + (rel[:-3] + ".html" if rel.endswith(".md") else rel)


def report_files() -> list[str]:
    "Files of reports/ as copied into the site (relative POSIX paths)."
    site = OUT / "reports"
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()) if site.is_dir() else []


def build_made(rel: str) -> bool:
    "Whether the site's copy of reports/`rel` comes from this build's run of the notebooks (reports/ had none)."
    return not (REPORTS / rel).is_file() and (RUN_REPORTS / rel).is_file()


def copy_reports() -> list[Page]:
    """Copy reports/ into the site, and what this build's notebook runs wrote (a minimal profile, the exploration
    summary) where reports/ has nothing; each Markdown report becomes a page."""
    site = OUT / "reports"
    if REPORTS.is_dir(): shutil.copytree(REPORTS, site, dirs_exist_ok=True)
    for f in (p for p in RUN_REPORTS.rglob("*") if p.is_file()) if RUN_REPORTS.is_dir() else []:
        rel = f.relative_to(RUN_REPORTS).as_posix()
        if build_made(rel):
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, site / rel)
    return [markdown_page(md, report_href(rel), "Reports", in_nav=False, source=f"reports/{rel}")
            for md in sorted(site.rglob("*.md")) if (rel := md.relative_to(site).as_posix())] if site.is_dir() else []


def missing(title: str, cmd: str) -> str:
    return f'<li class="missing">{esc(title)}: not generated yet; <code>{cmd}</code> writes it.</li>'


def link_item(rel: str, title: str, what: str = "") -> str:
    return f'<li><a href="{report_href(rel)}">{esc(title)}</a>{": " + esc(what) if what else ""}</li>'


def figures_html(files: list[str]) -> str:
    return '<div class="figures">' + "".join(
        f'<figure><a href="reports/{f}"><img src="reports/{f}" alt="{esc(Path(f).stem.replace("_", " "))}"></a>'
        f"<figcaption>{esc(Path(f).stem.replace('_', ' '))}</figcaption></figure>" for f in files) + "</div>"


def reports_page() -> Page:
    "Links to every generated report; for each one missing, the command that makes it."
    files = report_files()
    parts = ["<p>The project's jobs write their reports into <code>reports/</code>; the build copies them here. "
             "<code>make all</code> produces the data and model reports; a fresh clone has none yet, and each entry "
             "below then names the command that writes it.</p>",
             '<h2 id="data-and-model">Data and model</h2><ul>']
    for rel, title, what, cmd in REPORT_FILES:
        if rel in files and build_made(rel):
            parts.append(link_item(rel, title, f"{what} (from this build's run of 03_exploration, minimal profile; "
                                               f"{cmd} writes the explorative one)"))
        elif rel in files: parts.append(link_item(rel, title, what))
        else: parts.append(missing(title, cmd))
    parts.append("</ul>")
    if tables := [(rel, title) for rel, title in CHAMPION_TABLES if rel in files]:
        parts.append("<p>Tables of the champion's training run (CSV):</p><ul>" + "".join(link_item(r, t) for r, t in tables) + "</ul>")
    figures = [f for f in files if f.startswith("champion/") and f.endswith(".png")]
    parts.append('<h2 id="champion-figures">Evaluation plots of the champion</h2>')
    parts.append(figures_html(figures) if figures else
                 "<ul>" + missing("ROC, precision-recall, calibration, confusion and importance plots", "make train") + "</ul>")
    runs = sorted((f for f in files if re.fullmatch(r"runs/[^/]+\.html", f)), reverse=True)
    parts.append('<h2 id="training-runs">Training runs</h2><p>The executed training notebook (nbs/pipelines/train.ipynb '
                 "run by Papermill) of every run, newest first; the <code>.ipynb</code> next to each opens in Jupyter.</p><ul>")
    parts += [link_item(f, PurePosixPath(f).stem) for f in runs] or [missing("Executed training notebooks", "make train")]
    parts.append("</ul>")
    monitoring = [f for f in files if f.startswith("monitoring/")]
    parts.append('<h2 id="monitoring">Monitoring</h2>')
    if monitoring:
        for f in (f for f in monitoring if f.endswith(".md")):
            parts.append(markdown_html(re.sub(r"^#{1,2}\s.*\n", "", (REPORTS / f).read_text(encoding="utf-8"), count=1)))
        parts.append("<ul>" + "".join(link_item(f, f.removeprefix("monitoring/")) for f in monitoring
                                      if not f.endswith(".png")) + "</ul>")
        if pngs := [f for f in monitoring if f.endswith(".png")]: parts.append(figures_html(pngs))
    else:
        parts.append("<ul>" + "".join(f'<li class="missing">{esc(t)}: not generated yet; {how}.</li>'
                                      for t, how in MONITORING_FILES) + "</ul>")
    shown = {r for r, *_ in REPORT_FILES} | set(figures) | {f for f in files if f.startswith(("runs/", "champion/", "monitoring/"))}
    if others := [f for f in files if f not in shown and not f.endswith(".ipynb")]:
        parts += ['<h2 id="other-files">Other files</h2><ul>', *(link_item(f, f) for f in others), "</ul>"]
    return Page(out="reports.html", title="Reports", section="Reports", source="reports/", body="\n".join(parts),
                description="Data profile, model card, evaluation plots, training runs and monitoring.")


# ------------------------------------------------------------------------------------------------------- mermaid


def vendor_mermaid() -> Path | None:
    "mermaid.min.js from the npm registry (`npm pack`, no dependencies needed), cached in .docs-cache/npm/."
    folder = CACHE / "npm" / f"mermaid-{MERMAID_VERSION}"
    js = folder / "mermaid.min.js"
    if js.is_file(): return js
    npm = shutil.which("npm")
    if npm is None:
        warn("npm is not installed: Mermaid diagrams are shown as their source")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--pack-destination", tmp, "--silent"],
                             capture_output=True, text=True, timeout=300)
        tgz = next(Path(tmp).glob("mermaid-*.tgz"), None)
        if res.returncode or tgz is None:
            warn(f"npm pack mermaid@{MERMAID_VERSION} failed ({(res.stderr or res.stdout).strip()[-200:]}): "
                 "Mermaid diagrams are shown as their source")
            return None
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            for name, dst in (("package/dist/mermaid.min.js", js), ("package/LICENSE", folder / "LICENSE")):
                with tar.extractfile(name) as f: dst.write_bytes(f.read())
    print(f"  mermaid {MERMAID_VERSION} from the npm registry -> {js.relative_to(ROOT)}")
    return js


def mark_mermaid(body: str, have_js: bool) -> str:
    "Escape mermaid blocks (nbconvert leaves them raw); without mermaid.js, say that they are shown as source."
    body = re.sub(r'(<pre class="mermaid">)(.*?)(</pre>)', lambda m: m[1] + html.escape(m[2], quote=False) + m[3],
                  body, flags=re.S)
    if have_js: return body
    note = ('<p class="note">Diagram source (Mermaid): this build had no mermaid.js to draw it '
            "(it comes from the npm registry).</p>")
    return body.replace('<div class="jp-Mermaid">', f'<div class="jp-Mermaid mermaid-source">{note}')


# ------------------------------------------------------------------------------------------------ links, layout


@cache
def site_url() -> str:
    "The URL nbdev writes for links between documented names (`doc_host` + `doc_baseurl`); made relative here."
    try:
        from nbdev.config import get_config
        cfg = get_config()
        return f"{cfg.doc_host.rstrip('/')}/{cfg.doc_baseurl.strip('/')}/".replace("//", "/").replace(":/", "://")
    except Exception:  # noqa: BLE001 - the project's Documentation URL
        with open(ROOT / "pyproject.toml", "rb") as f: return tomllib.load(f)["project"]["urls"]["Documentation"]


@cache
def repo_url() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f: return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def site_path_of(repo_path: str, by_source: dict[str, str]) -> str | None:
    "Where a repository file is in the site: a notebook or Markdown page, a copied docs/ or reports/ file."
    if repo_path in by_source: return by_source[repo_path]
    if repo_path.startswith("docs/") and (DOCS / repo_path[5:]).is_file() and not repo_path.endswith(".md"):
        return repo_path[5:]
    if repo_path.startswith("reports/") and (OUT / repo_path).exists(): return repo_path
    return None


def local_url(url: str, page: Page, by_source: dict[str, str]) -> str:
    """`url` as the site needs it: nbdev's absolute doc links become relative; links to repository files (relative to
    the page's source; nbs/index.ipynb is written for the README at the root) lead to their page or copy, or to GitHub."""
    base = site_url()
    if url.startswith(base):
        path, _, frag = url[len(base):].partition("#")
        return page.root + (path or "index.html") + (f"#{frag}" if frag else "")
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path or url.startswith("/"): return url
    src_dir = "" if page.source in ("nbs/index.ipynb", "") else str(PurePosixPath(page.source).parent)
    repo_path = os.path.normpath(os.path.join(src_dir, unquote(parts.path))).replace(os.sep, "/")
    if repo_path.startswith("../"): return url
    frag = f"#{parts.fragment}" if parts.fragment else ""
    if (target := site_path_of(repo_path, by_source)) is not None: return page.root + target + frag
    if (ROOT / repo_path).exists() and not (OUT / PurePosixPath(page.out).parent / unquote(parts.path)).exists():
        return f"{repo_url()}/{'tree' if (ROOT / repo_path).is_dir() else 'blob'}/main/{repo_path}{frag}"
    return url


def fix_links(body: str, page: Page, by_source: dict[str, str]) -> str:
    "Turn Pandoc's `{target=...}` link attributes (nbdev's source links) into HTML and make internal links relative."
    body = re.sub(r'<a href="([^"]*)">([^<]*)</a>\{target="_blank"[^{}<>]*\}',
                  r'<a class="source-link" href="\1" target="_blank" rel="noopener">\2</a>', body)
    body = re.sub(r"(</a>)\{[^{}<>\n]*=[^{}<>\n]*\}", r"\1", body)

    def repl(m: re.Match) -> str:
        old = html.unescape(m[2])
        new = local_url(old, page, by_source)
        if new == old: return m[0]
        return f'{m[1]}="{html.escape(new)}"' + (' data-nbdev-link=""' if old.startswith(site_url()) else "")
    return re.sub(r'\b(href|src)="([^"]*)"', repl, body)


def pandoc_id(nbconvert_id: str) -> str:
    "Pandoc's (Quarto's) id for a heading: lower case, no punctuation but `_-.`, as nbdev's links expect."
    return html.escape(re.sub(r"[^\w\-.]", "", html.unescape(nbconvert_id).lower()))


def heading_ids(body: str) -> str:
    "Give headings (and their ¶ links) the ids Quarto would: nbdev links `config.html#settings` for `### Settings`."
    body = re.sub(r'(<h[1-6] id=")([^"]*)"', lambda m: f'{m[1]}{pandoc_id(m[2])}"', body)
    return re.sub(r'(<a class="anchor-link" href="#)([^"]*)"', lambda m: f'{m[1]}{pandoc_id(m[2])}"', body)


def h2s(body: str) -> list[tuple[str, str]]:
    "The (id, text) of a body's h2 headings."
    return [(m[1], html.unescape(re.sub(r"<[^>]+>", "", m[2])).replace("¶", "").strip())
            for m in re.finditer(r'<h2 id="([^"]+)"[^>]*>(.*?)</h2>', body, re.S)]


def ids_in(body: str) -> set[str]:
    return {html.unescape(m) for m in re.findall(r'\bid="([^"]*)"', body)}


def resolve_nbdev_anchors(bodies: dict[str, str]) -> dict[str, str]:
    """nbdev links every backticked name it knows, also names without a `show_doc` heading (methods, constants): point
    `page.html#cls.method` at `#cls` if that exists, else at the page, so that every anchor of the site resolves."""
    ids = {out: ids_in(body) for out, body in bodies.items()}

    def repl(m: re.Match, here: str) -> str:
        href = html.unescape(m[1])
        path, _, frag = href.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(here), path)).replace(os.sep, "/") if path else here
        if not frag or target not in ids or frag in ids[target]: return m[0]
        parent = frag.split(".")[0]
        new = f"{path}#{parent}" if parent in ids[target] else path or here.rsplit("/", 1)[-1]
        return f'href="{html.escape(new)}" data-nbdev-link=""'
    return {out: re.sub(r'href="([^"#]*#[^"]*)" data-nbdev-link=""', lambda m, o=out: repl(m, o), body)
            for out, body in bodies.items()}


LAYOUT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="scripts/build_docs.py">
<title>{{ page.title }}{% if page.out != "index.html" %} – {{ site }}{% endif %}</title>
<link rel="stylesheet" href="{{ root }}{{ css }}">
<link rel="icon" href="data:,">
</head>
<body>
<nav class="sidebar" aria-label="Site">
<a class="brand" href="{{ root }}index.html">{{ site }}</a>
{% for section, items in nav %}{% if section %}<h2>{{ section }}</h2>{% endif %}
<ul>
{% for p in items %}<li><a href="{{ root }}{{ p.out }}"{% if p.out == active %} class="active" aria-current="page"{% endif %}>
{%- if p.label %}<span class="num">{{ p.label }}</span>{% endif %}{{ p.nav_title }}</a>
{%- if p.out == page.out and page.toc and page.headings %}
<ul class="toc">{% for id, text in page.headings %}<li><a href="#{{ id }}">{{ text }}</a></li>{% endfor %}</ul>
{%- endif %}</li>
{% endfor %}</ul>
{% endfor %}</nav>
<main>
<header class="page-header">
<h1>{{ page.title }}</h1>
{% if page.description %}<p class="description">{{ description }}</p>{% endif %}
</header>
{% for note in notes %}<div class="note">{{ note }}</div>
{% endfor %}{% if page.toc and page.headings %}<nav class="page-toc" aria-label="On this page"><strong>On this page</strong><ol>
{% for id, text in page.headings %}<li><a href="#{{ id }}">{{ text }}</a></li>{% endfor %}</ol></nav>
{% endif %}<article>
{{ body }}
</article>
<nav class="pager" aria-label="Pages">
{% if prev %}<a href="{{ root }}{{ prev.out }}">← {{ prev.nav_title }}</a>{% else %}<span></span>{% endif %}
{% if next %}<a href="{{ root }}{{ next.out }}">{{ next.nav_title }} →</a>{% endif %}
</nav>
<footer>Generated from the notebooks in <code>nbs/</code>, <code>docs/</code>, the service's OpenAPI document and
<code>reports/</code> by <code>scripts/build_docs.py</code> (<code>make docs</code>).</footer>
</main>
{% if mermaid %}<script src="{{ root }}{{ mermaid }}"></script>
<script>mermaid.initialize({startOnLoad: true, securityLevel: "strict", theme: "neutral", sequence: {useMaxWidth: false}});</script>
{% endif %}</body>
</html>
"""

STYLE = """
:root { --sidebar: 17rem; --text: #1f2933; --muted: #64748b; --border: #e2e8f0; --accent: #1d4ed8; --code: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--text); font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--accent); }
.sidebar { position: fixed; inset: 0 auto 0 0; width: var(--sidebar); overflow-y: auto; padding: 1.25rem 1rem 2rem;
  background: #f8fafc; border-right: 1px solid var(--border); }
.sidebar .brand { display: block; font-size: 1.3rem; font-weight: 700; color: var(--text); text-decoration: none; }
.sidebar h2 { margin: 1.2rem 0 .3rem; font-size: .72rem; letter-spacing: .08em; text-transform: uppercase; color: var(--muted); border: 0; }
.sidebar ul { list-style: none; margin: 0; padding: 0; }
.sidebar li a { display: block; padding: .18rem .5rem; border-radius: 5px; color: var(--text); text-decoration: none; font-size: .92rem; }
.sidebar li a:hover { background: #eef2f7; }
.sidebar li a.active { background: #dbeafe; color: #1e3a8a; font-weight: 600; }
.sidebar ul.toc { margin: .1rem 0 .4rem .8rem; border-left: 2px solid #dbeafe; }
.sidebar ul.toc a { font-size: .82rem; padding: .08rem .5rem; color: var(--muted); }
.sidebar .num { display: inline-block; min-width: 1.8rem; color: var(--muted); font-size: .8rem; font-variant-numeric: tabular-nums; }
main { margin-left: var(--sidebar); max-width: calc(var(--sidebar) + 60rem); padding: 2rem 3rem 3rem; }
.page-header { border-bottom: 1px solid var(--border); margin-bottom: 1.5rem; }
.page-header h1 { margin: 0 0 .3rem; font-size: 2.2rem; line-height: 1.2; }
.page-header .description { margin: 0 0 1rem; color: var(--muted); font-size: 1.1rem; }
.page-toc { background: #f8fafc; border: 1px solid var(--border); border-radius: 6px; padding: .6rem 1rem; margin-bottom: 1.5rem; }
.page-toc ol { margin: .3rem 0 0; columns: 2; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid var(--border); padding-bottom: .2rem; }
h3 { margin-top: 1.6rem; }
a.anchor-link { margin-left: .35rem; color: var(--muted); text-decoration: none; visibility: hidden; font-size: .8em; }
:is(h1, h2, h3, h4, h5, h6):hover a.anchor-link { visibility: visible; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .86rem; }
:not(pre) > code { background: var(--code); padding: .1em .3em; border-radius: 4px; }
pre { margin: 0; overflow-x: auto; line-height: 1.45; }
pre.curl { white-space: pre-wrap; word-break: break-all; }
.highlight pre, article > pre, pre.json, pre.curl, .text_cell_render pre { background: var(--code); border: 1px solid var(--border);
  border-radius: 6px; padding: .7rem 1rem; margin: .4rem 0; }
.cell { margin: .6rem 0; }
.output_wrapper { margin: .3rem 0 1rem; border-left: 3px solid #cbd5e1; padding-left: .75rem; }
.output_area { overflow-x: auto; }
.output_area pre { padding: .35rem 0; }
.output_stderr pre { background: #fff8f8; color: #7f1d1d; }
.output_png img, .output_jpeg img, .output_svg svg, article img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; display: block; overflow-x: auto; }
th, td { border: 1px solid var(--border); padding: .3rem .6rem; vertical-align: top; }
thead th, tr:first-child th { background: #f1f5f9; }
a.source-link { float: right; font-size: .8rem; }
hr { border: 0; border-top: 1px solid var(--border); margin: 2rem 0 1rem; }
blockquote { margin: 1rem 0; padding: .2rem 1rem; border-left: 4px solid #93c5fd; background: #f8fafc; color: #334155; }
.note { margin: 1rem 0; padding: .6rem 1rem; background: #fff7ed; border: 1px solid #fed7aa; border-radius: 6px; }
.jp-Mermaid { margin: 1rem 0; overflow-x: auto; }
.mermaid-source pre { background: var(--code); border: 1px dashed #94a3b8; border-radius: 6px; padding: .7rem 1rem; }
.missing { color: var(--muted); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: 1rem; }
.figures figure { margin: 0; border: 1px solid var(--border); border-radius: 6px; padding: .5rem; text-align: center; }
.figures figcaption { color: var(--muted); font-size: .85rem; }
article p > img { border: 1px solid var(--border); border-radius: 6px; box-shadow: 0 1px 4px rgba(15, 23, 42, .08); }
.operation { border-top: 1px solid var(--border); margin-top: 1.5rem; }
.operation h3 code { font-size: 1rem; background: none; }
.method { display: inline-block; min-width: 4.2rem; text-align: center; border-radius: 4px; padding: 0 .4rem; color: #fff;
  font-size: .8rem; font-weight: 700; vertical-align: middle; }
.method.get { background: #15803d; } .method.post { background: #1d4ed8; } .method.delete { background: #b91c1c; }
.method.put, .method.patch { background: #a16207; }
.summary { font-weight: 600; }
.example-name { margin-bottom: 0; color: var(--muted); font-size: .9rem; }
details summary { cursor: pointer; color: var(--muted); font-size: .9rem; }
.pager { display: flex; justify-content: space-between; gap: 1rem; margin-top: 3rem; padding-top: 1rem; border-top: 1px solid var(--border); }
.pager a { text-decoration: none; }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
.ansi-red-fg { color: #b91c1c; } .ansi-green-fg { color: #15803d; } .ansi-yellow-fg { color: #a16207; }
.ansi-blue-fg { color: #1d4ed8; } .ansi-magenta-fg { color: #a21caf; } .ansi-cyan-fg { color: #0e7490; }
.ansi-bold { font-weight: bold; }
@media (max-width: 52rem) {
  .sidebar { position: static; width: auto; border-right: 0; border-bottom: 1px solid var(--border); }
  main { margin-left: 0; padding: 1rem; }
}
"""


def write_assets(mermaid: Path | None) -> None:
    "The stylesheet (layout plus Pygments colours), mermaid.js, and the non-Markdown files of docs/ (screenshots)."
    css = OUT / CSS
    css.parent.mkdir(parents=True, exist_ok=True)
    css.write_text(STYLE.lstrip() + HtmlFormatter(style="default").get_style_defs(".highlight") + "\n", encoding="utf-8")
    if mermaid:
        shutil.copy2(mermaid, OUT / MERMAID_JS)
        shutil.copy2(mermaid.parent / "LICENSE", OUT / "_static" / "mermaid.LICENSE.txt")
    for f in (p for p in DOCS.rglob("*") if p.is_file() and p.suffix != ".md") if DOCS.is_dir() else []:
        dst = OUT / f.relative_to(DOCS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)


SECTIONS = ["", "Notebooks", "Pipelines", "Service", "Architecture", "Guides", "Reports"]


def site_title() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f: conf = tomllib.load(f)
    return conf.get("tool", {}).get("nbdev", {}).get("title") or conf["project"]["name"]


def write_pages(pages: list[Page], mermaid: Path | None) -> None:
    "Write every page inside the layout, with the sidebar and previous/next links in reading order."
    key = lambda p: (SECTIONS.index(p.section) if p.section in SECTIONS else len(SECTIONS), p.section, p.order)
    order = sorted((p for p in pages if p.in_nav), key=key)          # stable: notebooks keep their reading order
    nav: list[tuple[str, list[Page]]] = []
    for p in order:
        if not nav or nav[-1][0] != p.section: nav.append((p.section, []))
        nav[-1][1].append(p)
    by_source = {p.source: p.out for p in pages if p.source.endswith((".ipynb", ".md"))}
    bodies = {p.out: mark_mermaid(fix_links(heading_ids(p.body), p, by_source), mermaid is not None) for p in pages}
    bodies = resolve_nbdev_anchors(bodies)
    layout = jinja2.Environment(autoescape=True, keep_trailing_newline=True).from_string(LAYOUT)
    for page in pages:
        body = bodies[page.out]
        page.headings = h2s(body)
        i = order.index(page) if page in order else None
        active = page.out if page.in_nav else next((p.out for p in order if p.section == page.section), "")
        text = layout.render(page=page, root=page.root, css=CSS, site=site_title(), nav=nav, active=active,
                             body=Markup(body), description=Markup(md_inline(page.description)),
                             notes=[Markup(n) for n in page.notes],
                             prev=order[i - 1] if i else None, next=order[i + 1] if i is not None and i + 1 < len(order) else None,
                             mermaid=MERMAID_JS if mermaid and 'class="mermaid"' in body else None)
        dst = OUT / page.out
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- link check


class LinkParser(HTMLParser):
    "The links (href/src) and the ids of an HTML page."

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids |= {v for k, v in attrs if v and (k == "id" or (tag == "a" and k == "name"))}
        self.links += [(tag, v) for k, v in attrs if k in ("href", "src") and v is not None]


@cache
def parse_html(path: Path) -> LinkParser:
    parser = LinkParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def link_problem(here: Path, tag: str, url: str) -> str | None:
    "What is wrong with the link `url` on the page `here`, if anything."
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") or url.startswith("//"):
        return "external script or stylesheet (the site must work offline)" if tag in ("script", "link", "img") else None
    if parts.scheme: return None  # data:, mailto:
    target = (here.parent / unquote(parts.path)).resolve() if parts.path else here
    if not target.is_relative_to(OUT.resolve()): return "points outside the site"
    if target.is_dir(): target = target / "index.html"
    if not target.is_file(): return "no such file"
    if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse_html(target).ids:
        return "no such anchor"
    return None


def check_links(outs: list[str]) -> list[tuple[str, str, str]]:
    """Check the internal links and anchors of the generated pages `outs` (paths in _docs/); list the external links
    (not fetched) in _docs/external-links.txt; the broken links as (page, url, problem)."""
    parse_html.cache_clear()
    broken, external, internal = [], {}, 0
    for out in outs:
        here = OUT / out
        for tag, url in parse_html(here).links:
            if url.startswith(("http://", "https://", "//")): external.setdefault(url, out)
            else: internal += 1
            if (problem := link_problem(here, tag, url)) is not None: broken.append((out, url, problem))
    print(f"\nLink check: {internal} internal links on {len(outs)} pages, {len(broken)} broken; "
          f"{len(external)} external links (listed in _docs/external-links.txt, not fetched)")
    (OUT / "external-links.txt").write_text("".join(f"{u}  (first on {p})\n" for u, p in sorted(external.items())))
    for src, url, why in broken: print(f"  BROKEN {src}: {url} ({why})")
    return broken


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true", help="render the notebooks without running them")
    ap.add_argument("--force", action="store_true", help="execute every notebook, ignoring cached executions")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks executed in parallel (default: 2)")
    ap.add_argument("--check-links", action="store_true", help="check internal links and anchors; exit 1 if one is broken")
    return ap.parse_args(argv)


def sources_digest() -> str:
    "A digest of everything the site is built from (but the reports): when it changes, a build is stale."
    h = hashlib.sha256(code_digest().encode())
    for f in sorted([*NBS.rglob("*.ipynb"), *DOCS.rglob("*"), Path(__file__).resolve()]):
        if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(ROOT).parts[:-1]):
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    "Build the site into _docs/; 1 if a notebook failed, nbdev could not process one, or (--check-links) a link broke."
    args, started = parse_args(argv), time.perf_counter()
    os.chdir(ROOT)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    notebooks = discover_notebooks()
    results = prepare_all(notebooks, not args.no_execute, args.force, args.jobs)
    t_notebooks = time.perf_counter() - started
    nb_pages = [notebook_page(rel, results[rel]) for rel in notebooks]
    doc = openapi_document()
    (OUT / "openapi.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    pages = nb_pages + docs_pages({p.out for p in nb_pages}) + [api_page(doc)] + copy_reports()
    pages.append(reports_page())
    mermaid = vendor_mermaid()
    write_assets(mermaid)
    write_pages(pages, mermaid)
    broken = check_links([p.out for p in pages]) if args.check_links else []
    failed = [f"nbs/{r['rel']}: a cell failed (traceback above)" for r in results.values() if r["error"]]
    failed += [f"nbs/{r['rel']}: nbdev processing: {r['proc_error']}" for r in results.values() if r.get("proc_error")]
    seconds = time.perf_counter() - started
    manifest = {"executed": not args.no_execute, "digest": sources_digest(), "mermaid": mermaid is not None,
                "seconds": round(seconds, 1), "notebook_seconds": round(t_notebooks, 1), "failed": failed,
                "links_checked": args.check_links, "broken_links": broken, "warnings": WARNINGS,
                "notebooks": {rel.as_posix(): {"executed": r["executed"], "seconds": round(r["exec_s"], 1)}
                              for rel, r in sorted(results.items())},
                "pages": [{"out": p.out, "title": p.title, "section": p.section, "source": p.source, "in_nav": p.in_nav}
                          for p in pages]}
    (OUT / "build.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"\nBuilt {len(pages)} pages into {OUT.relative_to(ROOT)}/ in {seconds:.1f}s "
          f"(notebooks {t_notebooks:.1f}s); open {OUT.relative_to(ROOT)}/index.html")
    for msg in WARNINGS: print(f"  WARNING: {msg}")
    for msg in failed: print(f"  FAILED: {msg}")
    return 1 if broken or failed else 0


if __name__ == "__main__":
    sys.exit(main())
