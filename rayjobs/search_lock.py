"""One search driver per results folder: a second ``rayjobs.search`` on the same ``--out`` is refused.

Two drivers on one folder would share its SQLite study and Tune experiment and interleave their trials. The lock
is an exclusive ``flock`` on ``<out>/.search.lock``, held while the search runs: the kernel drops it when the
driver exits, however it exits (a crash or ``kill -9`` leaves no stale lock), and the file names the holder.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["LOCK_FILE", "SearchLocked", "hold", "releases_locks"]

LOCK_FILE = ".search.lock"
_HELD: list[Any] = []  # open lock files of the running call (see releases_locks)

F = TypeVar("F", bound=Callable[..., Any])


class SearchLocked(RuntimeError):
    """Another driver holds the folder's lock."""


def hold(out: Path) -> None:
    """Take ``out``'s lock until the enclosing :func:`releases_locks` call returns, or raise :class:`SearchLocked`
    naming the driver that holds it."""
    path = Path(out) / LOCK_FILE
    fh = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        try:
            holder = json.loads(fh.read() or "{}")
        except ValueError:
            holder = {}
        fh.close()
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        raise SearchLocked(
            f"another search is running on {out} ({who}); wait for it to end or stop it (Ctrl-C), then run this "
            f"command again: two searches on one folder would interleave their trials"
        ) from None
    fh.seek(0)
    fh.truncate()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.datetime.now().isoformat(timespec="seconds")}
    fh.write(json.dumps(holder))
    fh.flush()
    _HELD.append(fh)


def releases_locks(fn: F) -> F:
    """Release every lock :func:`hold` took during a call of ``fn`` when it returns or raises."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        depth = len(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_HELD) > depth:
                fh = _HELD.pop()
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    return call  # type: ignore[return-value]
