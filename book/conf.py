"""Sphinx configuration of the book (``make book``): the executed notebooks of one run, read as they are.

``cortex_run/book.py`` copies this file beside the notebooks it prepares and runs Sphinx there; MyST-NB reads
each notebook's saved outputs (nothing is executed), sphinx-book-theme draws the sidebar and each page's table
of contents. Offline by construction: the theme comes with the installed package, and the formulas are typeset
by the MathJax 3 that the ``sphinx-mathjax-offline`` package ships (copied into ``_static/mathjax`` by the
builder; SVG output, which draws its own glyphs: no web font is fetched).
"""

project = "CORTEX tutorial"
author = "the CORTEX tutorial's authors"
copyright = "the CORTEX tutorial's authors; the method: Yang, Shi, Du, Wu, Tan, Sun and Liu"

extensions = ["myst_nb"]
exclude_patterns = ["_build"]
nb_execution_mode = "off"  # the pages show what the run computed
nb_ipywidgets_js = {}  # no widget manager from a CDN: the builder replaces the sliders by a note
nb_render_markdown_format = "myst"  # a notebook's Markdown outputs (tables, formulas) as its Markdown cells
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "CORTEX tutorial"
html_static_path = ["_assets"]
html_use_index = False
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "show_toc_level": 2,  # the page's headings, on the right
    "use_download_button": False,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
    "navigation_with_keys": False,
}

# MathJax 3 from the book's own _static (sphinx-mathjax-offline's copy): SVG output, so no web fonts to fetch
mathjax_path = "mathjax/tex-svg.js"
html_css_files = ["book.css"]
