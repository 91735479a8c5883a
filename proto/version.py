"""dctrl's version: one place, the package metadata (``version`` in setup.cfg).

Heartbeats carry it (``health.NAME`` {version}) and ``dctrl status`` shows it. An
installed dctrl (``pip install``, editable or not) reads its metadata; a source
tree run without installing reads setup.cfg beside this package.
"""

from __future__ import annotations

import configparser
from importlib import metadata
from pathlib import Path

UNKNOWN = "0+unknown"


def _from_source_tree() -> str:
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")
        return cfg.get("metadata", "version", fallback=UNKNOWN).strip() or UNKNOWN
    except (OSError, configparser.Error):
        return UNKNOWN


def version() -> str:
    try:
        return metadata.version("dctrl")
    except metadata.PackageNotFoundError:
        return _from_source_tree()


VERSION = version()
