"""MyST-NB reads every notebook through `read` (`nb_custom_formats` in conf.py): nbdev's own processing, as tags.

nbdev's `NBProcessor` parses the `#|` directives and strips their lines; its `add_show_docs` adds a `show_doc(...)`
cell after each exported definition (executed with the notebook, so the page shows the docs nbdev shows). The
directives become MyST-NB cell tags instead of deleting cells, so that a hidden cell still runs:
`#| hide`, `#| default_exp`, `#| exporti` -> remove-cell; `#| echo: false` and the show_doc cells -> remove-input;
`#| output: false` -> remove-output; `#| eval: false` -> skip-execution.
"""
from __future__ import annotations

import nbformat
from fastcore.nbio import dict2nb, mk_cell, nb2dict
from nbdev.process import NBProcessor
from nbdev.processors import add_show_docs

SHOW_DOC_IMPORT = "from nbdev.showdoc import show_doc"


def tags_for(directives: dict[str, list[str]]) -> set[str]:
    "The MyST-NB tags of a cell with these nbdev directives (name -> arguments)."
    value = {k: " ".join(v).strip().lower() for k, v in directives.items()}
    tags = set()
    if {"hide", "default_exp", "exporti"} & value.keys() or value.get("include") == "false": tags.add("remove-cell")
    if value.get("echo") == "false": tags.add("remove-input")
    if value.get("output") == "false": tags.add("remove-output")
    if value.get("eval") == "false": tags.add("skip-execution")
    return tags


def tag(cell, *tags: str) -> None:
    meta = cell.setdefault("metadata", {})
    meta["tags"] = sorted(set(meta.get("tags", [])) | set(tags))


def read(text: str) -> nbformat.NotebookNode:
    "A notebook's JSON as MyST-NB will render and execute it."
    nb = dict2nb(nbformat.reads(text, as_version=4))
    NBProcessor(nb=nb, procs=[add_show_docs], rm_directives=True, process=True)
    for cell in nb.cells:
        if getattr(cell, "has_sd", False): tag(cell, "remove-input"); cell.metadata["nbdev_added"] = True
        elif cell.cell_type == "code" and (tags := tags_for(getattr(cell, "directives_", {}) or {})): tag(cell, *tags)
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
