"""The source folder _site/ that Sphinx reads, assembled when the build starts (a Sphinx extension: `setup`).

- copies of nbs/ and docs/, and nbs/index.ipynb as the home page (its links are the README's, relative to the root);
- api.md: the HTTP API reference, rendered by sphinxcontrib-openapi from the service's OpenAPI document, made here in
  process (`create_app(...).openapi()`, no model loaded) and also published as openapi.json;
- reference.md: the library reference (autosummary + autodoc over incomeops.*);
- reports.md: a link to each report of reports/ (copied into the site) or the command that writes it;
- mermaid's ES module build from the npm registry (`npm pack`, once, kept in .docs-cache/npm/) in _static/mermaid/.
Files are rewritten only when their content changes, so that an unchanged rebuild reads nothing again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
SRC, REPORTS, CACHE = ROOT / "_site", ROOT / "reports", ROOT / ".docs-cache"
STATIC, EXTRA = SRC / "_static", SRC / "_extra"
MERMAID_VERSION = "11.12.1"
MERMAID_LOCAL = "mermaid/mermaid.esm.min.mjs"          # relative to _static/

# (file in reports/, title, what it is, the command that writes it, in Markdown)
REPORT_FILES = [
    ("profile.html", "Data profile", "the ydata-profiling report of the clean training data", "`make profile`"),
    ("exploration.html", "Exploration notebook, executed", "03_exploration as run by the profile job", "`make profile`"),
    ("exploration_summary.md", "Exploration summary", "the findings the exploration asserts, in numbers", "`make profile`"),
    ("champion/model_card.md", "Model card of the champion", "the promoted model: data, metrics, slices, limits", "`make train`"),
    ("champion/slices.csv", "Results by group (slices)", "the champion's metrics per group", "`make train`"),
    ("champion/leaderboard.csv", "Leaderboard of the model families", "every candidate's cross-validated score", "`make train`"),
    ("monitoring/drift.html", "Drift report (Evidently)", "live traffic against the training data",
     "the monitoring job (`incomeops monitor` or `POST /jobs/monitor`)"),
    ("monitoring/scenarios.md", "Scenario table of the replay simulator", "each scenario's alarms", "`incomeops simulate`"),
    ("monitoring/timeline.png", "Timeline of the replay", "the monitored signals during the replay", "`incomeops simulate`"),
]
SIMULATION_PICTURES = "docs/simulation"                 # committed pictures of `make detection`


def write(path: Path, text: str) -> None:
    "Write `text` unless the file already holds it."
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text: path.write_text(text, encoding="utf-8")


def sources() -> dict[Path, Path]:
    "Where each source file goes in _site/: nbs/index.ipynb at the root, the other notebooks in nbs/, docs/ as it is."
    found = {SRC / "index.ipynb": ROOT / "nbs" / "index.ipynb"}
    found |= {SRC / "nbs" / p.name: p for p in (ROOT / "nbs").glob("[0-9]*.ipynb")}
    found |= {SRC / p.relative_to(ROOT): p for p in (ROOT / "docs").rglob("*")
              if p.is_file() and "site" not in p.relative_to(ROOT / "docs").parts[:1]}
    return found


def copy_sources() -> None:
    """Copy the sources into _site/ (copies, not links: MyST resolves links between pages by real paths), only those
    that changed, and remove what is no longer a source. Notebooks execute in _site/nbs/, under the repository root."""
    wanted = sources()
    for dst, src in wanted.items():
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)           # a fresh mtime: Sphinx reads it again
    for folder in (SRC / "nbs", SRC / "docs"):
        for f in (p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
            if f not in wanted and f.suffix in {".ipynb", ".md", ".png", ".json"}: f.unlink()


def openapi_document() -> dict:
    "The HTTP service's OpenAPI document from `create_app(...)` (no model is loaded: that happens in the lifespan)."
    from app.main import create_app
    from incomeops.config import Settings
    return create_app(Settings()).openapi()


def api_page() -> None:
    doc = openapi_document()
    write(EXTRA / "openapi.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
    write(SRC / "api.md", f"""# HTTP API reference

{doc["info"].get("description", "")}

The service's OpenAPI {doc["openapi"]} document, as `create_app()` builds it: {{download}}`openapi.json <_extra/openapi.json>`.
A running service also serves it at `/openapi.json`, with Swagger UI at `/docs`.

```{{eval-rst}}
.. openapi:: _extra/openapi.json
   :examples:
```
""")


def reference_page() -> None:
    mods = sorted(p.stem for p in (ROOT / "incomeops").glob("*.py") if not p.stem.startswith("_"))
    rows = "\n".join(f"   incomeops.{m}" for m in mods)
    write(SRC / "reference.md", f"""# Library reference

Every module of the `incomeops` package (exported from the notebooks by nbdev), from its docstrings and signatures.
Each notebook's page shows the same documentation next to the code and its examples.

```{{eval-rst}}
.. autosummary::
   :toctree: reference
   :nosignatures:

{rows}
```
""")


def copy_reports() -> dict[str, bool]:
    """reports/ into the site's reports/ (as it is), and what this build's run of the notebooks wrote (a minimal
    profile, the exploration summary: see nbdev_cells.DOCS_REPORTS) where reports/ has nothing; relative POSIX path
    of each copied file -> whether it comes from this build."""
    site = EXTRA / "reports"
    if site.exists(): shutil.rmtree(site)
    site.mkdir(parents=True)
    if REPORTS.is_dir(): shutil.copytree(REPORTS, site, ignore=shutil.ignore_patterns("*.ipynb", "screenshots"),
                                         dirs_exist_ok=True)
    made = {p.relative_to(site).as_posix(): False for p in site.rglob("*") if p.is_file()}
    from nbdev_cells import DOCS_REPORTS
    for f in (p for p in DOCS_REPORTS.rglob("*") if p.is_file()) if DOCS_REPORTS.is_dir() else []:
        if (rel := f.relative_to(DOCS_REPORTS).as_posix()) not in made and not rel.endswith(".ipynb"):
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, site / rel)
            made[rel] = True
    return dict(sorted(made.items()))


def reports_page() -> None:
    files = copy_reports()
    lines = ["# Reports", "", "The project's jobs write their reports into `reports/`; the build copies them here. "
             "`make all` produces the data and model reports; a fresh clone has none yet, and each entry below then "
             "names the command that writes it.", "", "## Data, model and monitoring", ""]
    for rel, title, what, cmd in REPORT_FILES:
        if rel in files:
            note = f" (from this build's run of the notebooks; {cmd} writes the job's own)" if files[rel] else ""
            lines.append(f'- <a href="reports/{rel}">{title}</a>: {what}{note}')
        else: lines.append(f"- {title}: not generated yet; {cmd} writes it")
    figures = [f for f in files if f.startswith("champion/") and f.endswith(".png")]
    lines += ["", "## Evaluation plots of the champion", ""]
    lines += [f'- <a href="reports/{f}">{PurePosixPath(f).stem.replace("_", " ")}</a>' for f in figures] or \
             ["- ROC, precision-recall, calibration, confusion and importance plots: not generated yet; `make train` writes them"]
    runs = sorted((f for f in files if f.startswith("runs/") and f.endswith(".html")), reverse=True)
    lines += ["", "## Training runs", "", "The executed training notebook (nbs/pipelines/train.ipynb run by Papermill) "
              "of every run, newest first.", ""]
    lines += [f'- <a href="reports/{f}">{PurePosixPath(f).stem}</a>' for f in runs] or \
             ["- Executed training notebooks: not generated yet; `make train` writes them"]
    pictures = sorted(p.name for p in (ROOT / SIMULATION_PICTURES).glob("*.png"))
    lines += ["", "## Monitoring", "", "The detection power of the monitoring rules, measured offline by `make detection`: "
              "[Monitoring results](docs/monitoring-results.md).", ""]
    lines += [f"![{Path(p).stem}]({SIMULATION_PICTURES}/{p})" for p in pictures] or \
             ["Simulation pictures: not generated yet; `make detection` writes them"]
    write(SRC / "reports.md", "\n".join(lines) + "\n")


def vendor_mermaid() -> None:
    "mermaid's ES module build (mermaid.esm.min.mjs and its chunks) from the npm registry into _static/mermaid/."
    folder = CACHE / "npm" / f"mermaid-{MERMAID_VERSION}"
    if not (folder / "mermaid.esm.min.mjs").is_file():
        npm = shutil.which("npm")
        if npm is None: raise RuntimeError("npm is not installed: it fetches mermaid for the architecture's diagrams")
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--pack-destination", tmp, "--silent"],
                                 capture_output=True, text=True, timeout=300)
            tgz = next(Path(tmp).glob("mermaid-*.tgz"), None)
            if res.returncode or tgz is None:
                raise RuntimeError(f"npm pack mermaid@{MERMAID_VERSION} failed: {(res.stderr or res.stdout).strip()[-300:]}")
            with tarfile.open(tgz) as tar:
                wanted = [m for m in tar.getmembers() if m.isfile() and (
                    m.name in ("package/dist/mermaid.esm.min.mjs", "package/LICENSE")
                    or m.name.startswith("package/dist/chunks/mermaid.esm.min/") and m.name.endswith(".mjs"))]
                for m in wanted:
                    dst = folder / m.name.removeprefix("package/dist/").removeprefix("package/")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as f: dst.write_bytes(f.read())
        print(f"mermaid {MERMAID_VERSION} from the npm registry -> {folder.relative_to(ROOT)}")
    shutil.copytree(folder, STATIC / "mermaid", dirs_exist_ok=True)


def assemble(app=None, config=None) -> None:
    "Everything _site/ needs before Sphinx reads it."
    # the notebooks' kernels inherit this: typer's help goes to its captured output, not to rich's Jupyter display
    # (nbs/21_cli.ipynb tests `--help`; nbdev-test runs it outside Jupyter, where rich prints to the terminal)
    os.environ.setdefault("TYPER_USE_RICH", "0")
    SRC.mkdir(exist_ok=True)
    copy_sources()
    STATIC.mkdir(parents=True, exist_ok=True)
    EXTRA.mkdir(parents=True, exist_ok=True)
    api_page()
    reference_page()
    reports_page()
    notebooks_page()
    vendor_mermaid()


TOCTREE = """
```{toctree}
:hidden:

notebooks
docs/architecture
docs/form
docs/monitoring-results
api
reference
reports
```
"""


def notebooks_page() -> None:
    write(SRC / "notebooks.md", """# Notebooks

The notebooks in `nbs/` are the source of the library, its tests and its documentation (nbdev), in reading order.
Each page shows the notebook as it ran for this build, with the documentation of every name it exports.

```{toctree}
:glob:
:titlesonly:

nbs/[0-9]*
```
""")


def add_toctree(app, docname: str, source: list[str]) -> None:
    "The site's navigation, appended to the home page (nbs/index.ipynb stays the README's source, untouched)."
    if docname != app.config.root_doc: return
    nb = json.loads(source[0])
    nb["cells"].append({"cell_type": "markdown", "id": "site-toctree", "metadata": {}, "source": TOCTREE})
    source[0] = json.dumps(nb)


MD_CODE = re.compile(r"(?<![`\w])`([^`\n]+)`(?!`)")


def rst_line(line: str) -> str:
    "A Markdown docstring line as reStructuredText: `code` as a literal, a bare | (as in |a - b|) escaped."
    parts = MD_CODE.split(line)            # text, code, text, code, ...
    return "".join(f"``{p}``\\ " if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def markdown_code_in_docstrings(app, what, name, obj, options, lines: list[str]) -> None:
    "nbdev docstrings are Markdown: make them valid reStructuredText for autodoc, line by line."
    lines[:] = [rst_line(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", markdown_code_in_docstrings)
    app.connect("config-inited", assemble)
    app.connect("source-read", add_toctree)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
