"""One search driver per results folder and per study: a second ``rayjobs.search`` on either is refused.

Two drivers on one folder, or on one study from two machines, would interleave their trials (and, on one folder,
share its SQLite study and Tune experiment). Both locks are dropped by whatever ends the driver, however it ends
(a crash or ``kill -9`` leaves no stale lock), and the refusal names the holder:

- the folder: an exclusive ``flock`` on ``<out>/.search.lock``, held while the search runs; the file names the
  holder;
- a study in PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) keyed by the study name, on one
  connection of its own kept open while the search runs; the server drops it with that connection, and the
  holder is the connection's ``application_name`` (``pg_stat_activity``). A failover or restart of the server
  drops it too: the running search goes on (it waits out the outage) without it.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["LOCK_FILE", "SearchLocked", "hold", "hold_study", "releases_locks", "study_lock_key"]

LOCK_FILE = ".search.lock"
_HELD: list[Callable[[], None]] = []  # releases of the locks the running call took (see releases_locks)

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
    _HELD.append(functools.partial(_unlock, fh))


def study_lock_key(study_name: str) -> int:
    """The advisory-lock key of a study: 64 bits of a hash of its name (a signed bigint, as PostgreSQL takes it)."""
    return int.from_bytes(hashlib.sha256(f"twohead-study:{study_name}".encode()).digest()[:8], "big", signed=True)


def hold_study(url: str, study_name: str, shown: str) -> None:
    """Take the study's lock on its PostgreSQL server until the enclosing :func:`releases_locks` call returns, or
    raise :class:`SearchLocked` naming the driver that holds it (``shown``: the storage as it may be printed).
    Other databases have no such lock here: SQLite lives in the locked folder."""
    if not url.startswith("postgresql"):
        return
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    me = f"twohead search pid {os.getpid()} on {socket.gethostname()}"[:63]  # PostgreSQL keeps 63 bytes
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"application_name": me})
    key = study_lock_key(study_name)
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:  # it answered a moment ago (the study was opened): an outage
        from rayjobs.search.searcher import DatabaseOutage

        engine.dispose()
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        raise DatabaseOutage(
            f"could not take the lock of study {study_name!r} in {shown}: the database stopped answering ({first}); "
            "run the same command again once it answers"
        ) from None
    try:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        holder = None
        if not got:
            u = key & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
            holder = conn.execute(
                sa.text(
                    "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1 "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"hi": u >> 32, "lo": u & 0xFFFFFFFF},
            ).first()
        conn.commit()  # a session lock outlives the transaction: the connection is not left idle in one
    except BaseException:
        conn.close()
        engine.dispose()
        raise
    if not got:
        conn.close()
        engine.dispose()
        who = "another driver"
        if holder is not None:
            since = holder[2].isoformat(timespec="seconds") if holder[2] is not None else "?"
            who = f"{holder[0] or 'a client'} from {holder[1] or 'a local socket'}, connected since {since}"
        raise SearchLocked(
            f"study {study_name!r} in {shown} is being searched by {who}; wait for that search to end or stop it "
            "(Ctrl-C), then run this command again: two searches on one study would interleave their trials"
        )
    _HELD.append(functools.partial(_close, conn, engine))


def _unlock(fh: Any) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()


def _close(conn: Any, engine: Any) -> None:
    """Close the connection that holds a study's advisory lock: the server drops the lock with it."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection lost in an outage: the server already dropped the lock
        pass
    engine.dispose()


def releases_locks(fn: F) -> F:
    """Release every lock :func:`hold` took during a call of ``fn`` when it returns or raises."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        depth = len(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_HELD) > depth:
                _HELD.pop()()

    return call  # type: ignore[return-value]
