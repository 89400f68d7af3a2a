"""Search benchmark: the smoke search with and without ``--data``, trials per hour and per-trial data start-up.

    python -m rayjobs.bench_search                       # smoke preset, local Ray on every core
    python -m rayjobs.bench_search --set optim.epochs=2 --json bench_search.json

Runs the same search twice on a fresh local Ray: (1) trials build the dataset themselves from ``TWOHEAD_DATA``
(the embedded default: every trial decodes the Parquet images again), (2) ``--data`` on the same dataset
prepared by ``rayjobs.prepare`` into a temporary folder (the data plane: the splits are decoded once per node
and every other trial maps them from the object store). Prints a Markdown table (tabulate): wall time, trials per
hour, and the data start-up each trial recorded (``data_start_s``: from the trial's start to its first batch
being ready; the first trial on a node pays the node's decode, ``node_decode_s``).

Measures wall-clock time, so it is a benchmark, never a test; results depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _search(spec: Any, out: Path, data: str | None, num_cpus: int) -> dict[str, Any]:
    import optuna

    from rayjobs.search.driver import run_search

    t0 = time.perf_counter()
    res = run_search(spec, out, data=data, verbose=0, num_cpus=num_cpus)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=spec.study_name, storage=res.storage.url)
    starts = [t.user_attrs["data_start_s"] for t in study.trials if "data_start_s" in t.user_attrs]
    epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
    return {
        "wall_s": wall,
        "trials": len(study.trials),
        "epochs": epochs,
        "errors": res.errors,
        "trials_per_hour": 3600.0 * len(study.trials) / wall,
        "data_start_s": sorted(starts),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayjobs.bench_search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke", help="search space preset (default smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config (repeatable)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="TWOHEAD_CACHE=off: trials without --data decode the source images (a fresh node) instead of "
        "reading this machine's cache of decoded arrays",
    )
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.cold:
        os.environ["TWOHEAD_CACHE"] = "off"  # inherited by the local Ray's workers, i.e. the trials
    os.environ.setdefault("TQDM_DISABLE", "1")
    import optuna
    from tabulate import tabulate

    from rayjobs.data import prepare
    from rayjobs.search.space import load_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_search_space(args.preset).replace(set=args.set or None)
    cpus = args.num_cpus or len(os.sched_getaffinity(0))
    res: dict[str, Any] = {"cpus": cpus, "machine": platform.machine(), "preset": args.preset, "set": args.set}
    res["decode_cache"] = "off" if args.cold else "on"
    with tempfile.TemporaryDirectory(prefix="twohead-bench-search-") as tmp:
        root = Path(tmp)
        res["local"] = _search(spec, root / "local", None, cpus)
        t0 = time.perf_counter()
        url = prepare.prepare(spec.base, str(root / "datasets")).url
        res["prepare_s"] = time.perf_counter() - t0
        res["data"] = _search(spec, root / "data", url, cpus)

    rows = []
    for key, what in (
        ("local", "trials build the dataset (no --data)"),
        ("data", "--data: prepared shards, one decode per node"),
    ):
        r = res[key]
        s = r["data_start_s"]
        rows.append(
            [
                what,
                r["trials"],
                r["epochs"],
                f"{r['wall_s']:.0f}",
                f"{r['trials_per_hour']:.0f}",
                f"{statistics.median(s):.2f}" if s else "",
                f"{min(s):.2f} / {max(s):.2f}" if s else "",
            ]
        )
    print(
        f"\nSearch benchmark: preset {args.preset} {' '.join(args.set)}; local Ray on {cpus} CPUs ({res['machine']}); "
        f"decoded-array cache {res['decode_cache']}; prepare of the dataset: {res['prepare_s']:.1f} s (once, not in the "
        "search)\n"
    )
    headers = ["search", "trials", "epochs trained", "wall s", "trials / hour", "data start-up s (median)", "min / max"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
