"""Shared fixtures: the data root, a moto S3 server, and ONE real local Ray head per test session.

Ray is started lazily (only tests that ask for ``ray_head`` / ``ray_session`` pay for it) as a real
``ray start --head --block`` from this venv, dashboard on (the Jobs API and Tune+Train+ASHA need it,
see the README's cluster notes), and stopped with SIGTERM at the end of the session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Never create or depend on ~/.ray/auth_token (notes: token auth); no usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder (CIFAR-10 Parquet, ImageNet-LT lists); CI lays it beside the clone."""
    root = Path(os.environ.get("TWOHEAD_DATA", REPO.parent / "shared" / "data"))
    if not (root / "cifar10" / "train.parquet").is_file():
        pytest.fail(f"shared data not found under {root}: set TWOHEAD_DATA to the folder holding cifar10/")
    os.environ["TWOHEAD_DATA"] = str(root)
    return root


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """moto's S3 server on 127.0.0.1, reached through the normal S3 code path via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class RayHead:
    address: str  # GCS address host:port, for ray.init(address=...)
    dashboard_url: str  # http://127.0.0.1:PORT, for the Jobs API
    temp_dir: str


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard at {url} did not come up in {timeout:.0f}s: {last}")


@pytest.fixture(scope="session")
def ray_head(s3_server, data_root) -> RayHead:
    """A real local head (`ray start --head --block`) with the dashboard, this venv first on PATH.

    It inherits the S3 endpoint and data root from the environment, so jobs and workers reach the
    moto server and $TWOHEAD_DATA like a user's cluster reaches S3.
    """
    temp_dir = tempfile.mkdtemp(prefix="thray", dir="/tmp")  # short: Ray's socket paths are limited
    port, dash, agent = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        f"--dashboard-agent-listen-port={agent}",
        "--disable-usage-stats",
        f"--object-store-memory={200 * 2**20}",
    ]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dash}", temp_dir=temp_dir)
    try:
        _wait_http(f"{head.dashboard_url}/api/version", timeout=90)
        yield head
    finally:
        # Stop only the head we started: SIGTERM to its `--block` process, which shuts its head down.
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def ray_session(ray_head):
    """This pytest process connected as a driver to the session's head."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_head.address, log_to_driver=False)
    yield ray_head
    ray.shutdown()
