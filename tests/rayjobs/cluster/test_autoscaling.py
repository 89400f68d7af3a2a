"""Autoscaling for real on one machine: Ray's autoscaler (v1, the one ``ray up`` runs) with its fake multi-node
provider launches cluster.yaml's node types (scaled down by ``rayjobs.cluster.config.local_node_types``: 1 CPU and
1 simulated GPU per node, at most 2 nodes per type), and ``python -m rayjobs.train`` runs on them as on AWS.

The workers ask for ``--accelerator-type A10G`` (Train's ``ScalingConfig(accelerator_type=...)``) but train on the
CPU: a fake node's GPU is a logical resource only. Data: 1% of the ImageNet-LT stand-in (its long-tailed counts,
~1,500 training images) from moto's S3; ResNet-8, one checkpoint per epoch.

The cluster (``rayjobs.local_cluster``) has its own head, ports and temp dir; the drivers are subprocesses, so the
session's ``ray_head`` and any driver connected to it are not involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rayjobs.cluster.config import load_cluster_config, local_node_types
from rayjobs.cluster.local import LocalAutoscalingCluster
from rayjobs.data import prepare, storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
GPU_TYPE = "gpu_a10g"
SET = [
    "data.train_fraction=0.01",
    "data.eval_fraction=0.01",
    "model.backbone=resnet8",
    "optim.batch_size=128",
    "run.checkpoint_every=1",
    "run.plots=false",
]
IDLE_TIMEOUT_MINUTES = 0.1  # cluster.yaml says 10; 6 s here


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.make_bucket(f"autoscale-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def standin(bucket, data_root) -> str:
    from twohead.config import load_config

    return prepare.prepare(load_config(preset="imagenet-lt-standin", overrides=SET), f"s3://{bucket}/datasets").url


@pytest.fixture(scope="module")
def cluster(s3_server, data_root):
    # Started after the S3 server: the head, and every node it launches, inherit AWS_ENDPOINT_URL.
    types = local_node_types(load_cluster_config(REPO / "cluster.yaml"))
    with LocalAutoscalingCluster(types, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES) as c:
        yield c


@pytest.fixture
def idle(cluster) -> LocalAutoscalingCluster:
    """The cluster with cluster.yaml's (scaled) limits and no worker node up, as after `ray up`."""
    cluster.set_max_workers(GPU_TYPE, cluster.node_types[GPU_TYPE]["max_workers"])
    cluster.wait_for_workers(0, timeout=90)
    return cluster


def train(
    cluster: LocalAutoscalingCluster,
    tmp_path: Path,
    data: str,
    runs: str,
    name: str,
    epochs: int,
    *args: str,
    tick: Callable[[], None] = lambda: None,
    timeout: float = 420,
) -> dict:
    """Run ``python -m rayjobs.train`` on the cluster, calling ``tick`` every half second while it runs; returns
    its JSON summary line."""
    cmd = [sys.executable, "-m", "rayjobs.train", "--data", data, "--storage", runs, "--name", name]
    cmd += ["--preset", "imagenet-lt-standin", *[a for s in [*SET, f"optim.epochs={epochs}"] for a in ("--set", s)], *args]
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, env=dict(os.environ, **cluster.driver_env()), cwd=tmp_path, stdout=fo, stderr=fe)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                tick()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    # Ray's driver also prints autoscaler events ("(autoscaler +1m33s) Resized to ...") on stdout, at any time,
    # so the summary is the last line that is a JSON object, not simply the last line.
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{out.read_text()[-2000:]}\n{err.read_text()[-6000:]}"
    return json.loads(lines[-1])


def registered_epoch(run_url: str) -> int:
    """The epoch of the latest checkpoint Ray Train has registered for the run, i.e. what a restarted worker group
    resumes from (0 before the first). Read from the snapshot its checkpoint manager keeps for resuming, written
    once every rank has reported: a checkpoint folder alone may still miss the other ranks' reports."""
    url = f"{run_url}/checkpoint_manager_snapshot.json"
    if not storage.exists(url):
        return 0
    latest = json.loads(storage.read_bytes(url))["latest_checkpoint_result"]
    return int(latest["metrics"]["epoch"]) if latest else 0


def epochs_in_history(results_url: str) -> list[int]:
    text = storage.read_bytes(f"{results_url}/history.jsonl").decode()
    return [json.loads(ln)["epoch"] for ln in text.splitlines()]


def test_two_workers_start_nodes_from_zero_which_are_released_when_idle(idle, standin, bucket, tmp_path):
    types_seen: set[str | None] = set()
    most = 0

    def tick() -> None:
        nonlocal most
        nodes = idle.worker_nodes()
        types_seen.update(n["node_type"] for n in nodes)
        most = max(most, len(nodes))

    runs = f"s3://{bucket}/runs"
    out = train(idle, tmp_path, standin, runs, "from-zero", 1, "--num-workers", "2", "--accelerator-type", "A10G", tick=tick)
    assert out["workers"] == 2 and len(set(out["nodes"])) == 2, out  # one worker per 1-CPU node
    assert types_seen == {GPU_TYPE} and most == 2, "only the A10G type is launched, two nodes of it"
    assert out["epochs"] == 1 and storage.read_json(f"{out['results']}/metrics.json")["epochs"] == 1

    t0 = time.monotonic()
    idle.wait_for_workers(0, timeout=90)  # idle_timeout_minutes=0.1: gone within seconds, not minutes
    print(f"worker nodes released {time.monotonic() - t0:.1f}s after the run ended")


def test_elastic_run_starts_with_one_worker_and_grows_to_two(idle, standin, bucket, tmp_path):
    """Ray 2.60's elastic Train (``--num-workers 1-2``): it starts as soon as one worker fits, keeps asking the
    autoscaler for two, and when a second node has joined it restarts the group with two workers from the latest
    checkpoint (checked every ``--elastic-resize-interval`` seconds)."""
    idle.set_max_workers(GPU_TYPE, 1)  # only one A10G node can start at first (quota / capacity)
    runs = f"s3://{bucket}/runs"
    nodes_at_first_checkpoint: int | None = None

    def tick() -> None:
        nonlocal nodes_at_first_checkpoint
        if nodes_at_first_checkpoint is None and registered_epoch(f"{runs}/elastic") >= 1:
            nodes_at_first_checkpoint = len(idle.worker_nodes())
            idle.set_max_workers(GPU_TYPE, 2)  # room for the second node

    # Enough epochs that the group of one is still training when Train notices the second node. It sees a node
    # only through Ray's autoscaling coordinator, which refreshes its reservations every 20 s (its TICK_INTERVAL_S),
    # so the resize comes up to ~25 s after the node joined (which is ~3 s after the first checkpoint). Measured
    # on a 2-core VM: epochs of 4-6 s, the resize after epoch 4; with 6 epochs a faster machine's group of one
    # finished first. 11 epochs after the first checkpoint leave the coordinator twice the time it needs at 2-3 s
    # per epoch.
    epochs = 12
    out = train(
        idle, tmp_path, standin, runs, "elastic", epochs, "--num-workers", "1-2", "--accelerator-type", "A10G",
        "--elastic-resize-interval", "2", tick=tick,
    )  # fmt: skip
    assert nodes_at_first_checkpoint == 1, "epoch 1 was trained while the cluster held one node: by one worker"
    assert out["workers"] == 2 and len(set(out["nodes"])) == 2, out
    assert 1 <= out["restored_epoch"] < epochs, out  # the group of two went on from the group of one's checkpoint
    assert out["epochs"] == epochs and epochs_in_history(out["results"]) == list(range(1, epochs + 1))


def test_node_removed_mid_run_resumes_from_checkpoint_on_a_replacement(idle, standin, bucket, tmp_path):
    runs = f"s3://{bucket}/runs"
    before: set[str] = set()
    removed: str | None = None
    trained_when_removed = 0

    def tick() -> None:
        nonlocal removed, trained_when_removed
        if removed is None and registered_epoch(f"{runs}/lost-node") >= 1:
            before.update(n["node_id"] for n in idle.worker_nodes())
            removed = idle.terminate_node(GPU_TYPE)  # the provider terminates a busy node, as a spot reclaim does
            trained_when_removed = registered_epoch(f"{runs}/lost-node")

    # Enough epochs after the first checkpoint (~3 s each) that the node is gone while the group still trains.
    epochs = 8
    out = train(
        idle, tmp_path, standin, runs, "lost-node", epochs, "--num-workers", "2", "--accelerator-type", "A10G",
        "--max-failures", "2", tick=tick,
    )  # fmt: skip
    assert removed in before and len(before) == 2
    assert 1 <= trained_when_removed < epochs, f"the node went away after epoch {trained_when_removed} of {epochs}"
    # Resumed from the checkpoint registered before the node went (or a later one), not from scratch.
    assert trained_when_removed <= out["restored_epoch"] < epochs, out
    assert out["epochs"] == epochs and epochs_in_history(out["results"]) == list(range(1, epochs + 1))
    final = set(out["nodes"])
    assert len(final) == 2 and removed not in final and len(final - before) == 1, (before, removed, final)
