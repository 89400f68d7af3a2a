"""rayjobs.search.tune_state: a snapshot naming a checkpoint its trial had already replaced is pointed at the newest one kept.

A real Tune experiment (a function trainable reporting three checkpoints, num_to_keep=2, on the session's Ray head)
leaves checkpoint_000001 and checkpoint_000002 in its trial folder. The snapshot a driver killed between the
rotation and the next snapshot leaves is made from its final one by naming checkpoint_000000 (deleted by the
rotation) as the trial's latest, through the same Ray (de)serialisers Tune uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rayjobs.search.tune_state import repoint_missing_checkpoints


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory) -> Path:
    from ray import tune

    def _three_checkpoints(config):  # nested: pickled by value (the workers cannot import this test module)
        import tempfile
        from pathlib import Path

        from ray import tune

        for i in range(3):
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state.txt").write_text(str(i + 1))
                tune.report({"epoch": i + 1}, checkpoint=tune.Checkpoint.from_directory(d))

    root = tmp_path_factory.mktemp("tune-state")
    results = tune.Tuner(
        _three_checkpoints,
        run_config=tune.RunConfig(
            name="e", storage_path=str(root), checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=0
        ),
    ).fit()
    assert not results.errors, results.errors
    return root / "e"


def _state_file(exp: Path) -> Path:
    return max(exp.glob("experiment_state-*.json"))


def _manager(exp: Path):
    from ray.tune.utils.serialization import TuneFunctionDecoder

    (entry,) = json.loads(_state_file(exp).read_text())["trial_data"]
    return json.loads(entry[1], cls=TuneFunctionDecoder, allow_cloudpickle=True)["checkpoint_manager"]


def _name_as_latest(exp: Path, name: str) -> None:
    """Rewrite the snapshot so that its trial's latest (and only) checkpoint is ``name``: a stale snapshot."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.utils.serialization import TuneFunctionDecoder, TuneFunctionEncoder

    f = _state_file(exp)
    state = json.loads(f.read_text())
    entry = state["trial_data"][0]
    meta = json.loads(entry[1], cls=TuneFunctionDecoder, allow_cloudpickle=True)
    m = meta["checkpoint_manager"]
    (trial,) = _trial_dirs(exp)
    ckpt = Checkpoint(path=str(trial / name), filesystem=pafs.LocalFileSystem())
    stale = _TrainingResult(checkpoint=ckpt, metrics={"epoch": 1, "training_iteration": 1})
    m._checkpoint_results, m._latest_checkpoint_result = [stale], stale
    entry[1] = json.dumps(meta, cls=TuneFunctionEncoder)
    f.write_text(json.dumps(state))


def _next_index(exp: Path) -> int:
    from ray.tune.utils.serialization import TuneFunctionDecoder

    (entry,) = json.loads(_state_file(exp).read_text())["trial_data"]
    return json.loads(entry[0], cls=TuneFunctionDecoder, allow_cloudpickle=True)["storage"].current_checkpoint_index


def _trial_dirs(exp: Path) -> list[Path]:
    return [p for p in exp.iterdir() if p.is_dir() and p.name.startswith("_three")]  # Tune's trial folder


def _copy(experiment: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(experiment, tmp_path / "e"))


def test_a_snapshot_whose_checkpoints_all_exist_is_left_alone(experiment, tmp_path):
    exp = _copy(experiment, tmp_path)
    before = _state_file(exp).read_bytes()
    assert repoint_missing_checkpoints(pafs.LocalFileSystem(), str(exp)) == []
    assert _state_file(exp).read_bytes() == before


def test_a_stale_snapshot_resumes_from_the_newest_checkpoint_kept_with_its_result(experiment, tmp_path):
    exp = _copy(experiment, tmp_path)
    (trial,) = _trial_dirs(exp)
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == ["checkpoint_000001", "checkpoint_000002"]
    _name_as_latest(exp, "checkpoint_000000")
    changed = repoint_missing_checkpoints(pafs.LocalFileSystem(), str(exp))
    assert len(changed) == 1 and "named checkpoint_000000" in changed[0] and "from checkpoint_000002" in changed[0]
    m = _manager(exp)
    latest = m._latest_checkpoint_result
    assert Path(latest.checkpoint.path) == trial / "checkpoint_000002"
    assert (Path(latest.checkpoint.path) / "state.txt").read_text() == "3"
    assert latest.metrics["epoch"] == 3 and latest.metrics["training_iteration"] == 3  # Tune's result of that report
    assert [Path(r.checkpoint.path).name for r in m._checkpoint_results] == ["checkpoint_000001", "checkpoint_000002"]
    assert _next_index(exp) == 3  # the next checkpoint is checkpoint_000003, not over checkpoint_000001


def test_a_stale_result_file_still_resumes_from_the_newest_folder(experiment, tmp_path):
    exp = _copy(experiment, tmp_path)
    (trial,) = _trial_dirs(exp)
    _name_as_latest(exp, "checkpoint_000000")
    (trial / "result.json").write_text((trial / "result.json").read_text().splitlines()[0] + "\n")  # epoch 1 only
    repoint_missing_checkpoints(pafs.LocalFileSystem(), str(exp))
    latest = _manager(exp)._latest_checkpoint_result
    assert Path(latest.checkpoint.path) == trial / "checkpoint_000002" and latest.metrics == {}
    assert _next_index(exp) == 3


def test_a_stale_snapshot_without_any_checkpoint_left_starts_the_trial_again(experiment, tmp_path):
    exp = _copy(experiment, tmp_path)
    (trial,) = _trial_dirs(exp)
    _name_as_latest(exp, "checkpoint_000002")
    for p in trial.glob("checkpoint_*"):
        shutil.rmtree(p)
    changed = repoint_missing_checkpoints(pafs.LocalFileSystem(), str(exp))
    assert len(changed) == 1 and changed[0].endswith("resuming from none (it starts again)")
    m = _manager(exp)
    assert m._latest_checkpoint_result is None and m._checkpoint_results == []


def test_a_snapshot_of_the_former_layout_loads_once_its_module_paths_resolve():
    """What a search saved before rayjobs/ was split into packages pickled (its searcher's objective, under
    ``rayjobs.objectives``) fails to load as it is and loads equal once the former paths resolve. In a fresh
    interpreter: the test session's own modules stay as they are."""
    code = textwrap.dedent(
        """
        import pickle, sys
        import rayjobs.search.objectives as objectives

        sys.modules["rayjobs.objectives"] = objectives  # pickled the way the former layout named the class
        objectives.Objective.__module__ = "rayjobs.objectives"
        blob = pickle.dumps(objectives.Objective("val_few", "max"))
        objectives.Objective.__module__ = "rayjobs.search.objectives"
        del sys.modules["rayjobs.objectives"]
        assert b"rayjobs.objectives" in blob
        try:
            pickle.loads(blob)
        except ModuleNotFoundError as e:
            assert "rayjobs.objectives" in str(e), e
        else:
            raise AssertionError("a former module path loaded without being resolved")

        from rayjobs.search.tune_state import FORMER_MODULE_PATHS, resolve_former_module_paths

        assert resolve_former_module_paths() == list(FORMER_MODULE_PATHS)  # none of them is a module any more
        assert pickle.loads(blob) == objectives.Objective("val_few", "max")
        assert resolve_former_module_paths() == []  # once per process
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
