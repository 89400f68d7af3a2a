"""Output folders: checked before the first byte is written, so a folder that cannot be written fails with one line.

Permission bits alone do not say it (``root`` passes ``os.access`` on ``/proc``; a read-only mount answers
``EROFS`` only to a write), so the check makes and removes one empty folder in the nearest existing parent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["OutputFolderError", "check_writable"]


class OutputFolderError(ValueError):
    """An output folder that cannot be created or written; the message names it and what to do."""


def check_writable(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """``path`` (created later by the caller) can be made and written into; nothing is left behind.

    Raises :class:`OutputFolderError` naming ``what`` and ``path`` when a parent is a file or the nearest
    existing parent refuses a new entry.
    """
    p = Path(path)
    parent = next(q for q in (p, *p.parents) if q.exists() or q == q.parent)
    if not parent.is_dir():
        raise OutputFolderError(f"{what} {p}: {parent} is a file, not a folder; choose another {what}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".twohead-write-check-", dir=parent))
    except OSError as e:
        raise OutputFolderError(f"{what} {p}: cannot write in {parent} ({e.strerror}); choose a folder you can write") from None
    return p
