"""A local autoscaling Ray cluster made from ``cluster.yaml``: the real autoscaler, fake nodes on this machine.

    python -m rayjobs.local_cluster --config cluster.yaml [--idle-timeout-minutes 0.5]
    # prints RAY_ADDRESS=... ; then, in another shell:
    RAY_ADDRESS=... python -m rayjobs.train ... --accelerator-type A10G --num-workers 2

The head runs Ray's autoscaler (v1, the one ``ray up`` starts) with Ray's fake multi-node provider
(``provider.type: fake_multinode``): a "node" it launches is one more raylet on this machine, with the resources
of its node type from :func:`rayjobs.cluster.config.local_node_types`. Jobs see nodes arrive on demand, idle
nodes go away after ``idle_timeout_minutes``, and :meth:`LocalAutoscalingCluster.terminate_node` has the provider
terminate a busy node, as the cloud does when it reclaims a spot instance.

This is what ``ray.cluster_utils.AutoscalingCluster`` sets up, which cannot be used as is with Ray 2.60: its
template (``fake_multi_node/example.yaml``) is not in the wheel, and its ``start()`` / ``shutdown()`` run
``ray stop --force``, which stops every Ray instance of the machine. Here the config is built in full, the head
gets its own ports and temp dir, and shutdown ends only this cluster's processes (its session, by id).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twohead import atomic

__all__ = ["HEAD_NODE_TYPE", "LocalAutoscalingCluster", "fake_autoscaling_config", "free_port", "main"]

HEAD_NODE_TYPE = "ray.head.default"  # the fake provider's name for the head's type


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local server this process starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_autoscaling_config(
    node_types: dict[str, dict[str, Any]],
    *,
    gcs_address: str,
    head_resources: dict[str, Any] | None = None,
    max_workers: int | None = None,
    idle_timeout_minutes: float = 0.1,
    upscaling_speed: float = 1.0,
) -> dict[str, Any]:
    """The autoscaling config of a fake multi-node cluster (the keys of Ray's ``fake_multi_node/example.yaml``).

    ``gcs_address`` tells the provider where the head's GCS listens (else it assumes port 6379 on this host).
    """
    types = {k: dict(v) for k, v in node_types.items()}
    types[HEAD_NODE_TYPE] = {"resources": dict(head_resources or {"CPU": 0}), "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "twohead-local",
        "max_workers": int(max_workers if max_workers is not None else sum(t["max_workers"] for t in node_types.values())),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "auth": {},
        "upscaling_speed": float(upscaling_speed),
        "idle_timeout_minutes": float(idle_timeout_minutes),
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class LocalAutoscalingCluster:
    """Start with :meth:`start` (or ``with``), connect drivers with :attr:`address` / :meth:`driver_env`, watch
    with :meth:`worker_nodes`, change limits with :meth:`set_max_workers`, take a node away with
    :meth:`terminate_node`, end with :meth:`shutdown`.

    ``update_interval_s``: the autoscaler's loop period (Ray's ``AUTOSCALER_UPDATE_INTERVAL_S``, 5 s by default).
    """

    def __init__(
        self,
        node_types: dict[str, dict[str, Any]],
        *,
        head_resources: dict[str, Any] | None = None,
        max_workers: int | None = None,
        idle_timeout_minutes: float = 0.1,
        upscaling_speed: float = 1.0,
        update_interval_s: int = 1,
        object_store_memory: int = 100 * 2**20,
        env: dict[str, str] | None = None,
    ):
        self.node_types = node_types
        self.head_resources = dict(head_resources or {"CPU": 0})
        self.max_workers = max_workers
        self.idle_timeout_minutes = idle_timeout_minutes
        self.upscaling_speed = upscaling_speed
        self.update_interval_s = update_interval_s
        self.object_store_memory = object_store_memory
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.temp_dir: Path | None = None
        self.config_path: Path | None = None
        self.address = ""  # GCS host:port, for ray.init(address=...) / RAY_ADDRESS
        self.dashboard_url = ""  # http://127.0.0.1:PORT: Jobs API, State API, dashboard
        self._config: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------
    # Life cycle
    # ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> LocalAutoscalingCluster:
        """Start the head (no workers: the autoscaler launches them on demand) and wait for its dashboard."""
        import ray._private.services as services

        # Short: Ray's socket paths under the temp dir are limited to ~100 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="thas", dir="/tmp"))
        port, dash = free_port(), free_port()
        self.address = f"{services.get_node_ip_address()}:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dash}"
        self._config = fake_autoscaling_config(
            self.node_types,
            gcs_address=self.address,
            head_resources=self.head_resources,
            max_workers=self.max_workers,
            idle_timeout_minutes=self.idle_timeout_minutes,
            upscaling_speed=self.upscaling_speed,
        )
        self.config_path = self.temp_dir / "autoscaling.json"
        atomic.write_json(self.config_path, self._config)
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S=str(int(self.update_interval_s)),
            # Jobs resolve `python` from the head's PATH: this interpreter's environment first.
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            # Every process of the cluster inherits it: Ray code that looks for "the" cluster without an address
            # (Train's placement-group cleaner uses the State API so) finds this one even when the machine runs
            # several Ray instances.
            RAY_ADDRESS=self.address,
            # SIGTERM stops the head at once (no drain wait: nothing is served).
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        )
        head = self.head_resources.copy()
        cmd = [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            f"--autoscaling-config={self.config_path}",
            f"--temp-dir={self.temp_dir}",
            f"--port={port}",
            f"--num-cpus={int(head.pop('CPU', 0))}",
            f"--num-gpus={int(head.pop('GPU', 0))}",
            f"--object-store-memory={int(self.object_store_memory)}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        self._log = open(self.temp_dir / "head.log", "w")  # noqa: SIM115 - closed in shutdown()
        # Its own session: every process of this cluster (fake nodes and their workers included) carries the head's
        # pid as session id, which is how shutdown() finds them all and nothing else.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.shutdown)  # a driver that exits without shutdown() leaves no cluster behind
        try:
            self._wait(self._dashboard_up, timeout, "the local cluster's dashboard to answer")
        except BaseException:
            self.shutdown()
            raise
        return self

    def _dashboard_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.temp_dir / "head.log").read_text()[-2000:] if self.temp_dir else ""
            raise RuntimeError(f"the local cluster's head exited with code {self.proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def shutdown(self) -> None:
        """Stop the head, then kill what is left of this cluster (fake nodes, their workers) by process id."""
        if self.proc is None:
            return
        session = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The fake nodes are children of the autoscaler, not of the head: they outlive it.
        for pid in _session_pids(session):
            _kill(pid)
        self.proc = None
        self._log.close()
        atexit.unregister(self.shutdown)

    def __enter__(self) -> LocalAutoscalingCluster:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----------------------------------------------------------------------------------------
    # Watching and steering
    # ----------------------------------------------------------------------------------------
    def driver_env(self) -> dict[str, str]:
        """Environment for a driver process (``python -m rayjobs.train``) on this cluster."""
        return {"RAY_ADDRESS": self.address, "TWOHEAD_AUTOSCALING_CONFIG": str(self.config_path)}

    def worker_nodes(self) -> list[dict[str, Any]]:
        """Alive worker nodes (State API): ``{"node_id", "node_type", "resources"}`` each, by node id (= launch order)."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        out = [
            {"node_id": n.node_id, "node_type": self._type_of(n.resources_total), "resources": dict(n.resources_total)}
            for n in nodes
            if not n.is_head_node
        ]
        return sorted(out, key=lambda n: n["node_id"])

    def _type_of(self, resources: dict[str, float]) -> str | None:
        """The node type whose resources a node has (CPU, GPU and custom resources; memory and the ``node:<ip>``
        marker left aside)."""

        def key(res: dict[str, Any]) -> dict[str, float]:
            return {
                k: float(v) for k, v in res.items() if k not in ("memory", "object_store_memory") and not k.startswith("node:")
            }

        have = key(resources)
        return next((name for name, t in self.node_types.items() if key(t["resources"]) == have), None)

    def wait_for_workers(self, count: int, timeout: float = 120.0, node_type: str | None = None) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` worker nodes (of ``node_type``, if given) are alive; returns them."""
        found: list[dict[str, Any]] = []

        def done() -> bool:
            found[:] = [n for n in self.worker_nodes() if node_type is None or n["node_type"] == node_type]
            return len(found) == count

        self._wait(
            done, timeout, lambda: f"{count} alive worker nodes{f' of type {node_type}' if node_type else ''} (now {len(found)})"
        )
        return found

    def set_max_workers(self, node_type: str, count: int) -> None:
        """Change a node type's ``max_workers`` live: the autoscaler re-reads its config every update, like a quota
        raised or a capacity limit reached (nodes over a lowered limit are terminated, busy or not)."""
        if node_type not in self.node_types:
            raise KeyError(f"no node type {node_type!r}; have {sorted(self.node_types)}")
        self._config["available_node_types"][node_type]["max_workers"] = int(count)
        self._config["max_workers"] = max(self._config["max_workers"], int(count))
        atomic.write_json(self.config_path, self._config)

    def terminate_node(self, node_type: str, timeout: float = 60.0) -> str:
        """Have the provider terminate one running node of ``node_type`` now, busy or not, as the cloud does when it
        reclaims a spot instance; then let the autoscaler replace it. Returns the terminated node's id.

        The fake provider terminates a node only on the autoscaler's order (it kills all of the node's processes
        and drops it from its list, as EC2 drops a reclaimed instance), so the type's ``max_workers`` is lowered by
        one until a node is gone, then restored.
        """
        before = {n["node_id"] for n in self.worker_nodes() if n["node_type"] == node_type}
        if not before:
            raise ValueError(f"no running node of type {node_type!r} to terminate")
        limit = int(self._config["available_node_types"][node_type]["max_workers"])
        gone: set[str] = set()

        def one_gone() -> bool:
            gone.update(before - {n["node_id"] for n in self.worker_nodes()})
            return bool(gone)

        self.set_max_workers(node_type, len(before) - 1)
        try:
            self._wait(one_gone, timeout, lambda: f"the autoscaler to terminate a {node_type} node")
        finally:
            self.set_max_workers(node_type, limit)
        return sorted(gone)[0]

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Processes of one session (Linux /proc; elsewhere only the head's process group is found)
# --------------------------------------------------------------------------------------------
def _session_pids(session: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return [session]
    out = []
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == session:
                    out.append(int(d.name))
            except OSError:  # exited meanwhile
                continue
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from rayjobs.cluster.config import ClusterConfigError, load_cluster_config, local_node_types

    p = argparse.ArgumentParser(prog="python -m rayjobs.local_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cluster.yaml", help="cluster-launcher config whose worker node types to use")
    p.add_argument("--cpus", type=int, default=1, help="CPUs per fake node (each node type's CPU count, capped)")
    p.add_argument("--gpus", type=int, default=1, help="simulated GPUs per fake node (capped likewise)")
    p.add_argument("--max-workers", type=int, default=2, help="nodes per type at most (capped likewise)")
    p.add_argument("--idle-timeout-minutes", type=float, default=0.5, help="idle nodes are released after this")
    args = p.parse_args(argv)
    try:
        config = load_cluster_config(args.config)
        types = local_node_types(config, cpus=args.cpus, gpus=args.gpus, max_workers=args.max_workers)
    except ClusterConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = LocalAutoscalingCluster(types, idle_timeout_minutes=args.idle_timeout_minutes)
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with cluster:
        for name, t in types.items():
            print(f"node type {name}: {t['resources']} x 0..{t['max_workers']}")
        for k, v in cluster.driver_env().items():
            print(f"export {k}={v}")
        print(f"dashboard: {cluster.dashboard_url}   (Ctrl-C stops the cluster)", flush=True)
        while not stop["now"] and cluster.proc is not None and cluster.proc.poll() is None:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
