"""rayjobs.train: Ray Train around twohead.loop.fit -- fault tolerance, resume, 2-node DDP, capacity checks.

Checkpoints and results go to the moto S3 server, data streams from it, like on a cluster.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from rayjobs.data import prepare, storage
from rayjobs.data.manifest import read_manifest
from rayjobs.train import job as train

REPO = Path(__file__).resolve().parents[3]
# ~250 training images, 2-3 epochs: a few seconds per epoch on one CPU worker.
TINY = ["data.train_fraction=0.02", "data.eval_fraction=0.02", "run.checkpoint_every=1"]


def tiny_cfg(*extra: str):
    from twohead.config import load_config

    return load_config(preset="smoke", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.make_bucket(f"train-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def s3_ds(bucket, data_root) -> str:
    return prepare.prepare(tiny_cfg(), f"s3://{bucket}/datasets").url


def test_parse_workers():
    assert train.parse_workers("4") == 4
    assert train.parse_workers("2-8") == (2, 8)
    assert train.parse_workers("3-3") == 3
    for bad in ("0", "5-2", "x", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"--num-workers '{bad}' must be N >= 1 or MIN-MAX"):
            train.parse_workers(bad)


def test_too_many_workers_fails_before_submitting(ray_session, s3_ds, bucket):
    # Streaming needs a CPU for Ray Data besides the workers' CPUs.
    with pytest.raises(
        train.InsufficientResourcesError, match=r"--num-workers 64 needs 65 CPU .* has 2 CPU; use at most --num-workers 1"
    ):
        train.run(tiny_cfg(), data_url=s3_ds, storage_url=f"s3://{bucket}/runs", name="too-many", num_workers=64, stream="on")
    with pytest.raises(
        train.InsufficientResourcesError, match=r"--num-workers 3 needs 3 CPU .* has 2 CPU; use at most --num-workers 2"
    ):
        train.run(tiny_cfg(), data_url=s3_ds, storage_url=f"s3://{bucket}/runs", name="too-many", num_workers=3, stream="off")
    with pytest.raises(train.InsufficientResourcesError, match="needs 2 GPU"):
        train.run(
            tiny_cfg(), data_url=s3_ds, storage_url=f"s3://{bucket}/runs", name="too-many", num_workers=(2, 4), use_gpu=True
        )
    assert storage.list_files(f"s3://{bucket}/runs/too-many") == []  # nothing was started or written


@pytest.mark.slow
def test_skip_invalid_records_every_dropped_row_when_the_data_is_loaded_in_memory(ray_session, s3_ds, bucket):
    """--skip-invalid on 32 px data (loaded once, not streamed): the dropped rows are counted in data_report.json."""
    from test_stream import rewrite_train_shard, set_row

    src = read_manifest(s3_ds)
    bad = rewrite_train_shard(src, f"{s3_ds}-skip", lambda t: set_row(t, "image", 3, b"not an image"))
    shard = bad.splits["train"].shards[0]
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad_id = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(bad.url, shard.path)))).column("id")[3].as_py()
    out = train.run(
        tiny_cfg("optim.epochs=1", "optim.milestones=[]"),
        data_url=bad.url,
        storage_url=f"s3://{bucket}/runs",
        name="skip",
        skip_invalid=True,
    )
    assert out["in_memory"] is True and out["metrics"]["skipped_rows"] == 1
    report = storage.read_json(f"{out['results_url']}/data_report.json")
    assert report["skipped"] == 1 and report["first"][0]["id"] == bad_id
    assert report["first"][0]["reason"].startswith("undecodable image")


def _latest_state(run_url: str) -> dict:
    fs, path = storage.resolve(run_url)
    dirs = sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(path))
        if i.base_name.startswith("checkpoint_") and i.type == pafs.FileType.Directory
    )
    assert dirs, f"no checkpoint under {run_url}"
    with fs.open_input_stream(f"{dirs[-1]}/{train.STATE_FILE}") as f:
        import io

        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)


def test_a_failed_run_is_one_line_that_says_how_to_resume(monkeypatch, capsys):
    """A worker's exception reaches the driver as its traceback text inside Ray's WorkerGroupError; the command
    prints the error itself (not the traceback), where the checkpoints are and how to resume, and exits 1."""
    from ray.train import WorkerGroupError

    tb = (
        'Traceback (most recent call last):\n  File "rayjobs/storage.py", line 318, in upload_dir\n'
        "rayjobs.data.storage.StorageError: cannot upload to s3://b/runs/r/results: the object store is unreachable\n"
    )

    def failing_run(cfg, **kw):
        raise WorkerGroupError("[Rank 0 Error Snippet]: ...", {1: RuntimeError("rank 1 saw rank 0 go"), 0: RuntimeError(tb)})

    monkeypatch.setattr(train, "run", failing_run)
    argv = ["--data", "s3://b/datasets/d", "--storage", "s3://b/runs", "--name", "r", "--preset", "smoke"]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: run 'r' stopped: rank 0: rayjobs.data.storage.StorageError: cannot upload to s3://b/runs/r/results: the "
        "object store is unreachable; its checkpoints are kept in s3://b/runs/r: rerun the same command to resume "
        "from the last one; --max-failures N lets Ray Train restart the workers by itself\n"
    )
    assert train.main([*argv, "--max-failures", "2"]) == 1
    assert "--max-failures" not in capsys.readouterr().err  # already given: no advice to add it


@pytest.mark.slow
def test_killed_worker_resumes_and_rerun_resumes(ray_session, s3_ds, bucket, tmp_path):
    from ray.train import TrainingFailedError

    from twohead.tracking import TrackingSettings, resolve_uri

    cfg = tiny_cfg("optim.epochs=3", "optim.milestones=[2]")
    runs = f"s3://{bucket}/runs"
    run_url = f"{runs}/ft"
    # Rank 0 logs to MLflow; the restarted worker group and the rerun continue the same MLflow run.
    tracking = TrackingSettings(mlflow_uri=resolve_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"), run_key=run_url, run_name="ft")

    # 1) Rank 0 is killed at the end of epoch 2 and no retry is allowed: the run fails after checkpoint 1.
    with pytest.raises(TrainingFailedError) as failed:
        train.run(
            cfg, data_url=s3_ds, storage_url=runs, name="ft", max_failures=0, fail_at_epoch=2, stream="on", tracking=tracking
        )
    # what `python -m rayjobs.train` says of it: one line naming the rank and that its process died
    cause = train.failure_cause(failed.value)
    assert "\n" not in cause and cause.startswith("rank 0: a worker stopped answering") and "died" in cause, cause
    state = _latest_state(run_url)
    assert state["epoch"] == 1
    first_epoch = state["history"][0]

    # 2) The same command again resumes from epoch 1 (not from scratch); rank 0 is killed again at the end
    #    of epoch 3, and the worker group restarts from checkpoint 2 (max_failures=1) and finishes.
    out = train.run(
        cfg, data_url=s3_ds, storage_url=runs, name="ft", max_failures=1, fail_at_epoch=3, stream="on", tracking=tracking
    )
    assert out["restored_epoch"] == 2 and out["in_memory"] is False
    m = out["metrics"]
    # the test subset is balanced (stratified), so top-1 is the mean per-class recall: a consistent report
    assert m["epochs"] == 3 and m["top1"] == pytest.approx(sum(m["per_class_recall"]) / len(m["per_class_recall"]))

    files = storage.list_files(run_url)
    assert {"_fault-injected-epoch2", "_fault-injected-epoch3"} <= set(files)
    assert any(f.startswith("checkpoint_") for f in files)
    results = out["results_url"]
    assert results == f"{run_url}/results"
    assert storage.read_json(f"{results}/metrics.json")["top1"] == m["top1"]
    history = [json.loads(ln) for ln in storage.read_bytes(f"{results}/history.jsonl").decode().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first_epoch  # epoch 1 came from run 1's checkpoint, it was not trained again
    assert "config.yaml" in storage.list_files(results)

    # One MLflow run for the three tries, FINISHED, with the final metrics of metrics.json
    import mlflow

    client = mlflow.MlflowClient(tracking.mlflow_uri)
    (ml,) = client.search_runs([client.get_experiment_by_name("twohead").experiment_id])
    assert ml.info.status == "FINISHED" and ml.data.tags["twohead.run"] == run_url
    assert ml.data.metrics["test/top1"] == pytest.approx(m["top1"])
    losses = {mm.step: mm.value for mm in client.get_metric_history(ml.info.run_id, "train_loss")}
    assert losses == {h["epoch"]: pytest.approx(h["train_loss"]) for h in history}
    # Every checkpoint folder holds the model card of its weights, with the prepared dataset's manifest hash.
    manifest_sha = storage.sha256(f"{s3_ds}/manifest.json")[0]
    ckpts = sorted({f.split("/")[0] for f in files if f.startswith("checkpoint_") and "/" in f})
    assert ckpts
    for ck in ckpts:
        card = storage.read_json(f"{run_url}/{ck}/model_card.json")
        st = torch.load(io.BytesIO(storage.read_bytes(f"{run_url}/{ck}/{train.STATE_FILE}")), weights_only=True)
        assert card["metrics"]["epoch"] == st["epoch"] and card["data"]["manifest_sha256"] == manifest_sha
        assert card["data"]["data_uri"] == s3_ds and card["load"]["python"].startswith(
            "import twohead; clf = twohead.load('state.pt')"
        )


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from twohead.config import load_config
    from twohead.tracking import TrackingSettings
    from rayjobs.train import job as train

    data_url, runs, track_uri = sys.argv[1], sys.argv[2], sys.argv[3]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20})
    cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        cfg = load_config(preset="smoke", overrides=sys.argv[4:])
        out = train.run(cfg, data_url=data_url, storage_url=runs, name="ddp", num_workers=2,
                        placement_strategy="STRICT_SPREAD", stream="on",
                        tracking=TrackingSettings(mlflow_uri=track_uri, run_key=runs + "/ddp", run_name="ddp"))
        print("RESULT " + json.dumps({"world": out["world"], "nodes": out["nodes"], "epochs": out["metrics"]["epochs"],
                                       "top1": out["metrics"]["top1"], "results": out["results_url"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_ddp_two_workers_on_two_nodes(s3_ds, bucket, tmp_path):
    """2 CPU workers (gloo DDP), one per node of a simulated 2-node cluster of its own, each streaming its
    ``streaming_split`` shard from S3; in a subprocess, so the session's head stays untouched."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            s3_ds,
            f"s3://{bucket}/runs",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            *TINY,
            "optim.epochs=1",
            "optim.milestones=[]",
            "optim.batch_size=64",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    res = json.loads(lines[-1][len("RESULT ") :])
    assert res["world"] == 2 and res["epochs"] == 1
    assert len(set(res["nodes"])) == 2, f"the two DDP ranks ran on {res['nodes']}"
    assert storage.read_json(f"{res['results']}/metrics.json")["top1"] == res["top1"]
    # Rank 0 alone logs: one MLflow run, each epoch once
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("twohead").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert run.data.metrics["test/top1"] == pytest.approx(res["top1"]) and run.info.status == "FINISHED"
