"""Render nbs/index.ipynb as README.md (nbdev-readme needs Quarto, which cannot be installed here).

Honours nbdev's `#| hide` directive and drops directive lines, like the docs site does.
Usage: python scripts/readme.py [--check]   (--check: exit 1 if README.md is not current)
"""
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
BANNER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


def visible_cells(nb):
    "Cells without a `#| hide` directive, with directive lines removed from code."
    for cell in nb.cells:
        lines = cell.source.splitlines()
        if any(ln.replace(" ", "").startswith("#|hide") for ln in lines): continue
        if cell.cell_type == "code":
            cell.source = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#|")).strip()
            cell.metadata = {}
        yield cell


def render() -> str:
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    nb.cells = list(visible_cells(nb))
    body, _ = MarkdownExporter().from_notebook_node(nb)
    return BANNER + body.strip() + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it")
    else: readme.write_text(text, encoding="utf-8")
