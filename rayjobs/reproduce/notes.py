"""The notes under a reproduced table: the recipe and what it changes, every value the paper does not state (with
its source), card / torch / commit / wall times, runs that did not finish, and the learning rate actually applied."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from twohead.config import METHODS

from . import paper
from .cells import fmt_value
from .plan import METHOD_LABELS, RunSpec, TableSpec, changes_results
from .run import RunStatus

__all__ = ["table_notes", "lr_note"]


def table_notes(table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], work: Path) -> list[str]:
    methods = sorted({sp.method for sp in specs}, key=lambda m: (table.methods + tuple(METHODS)).index(m))
    cfgs = {m: next(sp for sp in specs if sp.method == m).config(work) for m in methods}
    # This table's runs only: a plan of several tables (the paper recipe and the reduced scale) never mixes them.
    done = [st for sp in specs if (st := status.get(sp.name)) is not None and st.state == "done" and st.result]
    lines = []
    epochs = sorted({c.optim.epochs for c in cfgs.values()})
    rec = (
        "the paper's recipe"
        if epochs == [200]
        else f"**NOT the paper's recipe: {', '.join(map(str, epochs))} epochs** (paper: 200), schedule scaled proportionally"
    )
    o, me = cfgs[methods[0]].optim, cfgs[methods[0]].method
    lines.append(
        f"- Training: {rec}; {cfgs[methods[0]].model.backbone}, SGD momentum {o.momentum:g}, batch {o.batch_size}, "
        f"lr {o.lr:g} multiplied by {o.lr_gamma:g} at each of epochs "
        f"{', '.join(map(str, o.milestones)) or '(none)'} (0-based; BBN's LR_FACTOR, paper Sec. 3.1); "
        f"u={me.u}, lambda={me.lam:g}, alpha={me.alpha:g}, {me.clustering} cluster splitting with a new split per "
        "seed (cluster seed = run seed)."
    )
    user = {k: v for sp in specs for k, v in sp.sets if changes_results(k)}
    if user:
        lines.append(
            "- Overrides of the recipe (`--set`): " + ", ".join(f"`{k}={fmt_value(v)}`" for k, v in sorted(user.items()))
        )
    lines.append("- Not in the paper (value used, and its source):")
    for key, (only, source) in paper.NOT_IN_PAPER.items():
        users = [m for m in methods if only is None or m in only]
        if not users:
            continue
        sec, k = key.split(".")
        vals = {fmt_value(getattr(getattr(cfgs[m], sec), k)) for m in users}
        who = "" if only is None else f" ({', '.join(METHOD_LABELS.get(m, m) for m in users)})"
        lines.append(f"  - `{key}` = {' / '.join(sorted(vals))}{who}: {source}")
    if done:
        cards = sorted({str(st.result.get("card")) for st in done})
        torches = sorted({str(st.result.get("torch")) for st in done})
        commits = sorted({str(st.result.get("commit", "unknown")) for st in done})
        walls = [float(st.result.get("wall_s") or 0) for st in done]
        conc = sorted({int(st.result.get("concurrent") or 1) for st in done})
        lines.append(f"- Card: {', '.join(cards)}; torch {', '.join(torches)}; commit {', '.join(commits)}.")
        lines.append(
            f"- Wall time per run (training loop, {'/'.join(map(str, conc))} run(s) sharing the device): "
            f"median {statistics.median(walls):.0f} s, total {sum(walls):.0f} s over {len(walls)} runs."
        )
    states = [status[sp.name] for sp in specs if sp.name in status]
    n_done = sum(st.state == "done" for st in states)
    lines.append(f"- Runs: {n_done} of {len(states)} finished.")
    for label, kind in (("Failed", "failed"), ("Not run", "skipped"), ("Not run", "pending"), ("Cut short", "interrupted")):
        group = [st for st in states if st.state == kind]
        if group:
            reasons = sorted({st.reason for st in group})
            lines.append(
                f"- {label}: "
                + ", ".join(st.spec.name for st in group)
                + (f" ({'; '.join(reasons)})" if reasons and reasons != [""] else "")
            )
    return lines


def lr_note(specs: Sequence[RunSpec], status: Mapping[str, RunStatus], work: Path) -> list[str]:
    """A note line: the schedule of the table's config in epoch ranges, and whether the rate the training loop logged
    for every epoch of every finished run (its history's ``lr``, ``lr_by_epoch`` in its JSON) agrees with it (a run
    resumed under another schedule, a damaged history, or a changed :func:`twohead.schedule.lr_at` shows here)."""
    from twohead.schedule import lr_at

    checked, off, unchecked = 0, [], []
    sched: list[float] = []
    for sp in specs:
        st = status.get(sp.name)
        if st is None or st.state != "done" or not st.result:
            continue
        if st.result.get("lr_by_epoch") is None:
            unchecked.append(sp.name)
            continue
        cfg = sp.config(work)
        sched = [lr_at(cfg, e) for e in range(cfg.optim.epochs)]
        got = [float(x) for x in st.result["lr_by_epoch"]]
        checked += 1
        if len(got) != len(sched) or any(not math.isclose(a, b, rel_tol=1e-9) for a, b in zip(got, sched, strict=False)):
            off.append(sp.name)
    if not checked:
        return [f"- Learning rate: not checked ({len(unchecked)} runs have no `lr_by_epoch` record)."] if unchecked else []
    ranges, start = [], 0
    for e in range(1, len(sched) + 1):
        if e == len(sched) or sched[e] != sched[start]:
            ranges.append(f"{start}" + (f"–{e - 1}" if e - 1 > start else "") + f": {sched[start]:g}")
            start = e
    verdict = f"agrees with it in all {checked} runs" if not off else f"differs in {', '.join(off)} ({checked - len(off)} agree)"
    if unchecked:
        verdict += f"; {len(unchecked)} runs not checked (no `lr_by_epoch` record)"
    return [
        f"- Learning rate per epoch (0-based), the schedule: {'; '.join(ranges)}. The rate the training loop logged "
        f"for each epoch (`history.jsonl`, `lr_by_epoch` in each run's JSON) {verdict}."
    ]
