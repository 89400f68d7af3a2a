"""Reproduce the paper's CIFAR-10-LT tables: many (method, imbalance, seed) runs packed on one device, resumable,
summarised as Markdown next to the published numbers.

    python -m rayjobs.reproduce --table cifar10-lt --dry-run                     # the plan, in launch order
    python -m rayjobs.reproduce --table cifar10-lt --concurrent 4 --time-budget 600
    python -m rayjobs.reproduce --table cifar10-lt --table cifar10-lt-ablation --report-only
    ray job submit -- python -m rayjobs.reproduce --table cifar10-lt --ray        # same runs as Ray tasks

Tables (:data:`TABLES`):

* ``cifar10-lt`` -- paper Table 1 on CIFAR-10-LT: every row the toolkit implements, in the paper's order (CE,
  Focal, Mixup, CB, LDAM, Ours, CB+Focal, LDAM+DRW, Ours-Full); columns imbalance 100, 50, 10.
* ``cifar10-lt-ablation`` -- paper Table 4 (neither head / FBH only / CDH only / both). The paper's ablation is on
  CIFAR-100-LT and Tiny-ImageNet-LT; without the CIFAR-100 train split it runs on CIFAR-10-LT and shows the
  paper's CIFAR-100 numbers as context only (no difference column).

Every cell is the mean +- sample std over seeds of the **final-epoch** test top-1, beside the paper's number and
the difference; Table 1 also shows, labelled as the baselines' protocol, the best test top-1 over the epochs after
the first learning-rate decay (``run.test_curve``; never used to choose anything). Below each table: recall by
class group, every test-time reading of the model (:mod:`twohead.readings`) and Fig. 3 (CE vs two-head).

Files. Full run folders (checkpoints, history, plots) go to ``--work`` (default ``runs/reproduce``):
``<work>/<dataset>/<run>/``, with ``plans/<run>.yaml`` (the resolved config) and ``logs/<run>.log`` beside them.
The small per-run JSON meant to be committed goes to ``--out`` (default ``results``):
``<out>/<dataset>/<run>.json``; the tables go to ``<out>/<table>.md`` and Fig. 3 to
``<out>/<dataset>/fig3-imb100.png``. Both are rewritten after every finished run (``--archive`` re-packs ``--out``
into one tar.gz), so whatever finished before a time limit is on disk.

Resume. Finished runs are never relaunched; an unfinished one resumes from its last checkpoint. Run names are
``<method>-imb<beta>-s<seed>``; any ``--epochs`` or ``--set`` that changes results adds a suffix (``-e<E>``,
``-<hash>``), so a shortened or modified run never mixes with the paper-recipe runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twohead.config import ConfigError

from .plan import TABLES, plan_runs
from .render import write_report
from .results import git_commit
from .run import Interrupted, RayExecutor, Runner

log = logging.getLogger("rayjobs.reproduce")

__all__ = ["main"]


def _list(text: str, cast: Callable[[str], Any], flag: str) -> list:
    """``"0,1,3-5"`` -> [0, 1, 3, 4, 5]; a value that is not a ``cast`` is a ConfigError naming ``flag``."""
    items = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        try:
            if cast is int and "-" in part[1:]:
                lo, hi = part.split("-", 1)
                items.extend(range(int(lo), int(hi) + 1))
            else:
                items.append(cast(part))
        except ValueError:
            kind = {int: "integers or ranges like 0-2", float: "numbers"}.get(cast, "values")
            raise ConfigError(f"{flag} {text!r}: {part!r} is not valid; give comma-separated {kind}") from None
    return items


def _default_concurrency() -> int:
    try:
        import torch

        return 4 if torch.cuda.is_available() else 1
    except ImportError:
        return 1


def _pack(dest: str, imbalances: list[float]) -> int:
    from twohead.data import DataError

    from .pack import PackError, pack_data

    try:
        info = pack_data(dest, None, imbalances)
    except (PackError, DataError, OSError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    for name, size in info["files"].items():
        print(f"{Path(info['dest']) / name}  {size / 2**20:.2f} MiB")
    print(
        f"{info['train_images']} train images kept for imbalances {', '.join(f'{b:g}' for b in imbalances)} "
        f"(LT subsets verified against the source); on the offline machine: TWOHEAD_DATA={dest} python -m rayjobs.reproduce ..."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rayjobs.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--table", action="append", default=[], choices=list(TABLES), help="table to reproduce (repeatable)")
    p.add_argument("--methods", help="comma-separated method.name rows (default: the table's rows)")
    p.add_argument("--imbalances", help="comma-separated imbalance ratios (default 100,50,10)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or ranges (default 0,1,2)")
    p.add_argument("--epochs", type=int, help="train this many epochs (schedule scaled; names the runs -e<E>)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)"
    )
    p.add_argument("--out", default="results", help="per-run JSONs, tables and Fig. 3 (default results/)")
    p.add_argument(
        "--work", default="runs/reproduce", help="full run folders, logs and resolved configs (default runs/reproduce)"
    )
    p.add_argument("--concurrent", type=int, default=0, help="runs at once (default 4 with a GPU, else 1)")
    p.add_argument(
        "--time-budget", type=float, help="seconds: launch no run that would end past this (estimated from finished runs)"
    )
    p.add_argument("--archive", help="re-pack --out into this .tar.gz after every finished run")
    p.add_argument("--commit", default="", help="commit to record (default $TWOHEAD_COMMIT or git rev-parse HEAD)")
    p.add_argument("--dry-run", action="store_true", help="print the plan in launch order and exit")
    p.add_argument("--report-only", action="store_true", help="launch nothing: collect finished runs and write the tables")
    p.add_argument(
        "--pack",
        metavar="DIR",
        help="write the CIFAR-10 images these runs read (--imbalances) into DIR/cifar10/ "
        "for a machine without network access (TWOHEAD_DATA=DIR there), verify them, and exit",
    )
    p.add_argument("--ray", action="store_true", help="run each run as a Ray task with 1/concurrent GPU (needs Ray)")
    p.add_argument("--ray-address", default="", help="Ray cluster address (default $RAY_ADDRESS or a local cluster)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    tables = list(dict.fromkeys(args.table or ["cifar10-lt"]))
    out, work = Path(args.out), Path(args.work)
    if args.pack:
        try:
            imbalances = _list(args.imbalances, float, "--imbalances") if args.imbalances else [100.0, 50.0, 10.0]
        except ConfigError as e:
            print(f"reproduce: error: {e}", file=sys.stderr)
            return 2
        return _pack(args.pack, imbalances)
    try:
        if args.concurrent < 0:
            raise ConfigError(f"--concurrent {args.concurrent} must be >= 1 (0 = 4 with a GPU, else 1)")
        if args.time_budget is not None and not args.time_budget >= 0:
            raise ConfigError(f"--time-budget {args.time_budget:g} must be >= 0 seconds (0 launches nothing)")
        specs = plan_runs(
            tables,
            methods=_list(args.methods, str, "--methods") if args.methods else None,
            imbalances=_list(args.imbalances, float, "--imbalances") if args.imbalances else None,
            seeds=_list(args.seeds, int, "--seeds"),
            epochs=args.epochs,
            sets=args.sets,
            work=work,
        )
        if not args.dry_run:
            from twohead.folders import check_writable

            check_writable(out, "--out")
            if not args.report_only:
                check_writable(work, "--work")
    except (ConfigError, ValueError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    concurrent = args.concurrent or _default_concurrency()
    commit = args.commit or git_commit()

    def update(runner: Runner) -> None:
        write_report(tables, specs, runner.status, out=out, work=work, archive=Path(args.archive) if args.archive else None)
        n = sum(st.state == "done" for st in runner.status.values())
        print(f"[{time.monotonic() - runner.t0:6.0f} s] {n}/{len(specs)} runs finished", flush=True)

    executor = None
    if args.ray and not (args.dry_run or args.report_only):
        try:
            import torch

            gpu = torch.cuda.is_available()
        except ImportError:
            gpu = False
        from rayjobs.cluster.connect import RayAddressError

        try:
            executor = RayExecutor(concurrent, gpu, args.ray_address or None)
        except RayAddressError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    runner = Runner(
        specs,
        out=out,
        work=work,
        concurrent=concurrent,
        time_budget=args.time_budget,
        executor=executor,
        commit=commit,
        on_update=update,
    )
    runner.refresh()
    if args.dry_run:
        print(f"# {len(specs)} runs, {concurrent} at a time; work {work}, results {out}")
        for i, sp in enumerate(specs, 1):
            st = runner.status[sp.name]
            print(f"{i:3d}. {sp.name:<32} {st.state:<8} {st.reason}")
        return 0
    if args.report_only:
        written = write_report(
            tables, specs, runner.status, out=out, work=work, archive=Path(args.archive) if args.archive else None
        )
        print("\n".join(map(str, written)))
        return 0

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    saved = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    rc = 0
    try:
        runner.run()
    except Interrupted as e:
        print(f"reproduce: {e}: stopped the running runs; writing what finished", file=sys.stderr)
        rc = 130
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        written = write_report(
            tables, specs, runner.status, out=out, work=work, archive=Path(args.archive) if args.archive else None
        )
    states = [st.state for st in runner.status.values()]
    print(
        f"finished {states.count('done')}/{len(states)}; failed {states.count('failed')}; "
        f"not run {states.count('skipped')}; cut {states.count('interrupted')}; "
        f"{time.monotonic() - runner.t0:.0f} s"
    )
    for st in runner.status.values():
        if st.state == "failed":
            print(f"FAILED {st.spec.name}: {st.reason}")
    print("\n".join(map(str, written)))
    if rc:
        return rc
    return 1 if "failed" in states else 0


if __name__ == "__main__":
    raise SystemExit(main())
