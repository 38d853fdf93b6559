"""Sphinx configuration of the pyro-vae documentation.

Build (warnings are errors)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))

import pyro_vae  # noqa: E402  (the installed package; autodoc imports it)

project = "pyro-vae"
author = "the pyro-vae authors"
copyright = "the pyro-vae authors, Apache-2.0"
release = pyro_vae.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "pyro_vae_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

# Markdown: $...$ and $$...$$ math, ::: fences, definition lists, heading anchors.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Docstrings are Google style (Args:, Returns:, Attributes:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# MathJax is loaded by the reader's browser; nothing is fetched at build time.
html_theme = "alabaster"
html_title = f"pyro-vae {release}"
html_theme_options = {
    "description": "Variational autoencoders in Pyro with honest marginal likelihoods",
    "fixed_sidebar": True,
}
html_static_path = []
