"""``ray job submit`` end to end: the README's prepare and train jobs on the session's real head (dashboard +
Jobs API), with the repository shipped as the job's working_dir and the (moto) S3 server as storage."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from rayjobs.data import storage
from rayjobs.data.manifest import verify_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = "--preset smoke --set data.train_fraction=0.02 --set data.eval_fraction=0.02"


def runtime_env(s3_server, data_root) -> dict:
    import os

    return {
        "working_dir": str(REPO),
        "excludes": [".venv", ".git", "runs", ".data", ".cache", ".pytest_cache", "**/__pycache__", "*.egg-info"],
        "env_vars": {
            "AWS_ENDPOINT_URL": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "TWOHEAD_DATA": str(data_root),
            "TQDM_DISABLE": "1",
        },
    }


def wait(client, job_id: str, timeout: float = 360) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1.0)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} did not finish in {timeout:.0f}s; logs:\n{client.get_job_logs(job_id)[-4000:]}")


def submit(client, entrypoint: str, env: dict, timeout: float = 90) -> str:
    """submit_job, retried while the head's job agent is still starting ("No available agent")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@pytest.mark.slow
def test_prepare_then_train_jobs(ray_head, s3_server, data_root):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard_url)
    bucket = s3_server.make_bucket(f"jobs-{uuid.uuid4().hex[:8]}")
    env = runtime_env(s3_server, data_root)

    prep = submit(client, f"python -m rayjobs.prepare --out s3://{bucket}/datasets {TINY}", env)
    assert wait(client, prep) == JobStatus.SUCCEEDED, client.get_job_logs(prep)[-4000:]
    data_url = f"s3://{bucket}/datasets/cifar10-lt-imb100-f0.02-0.02"
    assert f"prepared {data_url}" in client.get_job_logs(prep)
    verify_dataset(data_url)

    # A cluster that can never hold the workers: the job fails fast with the reason, before training.
    too_big = submit(
        client, f"python -m rayjobs.train --data {data_url} --storage s3://{bucket}/runs --name big {TINY} --num-workers 16", env
    )
    assert wait(client, too_big, timeout=120) == JobStatus.FAILED
    assert "--num-workers 16 needs 16 CPU" in client.get_job_logs(too_big)

    job = submit(
        client,
        f"python -m rayjobs.train --data {data_url} --storage s3://{bucket}/runs --name job-c10 {TINY} "
        f"--set optim.epochs=1 --set optim.milestones=[] --num-workers 1 --max-failures 1",
        env,
    )
    assert wait(client, job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-6000:]
    assert '"in_memory": true' in client.get_job_logs(job)  # --stream auto: tiny 32 px data is loaded once
    files = storage.list_files(f"s3://{bucket}/runs/job-c10")
    assert any(f.startswith("checkpoint_") and f.endswith("/state.pt") for f in files), files
    metrics = storage.read_json(f"s3://{bucket}/runs/job-c10/results/metrics.json")
    assert metrics["epochs"] == 1 and metrics["dataset"] == "cifar10-lt"
    # the test subset is balanced (stratified), so top-1 is the mean per-class recall: a consistent report
    assert metrics["top1"] == pytest.approx(sum(metrics["per_class_recall"]) / len(metrics["per_class_recall"]))
    assert {"config.yaml", "history.jsonl"} <= set(storage.list_files(f"s3://{bucket}/runs/job-c10/results"))
