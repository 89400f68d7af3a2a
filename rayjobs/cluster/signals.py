"""Ctrl-C and SIGTERM around Ray's own calls: held while Ray starts, noticed while Ray Train handles them.

- :func:`held` holds SIGINT / SIGTERM while ``ray.init`` runs and yields the ones that arrived. A
  KeyboardInterrupt raised inside ``ray.init`` leaves a half-started Ray (its processes up, the driver not
  connected) that crashed the interpreter on exit (SIGSEGV, Ray 2.60); held, the command stops cleanly right after.
  A second signal stops at once. ``ray.init`` installs its own SIGTERM handler part-way (``sys.exit``): from
  then on SIGTERM is Ray's, and it is kept after the block.
- :func:`seen` yields the signals that arrived while other handlers were in charge: ``TorchTrainer.fit``
  installs its own SIGINT handler (graceful abort), and a Ctrl-C in a terminal also reaches the local Ray's
  processes, so the driver ends with whatever Ray raises (often ``SystemExit(1)``). Python's wakeup fd records
  every signal number whatever the handler, which tells an interrupt from a failure afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["held", "seen"]

_STOPS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # handlers belong to the main thread


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """SIGINT / SIGTERM are recorded, not raised, inside the block; yields the list of those that arrived."""
    got: list[int] = []
    if not _main_thread():
        yield got
        return

    def hold(signum: int, frame: object) -> None:
        if got:  # a second one: the user means it (e.g. ray.init hangs because the first also hit Ray's processes)
            raise KeyboardInterrupt
        got.append(signum)

    old = {s: signal.signal(s, hold) for s in _STOPS}
    try:
        yield got
    finally:
        for s, h in old.items():
            # ray.init installs its own SIGTERM handler (sys.exit, so that clean-ups run): keep one installed
            # during the block, restore only what is still ours
            if signal.getsignal(s) is hold:
                signal.signal(s, h)


@contextlib.contextmanager
def seen() -> Iterator[list[int]]:
    """Yields a list that, once the block ends (normally or not), holds the SIGINT / SIGTERM numbers that arrived.

    Inside the block SIGTERM raises KeyboardInterrupt (``ray job stop`` sends it; ``ray.init`` replaces this
    with its own ``sys.exit`` handler, which ends the same way) and SIGINT keeps whatever handler is installed
    (Ray Train's, during ``fit``)."""
    got: list[int] = []
    if not _main_thread():
        yield got
        return
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)

    def term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, term)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield got
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGTERM, old_term)
        try:
            data = os.read(r, 1024)
        except BlockingIOError:
            data = b""
        os.close(r)
        os.close(w)
        got.extend(b for b in data if b in _STOPS)
