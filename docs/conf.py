"""Sphinx configuration of the bilevel documentation site.

Build it with ``sphinx-build -j auto -W --keep-going -b html docs docs/_build/html``
(the ``docs`` extra). The Markdown pages are read by MyST, the API reference is generated
from the numpydoc docstrings, and sphinx-gallery runs ``examples/*.py`` with ``--quick``
where an example takes it.
"""

import ast
import importlib.metadata
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
sys.path.insert(0, str(EXAMPLES))   # the examples import their helper modules (_ddn_training)

project = "bilevel"
author = "the bilevel developers"
copyright = "the bilevel developers"
release = version = importlib.metadata.version("bilevel")

root_doc = "contents"
extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_static_path = ["_static"]
html_css_files = ["bilevel.css"]
html_theme = "alabaster"
html_theme_options = {"page_width": "96%", "sidebar_width": "240px",
                      "body_max_width": "none", "fixed_sidebar": True,
                      "show_relbars": True}
html_sidebars = {"**": ["about.html", "searchfield.html", "navigation.html"]}
html_title = "bilevel"

# MyST: headings get anchors for the pages' ``page.md#section`` links; $...$ math.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# autodoc + numpydoc: one page per public module, members in the module's __all__.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()
# sphinx-gallery's callables below cannot be pickled into the environment: they are
# re-read from this file on every build, which is what a fresh CI build does anyway.
suppress_warnings = ["config.cache"]
# joblib's worker processes (the gallery's "parallel" below) restart once their memory has
# grown by 300 MB, which torch and the numba kernels do; the job goes on in a new worker.
warnings.filterwarnings("ignore", "A worker stopped while some jobs were given to the "
                        "executor", UserWarning)

# The examples run in quick mode: sphinx-gallery hands each one the arguments below.
OUT = EXAMPLES / "out"          # where the examples write their figures (git-ignored)
OUT.mkdir(exist_ok=True)
QUICK_ARGS = {"composite_deconvolution.py": ["--out", str(OUT / "composite_deconvolution.png")]}
# Examples too long for the docs build even with --quick (on 2 busy cores: piecewise_paper
# 140 s, tv_denoising_paper 250 s with its numba compilation, ddn_projections over 140 s;
# ddn_point_clouds trains networks too): listed in the gallery with their code, not run.
NOT_EXECUTED = ["ddn_point_clouds.py", "ddn_projections.py", "piecewise_paper.py",
                "tv_denoising_paper.py"]


# The gallery's order, which is also the order its examples start in, side by side: the
# flagship experiment (a whole image prior learned) first, then the rest by decreasing run
# time in quick mode (measured on 2 cores: 33, 18, 13, 13, 11, 8, 5, 3, 2 s), so that the
# longest run does not start last and finish alone; then the examples not run here.
GALLERY_ORDER = ["learn_image_prior.py", "composite_deconvolution.py",
                 "tune_logistic_breast_cancer.py", "moment_layer_burgers.py",
                 "custom_energy.py", "tv2d_camera.py", "convergence_study.py",
                 "select_lasso_diabetes.py", "piecewise_segmentation.py", *NOT_EXECUTED]


def _gallery_position(filename):
    """Sort key of an example file name: its place in ``GALLERY_ORDER``, others after, by name."""
    name = Path(filename).name
    return (GALLERY_ORDER.index(name) if name in GALLERY_ORDER else len(GALLERY_ORDER), name)


def _argv(gallery_conf, script_vars):
    """Command-line arguments of one gallery example: ``--quick`` where it takes it.

    Also gives the example the ``__file__`` and ``__doc__`` a script run has (sphinx-gallery
    leaves them out; the examples locate their output folder and help text with them).
    """
    src = Path(script_vars["src_file"])
    text = src.read_text()
    names = script_vars.get("example_globals")
    if names is not None:
        names["__file__"] = str(src)
        names["__doc__"] = ast.get_docstring(ast.parse(text)) or ""
    quick = ["--quick"] if '"--quick"' in text else []
    return quick + QUICK_ARGS.get(src.name, [])


class _Figures:
    """Image scraper: the PNG figures an example writes under ``examples/out``.

    The examples save their figures to files named after themselves (``<example>.png`` or
    ``<example>_*.png``) and close them; this scraper shows those the running example wrote
    since its last code block, in the order they were written. The names keep examples run
    side by side apart.
    """

    def __init__(self):
        self.shown = {}       # figure path -> modification time already shown

    def __repr__(self):
        return "bilevel_png_files"

    def __call__(self, block, block_vars, gallery_conf):
        from sphinx_gallery.scrapers import figure_rst

        stem = Path(block_vars["src_file"]).stem
        new = sorted((p for p in OUT.glob("*.png")
                      if (p.stem == stem or p.stem.startswith(stem + "_"))
                      and self.shown.get(p) != p.stat().st_mtime
                      and p.stat().st_mtime >= _STARTED),
                     key=lambda p: p.stat().st_mtime)
        paths = []
        for png, target in zip(new, block_vars["image_path_iterator"]):
            self.shown[png] = png.stat().st_mtime
            shutil.copyfile(png, target)
            paths.append(target)
        return figure_rst(paths, gallery_conf["src_dir"])


_STARTED = time.time()   # figures older than this build are a previous build's


sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!(" + "|".join(n.replace(".", r"\.") for n in NOT_EXECUTED)
                        + r"))[^_/][^/]*\.py$",
    "ignore_pattern": r"(^|[\\/])_[^\\/]*\.py$",   # _helpers.py are modules, not examples
    "reset_argv": _argv,
    "within_subsection_order": _gallery_position,
    "image_scrapers": (_Figures(),),
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "write_computation_times": False,
    "abort_on_example_error": False,
    # One example per CPU, each in its own process (joblib); the build is otherwise
    # single-threaded, and the examples are most of its time.
    "parallel": os.cpu_count() or 1,
    "show_memory": False,
}
