"""What a search starts from: its reference configuration, a warm start from another search, and the sampler an
extension continues with (Ray-free).

- **Reference** (``reference:`` in the search space, e.g. the paper's u=10, alpha=0.5, lambda=1.5, random): enqueued
  as the study's first trial (user attribute ``reference``), so the report can mark it on the Pareto front.
- **Warm start** (``--warm-start STUDY_OR_DIR``): the best configurations of a finished search are enqueued next
  (user attribute ``warm_start`` = ``<source>#<study> trial <number>``), e.g. to start an imbalance-50 search from what
  worked at imbalance 100. The source is a search folder (its ``--out``), its record URL, or an Optuna storage URL
  (``env:NAME`` too) with ``#STUDY`` when it holds several studies. "Best" is decided with the source's own
  objectives among its trials that trained all their epochs: in a multi-objective source the Pareto-optimal
  ones first, then the others; within each, by the search score of :func:`rayjobs.search.objectives.scalarise` (the
  mean of the signed objective values). ``--warm-start-top N`` (default
  4) distinct configurations are enqueued (one equal to the reference is skipped for the next), never more than
  the search's ``num_samples`` in all. Only parameters this space searches, with
  values it could draw, are kept; the others are sampled (the report lists what was dropped).
- Both happen once, when the study has no trial yet; a resumed or extended search never enqueues again.
- **Extension** (a rerun with a larger ``--num-samples``): the new trials run as a new Tune experiment beside the
  first, in the same study, whose trials are the sampler's whole history (TPE reads them from the storage);
  :func:`previous_sampler` also carries the sampler's random state over from the last run's searcher checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.data import storage as store
from rayjobs.search.study import SPACE_FILE, SearchError, display_url, load_record, open_storage, record_storage

__all__ = [
    "DEFAULT_TOP",
    "Segment",
    "WarmStart",
    "enqueue",
    "finished",
    "plan_segments",
    "previous_sampler",
    "rank_trials",
    "resolve_warm_start",
]

log = logging.getLogger("rayjobs.search")

DEFAULT_TOP = 4  # configurations a warm start enqueues by default


@dataclass
class WarmStart:
    """A finished search to start from: its study, how it is named in records, and what was enqueued from it."""

    study: Any  # optuna.Study
    shown: str  # the argument with any password hidden
    top: int = DEFAULT_TOP
    enqueued: list[dict[str, Any]] = field(default_factory=list)


def resolve_warm_start(arg: str, top: int = DEFAULT_TOP) -> WarmStart:
    """Open the study ``--warm-start`` names (module docstring), or :class:`SearchError` saying why not."""
    import optuna

    if top < 1:
        raise SearchError(f"--warm-start-top {top} must be >= 1")
    where, _, name = arg.partition("#")
    is_record = not where.startswith(("sqlite:", "postgresql", "mysql", "env:")) and (
        Path(where, SPACE_FILE).is_file() or (store.is_object_store(where) and store.exists(store.join(where, SPACE_FILE)))
    )
    if is_record:
        record = load_record(where)
        local = None if store.is_object_store(where) else Path(where)
        ss = record_storage(record, None, local, export=False)
        url, name, shown = ss.url, name or record.spec.study_name, record.root
    elif where.startswith("env:"):
        url = os.environ.get(where[4:], "")
        if not url:
            raise SearchError(f"--warm-start {arg}: the environment variable {where[4:]} is not set (or empty)")
        shown = where
    elif "://" in where:
        url, shown = where, display_url(where)
    else:
        raise SearchError(
            f"--warm-start {arg}: not a search folder ({Path(where, SPACE_FILE)} is missing) nor an Optuna storage URL "
            "(sqlite:///..., postgresql://..., env:NAME; add #STUDY to choose a study)"
        )
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not name:
        if len(names) != 1:
            raise SearchError(f"--warm-start {shown} holds studies {sorted(names) or 'none'}: name one with {shown}#STUDY")
        name = names[0]
    if name not in names:
        raise SearchError(f"--warm-start: study {name!r} not found in {shown}; it holds {sorted(names) or 'no study'}")
    study = optuna.load_study(study_name=name, storage=storage)
    return WarmStart(study=study, shown=f"{shown}#{name}", top=top)


def rank_trials(study: Any) -> list[Any]:
    """The source's trials that trained all their epochs, best first (module docstring)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and all(math.isfinite(v) for v in t.values)
    ]
    front = {t.number for t in study.best_trials} if len(signs) > 1 else set()

    def score(t: Any) -> float:
        return sum(s * v for s, v in zip(signs, t.values)) / len(signs)

    return sorted(done, key=lambda t: (t.number not in front, -score(t), t.number))


def enqueue(study: Any, spec: Any, warm: WarmStart | None) -> list[dict[str, Any]]:
    """Enqueue the reference and the warm start's configurations into a study without trials; returns one
    ``{"params", "user_attrs", "dropped"}`` per enqueued trial, in order (empty when the study has trials)."""
    if study.get_trials(deepcopy=False):
        return []
    plan: list[dict[str, Any]] = []
    if spec.reference is not None:
        plan.append({"params": dict(spec.reference.params), "user_attrs": {"reference": spec.reference.label}, "dropped": []})
    if warm is not None:
        taken = 0
        for t in rank_trials(warm.study):
            if taken == warm.top:
                break
            params, dropped = spec.fit_params(t.params)
            if any(p["params"] == params for p in plan):
                continue  # the reference itself, or a configuration already queued: the next one instead
            plan.append({"params": params, "user_attrs": {"warm_start": f"{warm.shown} trial {t.number}"}, "dropped": dropped})
            taken += 1
    plan = plan[: spec.search.num_samples]
    for p in plan:
        study.enqueue_trial(p["params"], user_attrs=p["user_attrs"])
    if warm is not None:
        warm.enqueued = [p for p in plan if "warm_start" in p["user_attrs"]]
    return plan


def previous_sampler(experiment: str) -> Any:
    """The sampler a finished Tune run of the search saved with its searcher (its newest
    ``searcher-state-*.pkl``), or None when there is none to read."""
    import pyarrow.fs as pafs

    fs, path = store.resolve(experiment)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        names = sorted(
            posixpath.basename(i.path)
            for i in infos
            if posixpath.basename(i.path).startswith("searcher-state-") and i.path.endswith(".pkl")
        )
        if not names:
            return None
        # Tune names them by session time (searcher-state-<YYYY-MM-DD_HH-MM-SS>.pkl): the last is the newest.
        state = pickle.loads(store.read_bytes(store.join(experiment, names[-1])))
    except (OSError, pickle.UnpicklingError, store.StorageError, EOFError) as exc:
        log.warning("no sampler state in %s (%s): the extension starts a new seeded sampler", experiment, exc)
        return None
    return state.get("sampler") if isinstance(state, dict) else None


@dataclass(frozen=True)
class Segment:
    """One Tune run of a search: the first, then one per extension (``<study>-extend<k>``)."""

    experiment: str  # its URL (trial folders live under it)
    name: str
    num_samples: int


def plan_segments(meta: dict, experiment: str, root: str, study_name: str, before: int | None, target: int) -> list[Segment]:
    """The search's Tune runs as recorded (``search.json``), plus a new one for trials beyond those when
    ``--num-samples`` grew (``before``: the count recorded before this run)."""
    segs = [Segment(**s) for s in meta.get("segments") or []] or [Segment(experiment, study_name, before or target)]
    total = sum(s.num_samples for s in segs)
    if target > total:
        name = f"{study_name}-extend{len(segs)}"
        segs.append(Segment(store.join(root, name), name, target - total))
    return segs


def finished(study: Any, seg: Segment) -> bool:
    """Did every trial of this Tune run end (COMPLETE or PRUNED) in the study? Then it is not restored again."""
    from optuna.trial import TrialState

    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(t.user_attrs.get("experiment") == seg.experiment for t in ended) >= seg.num_samples
