"""Sphinx configuration of the docs site (`make docs`: sphinx-build -c docs/site _site _docs).

docs/site/ holds the configuration and its glue; _site/ (git-ignored) is the source folder Sphinx reads, assembled by
`site_pages.assemble` when the build starts: links to nbs/ and docs/, nbs/index.ipynb as the home page, and the pages
made at build time (HTTP API reference, library reference, reports). Notebooks go through nbdev's processing
(nbdev_cells.py) and are executed by MyST-NB through jupyter-cache in .docs-cache/jupyter/.
"""
import os
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import site_pages  # noqa: E402

with open(ROOT / "pyproject.toml", "rb") as f: _meta = tomllib.load(f)

project = _meta["tool"]["nbdev"]["title"]
author = "IncomeOps team"
copyright = "IncomeOps team, Apache-2.0"
root_doc = "index"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinxcontrib.mermaid",
              "sphinxcontrib.openapi", "site_pages"]
exclude_patterns = ["nbs/pipelines/**", "nbs/index.ipynb", "nbs/_*", "**/.ipynb_checkpoints", "docs/site/**",
                    "docs/simulation/*.md", "_extra/**", "_static/**"]
# show_doc's headings start at level 3 inside a section; a signature with a default such as <class 'OSError'> is not
# valid Python for the highlighter (it is shown unhighlighted)
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
nitpicky = True
# type hints name pandas, sklearn, pydantic ... objects and there is no intersphinx offline
nitpick_ignore_regex = [(r"py:.*", r".*")]

# --- notebooks (MyST-NB): nbdev's directives as cell tags, executed through jupyter-cache
# the kernels draw plots into the page whatever the caller's environment says (importing streamlit, as the test suite
# does, sets MPLBACKEND=Agg, and the kernels inherit it: no figure would reach a page)
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
nb_custom_formats = {".ipynb": "nbdev_cells.read"}
nb_execution_mode = os.environ.get("DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(ROOT / ".docs-cache" / "jupyter")
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 900                   # seconds per cell (the detection notebook runs ~3 min)
nb_execution_excludepatterns = ["nbs/pipelines/*"]
nb_kernel_rgx_aliases = {".*": "incomeops"}
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 4
myst_title_to_header = True                  # docs/*.md carry their title in the front matter
smartquotes = False                          # text as written (quotes in code-like summaries stay straight)
myst_fence_as_directive = ["mermaid"]        # ```mermaid blocks in docs/architecture.md are diagrams

# --- library reference from docstrings and signatures
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_typehints = "signature"

# --- the HTML site: PyData theme, its search; nothing from another host (mermaid is vendored from npm)
html_theme = "pydata_sphinx_theme"
html_title = project
html_static_path = [str(site_pages.STATIC)]
html_extra_path = [str(site_pages.EXTRA)]
html_theme_options = {"navigation_with_keys": False, "header_links_before_dropdown": 7, "show_toc_level": 2, "use_edit_page_button": False,
                      "navbar_end": ["theme-switcher"], "footer_start": ["copyright"], "footer_end": []}
html_show_sourcelink = False
html_sidebars = {page: [] for page in ("index", "docs/*", "api", "reports")}   # pages without sub-pages
mermaid_version = ""                          # never the CDN
mermaid_use_local = site_pages.MERMAID_LOCAL
mermaid_d3_zoom = False
