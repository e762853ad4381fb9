"""Where the harness finds its own files: in a checkout (a clone, installed editable) the repository's ``conf/`` and
``results/paper/``; in an installed package (``pip install .``) the copies shipped inside it as package data
(``harness/conf``, ``harness/paper_data``; see pyproject.toml). Nothing here imports the rest of the harness."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # harness/
ROOT = PACKAGE.parent  # the folder that holds the package: the checkout, or site-packages
CHECKOUT = ROOT if (ROOT / "pyproject.toml").is_file() and (ROOT / "conf").is_dir() else None
CONF_DIR = CHECKOUT / "conf" if CHECKOUT else PACKAGE / "conf"
PAPER_DIR = CHECKOUT / "results" / "paper" if CHECKOUT else PACKAGE / "paper_data"
