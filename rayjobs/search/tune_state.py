"""Tune's experiment snapshot, checked against the checkpoints its trials really kept, before a search resumes.

A trial keeps its newest ``num_to_keep`` checkpoints: registering one deletes the oldest at once, while the
driver's experiment snapshot (``experiment_state-*.json``, what ``Tuner.restore`` reads) is only rewritten a moment
later. A driver killed inside that gap leaves a snapshot whose trial resumes from a checkpoint folder that no longer
exists; Ray then fails the trial on every retry ("Could not recover from checkpoint as it does not exist on storage
anymore") and the study records FAIL for a trial that had trained fine. :func:`repoint_missing_checkpoints` points
such a trial at the newest checkpoint its folder still holds (registered after the snapshot, so newer than the one
named), with the result Tune recorded for it in ``result.json`` when that file has it (else none: Tune's iteration
count restarts, while the epoch, which ASHA and the searcher read, comes from the checkpoint itself), tracks the
folders in between again so that the rotation removes them, and moves the trial's checkpoint index past it (the
stale index would write the next checkpoints over those folders). Without a newer one the trial resumes from the
newest older one still there, or starts again, its run folder's history kept beside the new one
(:func:`twohead.runs.claim_run_dir`).

It edits the snapshot with Ray's own (de)serialisers, on the files Tune itself wrote (never user input); the
internals it touches (``_CheckpointManager``'s two fields) are those of the pinned Ray version.

A snapshot also names, by module path, what Tune pickled (the searcher, the search space, the trial's job). An
experiment saved before ``rayjobs/`` was split into packages names the former paths (``rayjobs.searcher``, ...):
:func:`resolve_former_module_paths` makes those names import the same modules, so such a search still resumes.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import posixpath
import sys
from typing import Any

__all__ = ["FORMER_MODULE_PATHS", "repoint_missing_checkpoints", "resolve_former_module_paths"]

# Former module path -> module, for the modules whose objects a Tune experiment of a search holds (its tuner.pkl:
# the searcher, the space, the objectives, the trial's job; its trial states: the trial) and those they refer to.
# The names that are still modules (rayjobs.search and rayjobs.train became packages, rayjobs.labels / .prepare /
# .report stayed as entry modules) hold nothing a snapshot pickles: the trainable is passed again on restore.
FORMER_MODULE_PATHS = {
    "rayjobs.searcher": "rayjobs.search.searcher",
    "rayjobs.search_space": "rayjobs.search.space",
    "rayjobs.space_schema": "rayjobs.search.space_schema",
    "rayjobs.space_params": "rayjobs.search.space_params",
    "rayjobs.objectives": "rayjobs.search.objectives",
    "rayjobs.study": "rayjobs.search.study",
    "rayjobs.seeding": "rayjobs.search.seeding",
    "rayjobs.trial": "rayjobs.search.trial",
    "rayjobs.tuning": "rayjobs.search.tuning",
    "rayjobs.reporting": "rayjobs.train.reporting",
    "rayjobs.dataplane": "rayjobs.data.plane",
    "rayjobs.storage": "rayjobs.data.storage",
    "rayjobs.stream": "rayjobs.data.stream",
}


def resolve_former_module_paths() -> list[str]:
    """Make each former path of :data:`FORMER_MODULE_PATHS` import its module in this process (the driver, where Tune
    unpickles its snapshot); the names already importable are left alone. Returns the names it added."""
    added = []
    for old, new in FORMER_MODULE_PATHS.items():
        if old not in sys.modules and importlib.util.find_spec(old) is None:
            sys.modules[old] = importlib.import_module(new)
            added.append(old)
    return added


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _checkpoint_dirs(fs: Any, trial_path: str) -> list[str]:
    """The ``checkpoint_<k>`` folders of a trial, oldest first (Tune numbers them in order)."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    except OSError:
        return []
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
    return sorted(n for n in names if n.startswith("checkpoint_") and n[len("checkpoint_") :].isdigit())


def _name(result: Any) -> str:
    return posixpath.basename(result.checkpoint.path.rstrip("/"))


def _nonempty(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    try:
        return any(i.type == pafs.FileType.File for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)))
    except OSError:
        return False


def _result_of(fs: Any, trial_path: str, checkpoint_dir: str) -> dict:
    """The result Tune recorded with ``checkpoint_dir`` (its ``training_iteration``, time, metrics), or {}."""
    try:
        with fs.open_input_stream(posixpath.join(trial_path, "result.json")) as f:
            lines = f.readall().decode().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("checkpoint_dir_name") == checkpoint_dir:
            return row
    return {}


def repoint_missing_checkpoints(fs: Any, experiment_path: str) -> list[str]:
    """Repair the newest experiment snapshot in ``experiment_path`` (on pyarrow filesystem ``fs``) as the module
    docstring says; returns one line per trial changed (nothing is written when none is)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.utils.serialization import TuneFunctionDecoder, TuneFunctionEncoder

    newest = _find_newest_experiment_checkpoint(experiment_path, fs=fs)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.readall().decode())
    changed: list[str] = []
    for entry in state.get("trial_data", []):
        meta = json.loads(entry[1], cls=TuneFunctionDecoder, allow_cloudpickle=True)
        manager = meta.get("checkpoint_manager")
        latest = getattr(manager, "_latest_checkpoint_result", None)
        if latest is None or latest.checkpoint is None:
            continue
        trial_dir = posixpath.basename(posixpath.dirname(latest.checkpoint.path.rstrip("/")))
        trial_path = posixpath.join(experiment_path, trial_dir)
        named = posixpath.basename(latest.checkpoint.path.rstrip("/"))
        if _exists(fs, posixpath.join(trial_path, named)):
            continue
        kept = [r for r in manager._checkpoint_results if _exists(fs, posixpath.join(trial_path, _name(r)))]
        newer = [d for d in _checkpoint_dirs(fs, trial_path) if d > named and _nonempty(fs, posixpath.join(trial_path, d))]
        if newer:
            # Tune registers (and only then rotates) a checkpoint once it is fully written, so a newer folder with
            # a recorded result is whole; result.json may itself be as old as the snapshot, then the newest folder
            rows = {d: _result_of(fs, trial_path, d) for d in newer}
            resume = next((d for d in reversed(newer) if rows[d]), newer[-1])
            for d in newer[: newer.index(resume) + 1]:  # tracked again, so the rotation removes them in turn
                ckpt = Checkpoint(path=posixpath.join(trial_path, d), filesystem=fs)
                kept.append(_TrainingResult(checkpoint=ckpt, metrics=rows[d]))
            # the trial's next checkpoint folder follows the one it resumes from (Tune keeps the index in the
            # trial's storage context; the stale one would write over the folders above)
            trial_state = json.loads(entry[0], cls=TuneFunctionDecoder, allow_cloudpickle=True)
            trial_state["storage"].current_checkpoint_index = int(resume[len("checkpoint_") :]) + 1
            entry[0] = json.dumps(trial_state, indent=2, cls=TuneFunctionEncoder)
        manager._checkpoint_results = kept
        manager._latest_checkpoint_result = kept[-1] if kept else None
        entry[1] = json.dumps(meta, cls=TuneFunctionEncoder)
        now = _name(kept[-1]) if kept else "none (it starts again)"
        changed.append(f"{trial_dir}: the snapshot named {named}, which it had already replaced; resuming from {now}")
    if changed:
        tmp = newest + ".repair"
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps(state).encode())
        fs.move(tmp, newest)
    return changed
