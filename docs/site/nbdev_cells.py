"""MyST-NB reads every notebook through `read` (`nb_custom_formats` in conf.py): nbdev's own processing, as tags.

nbdev's `NBProcessor` parses the `#|` directives and strips their lines; its `add_show_docs` adds a `show_doc(...)`
cell after each exported definition (executed with the notebook, so the page shows the docs nbdev shows). The
directives become MyST-NB cell tags instead of deleting cells, so that a hidden cell still runs:
`#| hide`, `#| default_exp`, `#| exporti` -> remove-cell; `#| echo: false` and the show_doc cells -> remove-input;
`#| output: false` -> remove-output; `#| eval: false` -> skip-execution. The show_doc cells use a renderer that drops
nbdev's leading horizontal rule (see SHOW_DOC_IMPORT).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from fastcore.nbio import dict2nb, mk_cell, nb2dict
from nbdev.process import NBProcessor
from nbdev.processors import add_show_docs

# the hidden first cell of a notebook with exports: nbdev's show_doc, its Markdown without the leading `---` (a
# transition, which docutils does not allow inside a cell's output) and without Quarto's {target=...} after the
# source link (shown as text otherwise)
SHOW_DOC_IMPORT = """from nbdev.showdoc import BasicMarkdownRenderer, show_doc


class SiteShowDoc(BasicMarkdownRenderer):
    def _repr_markdown_(self):
        import re
        md = super()._repr_markdown_().removeprefix("---\\n\\n")
        return re.sub(r'[{]target="_blank"[^}]*[}]', "", md)"""


def tags_for(directives: dict[str, str | list[str]]) -> set[str]:
    "The MyST-NB tags of a cell with these nbdev directives (name -> its arguments, a string for Quarto's `key: value`)."
    value = {k: (v if isinstance(v, str) else " ".join(v)).strip().lower() for k, v in directives.items()}
    tags = set()
    if {"hide", "default_exp", "exporti"} & value.keys() or value.get("include") == "false": tags.add("remove-cell")
    if value.get("echo") == "false": tags.add("remove-input")
    if value.get("output") == "false": tags.add("remove-output")
    if value.get("eval") == "false": tags.add("skip-execution")
    return tags


def tag(cell, *tags: str) -> None:
    meta = cell.setdefault("metadata", {})
    meta["tags"] = sorted(set(meta.get("tags", [])) | set(tags))


# a notebook run by a job (Papermill) takes its output folder as a parameter: the docs build runs it with a folder of
# its own, as Papermill would inject it, so that it never replaces what the job wrote into reports/ (`make profile`)
DOCS_REPORTS = Path(__file__).resolve().parents[2] / ".docs-cache" / "reports"


def docs_parameters(cell) -> str | None:
    "The cell to run after a `parameters` cell that sets `reports_dir`, if this is one."
    if "parameters" not in cell.metadata.get("tags", []) or not re.search(r"^reports_dir\s*=", cell.source, re.M):
        return None
    rel = os.path.relpath(DOCS_REPORTS, Path(__file__).resolve().parents[2] / "_site" / "nbs")   # from where it runs
    return f"reports_dir = {rel!r}   # injected by the docs build (docs/site/nbdev_cells.py)"


def read(text: str) -> nbformat.NotebookNode:
    "A notebook's JSON as MyST-NB will render and execute it."
    nb = dict2nb(nbformat.reads(text, as_version=4))
    NBProcessor(nb=nb, procs=[add_show_docs], rm_directives=True, process=True)
    for cell in nb.cells:
        if getattr(cell, "has_sd", False):
            cell.source = cell.source.removesuffix(")") + ", renderer=SiteShowDoc)"
            tag(cell, "remove-input"); cell.metadata["nbdev_added"] = True
        elif cell.cell_type == "code" and (tags := tags_for(getattr(cell, "directives_", {}) or {})): tag(cell, *tags)
    for i in reversed(range(len(nb.cells))):
        if (source := docs_parameters(nb.cells[i])) is not None:
            injected = mk_cell(source, "code")
            tag(injected, "remove-cell", "injected-parameters"); injected.metadata["nbdev_added"] = True
            nb.cells.insert(i + 1, injected)
    if any(getattr(c, "has_sd", False) for c in nb.cells):
        first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        imp = mk_cell(SHOW_DOC_IMPORT, "code")
        tag(imp, "remove-cell"); imp.metadata["nbdev_added"] = True
        nb.cells.insert(first_code, imp)
    out = nbformat.from_dict(nb2dict(nb))
    for i, cell in enumerate(out.cells):
        if isinstance(cell.source, list): cell.source = "".join(cell.source)
        if "id" not in cell or cell.metadata.get("nbdev_added"): cell.id = f"nbdev-{i}"   # stable cache key
        cell.metadata.pop("nbdev_added", None)
        if cell.cell_type == "code": cell.setdefault("outputs", []); cell.setdefault("execution_count", None)
        for k in [k for k in cell if k.endswith("_") or k == "has_sd"]: del cell[k]
    return out
