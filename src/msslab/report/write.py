"""Writing report files without clobbering anything compare did not write itself.

compare keeps a manifest (``comparison.manifest.json``) of the files it wrote
into an output directory. A file is (re)written only if it does not exist yet
or the manifest lists it, so a report regenerates freely while a
``results.json`` or any other file of the same name is never overwritten.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from .runs import RESULTS_FILE, CompareError

MANIFEST = "comparison.manifest.json"
_OWNER = "msslab-compare"


def _written_before(out_dir: Path) -> set[str]:
    path = out_dir / MANIFEST
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("written_by") != _OWNER:
        raise CompareError(f"refusing to overwrite {path}: it was not written by {_OWNER}; choose output=<dir>")
    return set(data.get("files", []))


def claim(out_dir: str | Path, names: Iterable[str]) -> Path:
    """Check that every file ``names`` in ``out_dir`` may be (over)written, before writing any.

    Creates ``out_dir`` if needed. Raises :class:`CompareError` naming the first
    file that exists and was not written by compare.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"output must be a directory, got the file: {out_dir}")
    ours = _written_before(out_dir) if out_dir.is_dir() else set()
    for name in names:
        path = out_dir / name
        if name == RESULTS_FILE or (path.exists() and (name not in ours or not path.is_file())):
            raise CompareError(
                f"refusing to overwrite {path}: it was not written by {_OWNER}; move it away or choose output=<dir>"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def record(out_dir: str | Path, names: Iterable[str]) -> None:
    """Add ``names`` to the manifest of files compare wrote into ``out_dir``."""
    out_dir = Path(out_dir)
    files = sorted(_written_before(out_dir) | set(names))
    (out_dir / MANIFEST).write_text(json.dumps({"written_by": _OWNER, "files": files}, indent=2) + "\n")


# ---------------------------------------------------------------------------
# markdown


def fmt(value, digits: int = 2, signed: bool = False) -> str:
    """A dB value for a table: fixed decimals, ``n/a`` for missing."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
