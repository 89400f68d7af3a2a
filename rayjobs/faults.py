"""The fault matrix: real faults injected into real runs, and what each one costs.

    python -m rayjobs.faults                    # every scenario, then the table
    python -m rayjobs.faults --only kill-run    # scenarios whose name starts with this

Each scenario runs the real commands (``twohead train``, ``rayjobs.prepare`` against a local S3 server, ...) on a
tiny configuration, injects one fault (a signal at a chosen point, a full disk, a storage endpoint going away), runs
the same command again the way a user would, and compares the outcome with an uninterrupted run. A row says what the
fault was, where it hit, what the user saw, how many epochs had to be trained again and whether anything finished
was lost (the target is 0 everywhere). ``tests/rayjobs/test_faults.py`` runs the same scenarios and asserts it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twohead.runs import LocalReporter

__all__ = ["Outcome", "SCENARIOS", "run_scenarios", "main"]

# A run small enough to take seconds, long enough to be hit mid-way: 4 epochs of ResNet-8 on 10% of CIFAR-10-LT,
# a checkpoint every epoch.
TINY_RUN = [
    "--preset",
    "smoke",
    "--set",
    "data.train_fraction=0.1",
    "--set",
    "data.eval_fraction=0.2",
    "--set",
    "optim.epochs=4",
    "--set",
    "optim.milestones=[3]",
    "--set",
    "run.plots=false",
    "--set",
    "run.progress=false",
]


@dataclass
class Outcome:
    fault: str  # what was injected
    where: str  # the command and the moment it hit
    outcome: str  # what the user saw, and what the rerun did
    epochs_lost: int  # epochs trained again because of the fault
    trials_lost: int | None  # finished search trials lost (None: no search involved)
    data_lost: int  # finished results (checkpoints, metrics, shards) lost or corrupted
    ok: bool  # the rerun finished with the same result as an uninterrupted run

    def row(self) -> list:
        return [
            self.fault,
            self.where,
            self.outcome,
            self.epochs_lost,
            "-" if self.trials_lost is None else self.trials_lost,
            self.data_lost,
            "yes" if self.ok else "NO",
        ]


def _env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def _train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "twohead.cli", "train", *TINY_RUN, "--out", str(out), *extra]


def _history(run: Path) -> list[dict]:
    f = run / "history.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def _wait_for_epoch(run_parent: Path, epoch: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in run_parent.glob("*"):
            if len(_history(run)) >= epoch:
                return run
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before epoch {epoch}")
        time.sleep(0.2)
    raise TimeoutError(f"no epoch {epoch} within {timeout:.0f} s")


def _saved_epoch(run: Path) -> int:
    """The epoch a rerun resumes from (the newest readable checkpoint), 0 without one."""
    state = LocalReporter(run).peek()
    return int(state["epoch"]) if state else 0


def _reference(work: Path) -> dict:
    """The uninterrupted run every scenario compares with (trained once per process)."""
    if not hasattr(_reference, "cache"):
        out = work / "reference"
        subprocess.run(_train(out), check=True, capture_output=True, env=_env(), timeout=1800)
        (run,) = out.glob("*")
        _reference.cache = json.loads((run / "metrics.json").read_text())
    return _reference.cache


def _said(text: str, work: Path) -> str:
    """The last line the command printed, with the scenario's folder left out of paths."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[-1].replace(f"{work}/", "") if lines else ""
    return f"'{line[:150]}{'...' if len(line) > 150 else ''}'" if line else "nothing (killed)"


def kill_run(sig: signal.Signals) -> Callable[[Path], Outcome]:
    """Signal a single run after its second epoch, rerun the same command, compare with an uninterrupted run."""

    def scenario(work: Path) -> Outcome:
        ref = _reference(work)
        out = work / f"kill-{sig.name}"
        proc = subprocess.Popen(_train(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        run = _wait_for_epoch(out, 2, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        trained = len(_history(run))
        saved = _saved_epoch(run)
        r = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800)
        hist = _history(run)
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        same = r.returncode == 0 and metrics.get("top1") == ref["top1"] and [h["epoch"] for h in hist] == [1, 2, 3, 4]
        return Outcome(
            fault=sig.name,
            where="`twohead train`, after epoch 2 of 4",
            outcome=f"exit {proc.returncode}, said {_said(err, work)}; the rerun resumed from epoch {saved}",
            epochs_lost=trained - saved,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same,
        )

    return scenario


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG instead of killing it
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def full_disk(work: Path) -> Outcome:
    """The run folder's file system fills up during a checkpoint; space is freed; the same command resumes.

    A 1.5 MB tmpfs holds two ResNet-8 checkpoints (~0.65 MB each: the current one and the one before), so the third
    checkpoint write fails. Where mounting is not permitted, a per-process file-size limit makes the first checkpoint
    write fail the same way (EFBIG instead of ENOSPC)."""
    ref = _reference(work)
    mnt = work / "small-disk"
    mnt.mkdir()
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    try:
        out = mnt / "runs"
        limit = None if tmpfs else _file_size_limit(300_000)
        first = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800, preexec_fn=limit)
        (run,) = out.glob("*")
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        trained, saved = len(_history(run)), _saved_epoch(run)
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        second = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800)
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        same = first.returncode == 1 and second.returncode == 0 and not leftovers and metrics.get("top1") == ref["top1"]
        return Outcome(
            fault="full disk" if tmpfs else "file-size limit",
            where=f"`twohead train`, writing the epoch-{saved + 1} checkpoint",
            outcome=f"exit {first.returncode}, said {_said(first.stderr, work)}; after freeing space the rerun "
            f"resumed from epoch {saved}",
            epochs_lost=trained - saved,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same,
        )
    finally:
        if tmpfs:
            subprocess.run(["umount", str(mnt)], capture_output=True)


SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "kill-run-sigint": kill_run(signal.SIGINT),
    "kill-run-sigterm": kill_run(signal.SIGTERM),
    "kill-run-sigkill": kill_run(signal.SIGKILL),
    "full-disk": full_disk,
}


def run_scenarios(names: list[str], work: Path) -> list[Outcome]:
    return [SCENARIOS[n](work) for n in names]


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    p = argparse.ArgumentParser(prog="python -m rayjobs.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the scenarios whose name starts with this")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    names = [n for n in SCENARIOS if n.startswith(args.only)]
    if not names:
        print(f"faults: error: --only {args.only!r} matches no scenario; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="twohead-faults-") as d:
        rows = run_scenarios(names, Path(d))
    print(
        tabulate(
            [r.row() for r in rows],
            tablefmt="github",
            headers=["fault", "where", "outcome", "epochs lost", "trials lost", "data lost", "same result"],
        )
    )
    if args.json:
        from twohead import atomic

        atomic.write_json(args.json, [r.__dict__ for r in rows])
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
