"""Which Ray cluster a command joins, checked before anything is written: the one place that calls ``ray.init``.

``rayjobs.search``, ``rayjobs.train``, ``rayjobs.labels`` and ``rayjobs.reproduce --ray`` resolve their cluster here:

- ``--address HOST:PORT`` (the head's GCS port, 6379 on ``cluster.yaml`` clusters) or ``ray://HOST:PORT`` (Ray
  Client) joins that cluster;
- else ``RAY_ADDRESS`` (what ``ray job submit`` sets for a job's driver) joins that one;
- ``--address auto`` joins the cluster that ``ray start`` on this node recorded
  (``<ray temp dir>/ray_current_cluster``). Ray's own ``auto`` also falls back to *any* GCS process it finds in
  ``ps``, which on a shared machine is someone else's cluster: that fallback is deliberately not used;
- otherwise (or ``--address local``) the command starts a small local Ray, dashboard on (Tune + ASHA needs the
  State API to release stopped trials, notes on Ray 2.60).

:func:`resolve` runs first and has no side effect: an address that does not answer is a
:class:`RayAddressError` within seconds (``ray.init`` itself retries an unreachable GCS for minutes), before a
study, a labels file or a run folder exists. :func:`connect` then calls ``ray.init``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from rayjobs.cluster import signals

__all__ = ["PROBE_TIMEOUT_S", "RayAddressError", "Target", "connect", "resolve"]

PROBE_TIMEOUT_S = float(os.environ.get("TWOHEAD_RAY_PROBE_TIMEOUT_S", "5"))
# gRPC (the GCS) speaks HTTP/2: its client preface tells a GCS from an HTTP/1 server (e.g. the dashboard, port
# 8265) in one round trip.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


class RayAddressError(RuntimeError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be joined (one line: address, source, fix)."""


@dataclass(frozen=True)
class Target:
    """A resolved Ray cluster: ``address`` None means "start a local Ray"; ``source`` says where it came from."""

    address: str | None
    source: str

    @property
    def local(self) -> bool:
        return self.address is None


def _ray_address_file() -> str:
    """Where ``ray start`` records the cluster of this node (Ray's default temp dir, ``RAY_TMPDIR`` honoured)."""
    try:
        from ray._common.utils import get_default_ray_temp_dir

        return os.path.join(get_default_ray_temp_dir(), "ray_current_cluster")
    except ImportError:  # pragma: no cover - older layout: the same rule
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return os.path.join(base, "ray", "ray_current_cluster")


def _split(address: str, source: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(
            f"Ray address {address!r} ({source}) is not HOST:PORT; use the head's GCS address, e.g. 10.0.0.5:6379, "
            "or --address auto on a node of the cluster"
        )
    return host.strip("[]"), int(port)


def _probe(address: str, source: str, timeout: float) -> None:
    host, port = _split(address, source)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if address.startswith("ray://"):
                return
            s.settimeout(min(timeout, 2.0))
            s.sendall(_H2_PREFACE)
            try:
                head = s.recv(16)
            except OSError:  # no answer to the preface: leave the verdict to ray.init
                return
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, (TimeoutError, socket.timeout)):
            why = f"no answer within {timeout:g} s"
        raise RayAddressError(
            f"no Ray cluster answers at {address} ({source}): {why}; start it (ray start --head / ray up cluster.yaml), "
            "fix the address, or unset RAY_ADDRESS to run on a local Ray"
        ) from None
    # A gRPC server answers the preface with an HTTP/2 SETTINGS frame (9-byte header, type 0x4); an HTTP/1 server
    # answers with a status line or an HTML error page. Silence is left to ray.init.
    if head and not (len(head) >= 9 and head[3] == 0x04):
        raise RayAddressError(
            f"{address} ({source}) is an HTTP server (the Ray dashboard / Jobs API?), not the cluster's GCS: "
            "use that address with `ray job submit --address`, and the head's GCS port (6379) here"
        )


def resolve(address: str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> Target:
    """The cluster to join, checked to answer within ``timeout`` seconds (no side effect).

    Raises :class:`RayAddressError` for a malformed address, one nobody listens on, an HTTP (dashboard) address,
    and ``auto`` on a node where ``ray start`` recorded no cluster.
    """
    if address:
        source = "--address"
    elif os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    else:
        return Target(None, "a local Ray started by this command")
    address = address.strip()
    if address == "local":
        return Target(None, f"{source}=local")
    if address.startswith(("http://", "https://")):
        raise RayAddressError(
            f"{address} ({source}) is the dashboard / Jobs API address: submit with `ray job submit --address "
            f"{address} -- ...`, or give this command the head's GCS address HOST:6379"
        )
    if address == "auto":
        path = _ray_address_file()
        try:
            with open(path) as f:
                found = f.read().strip()
        except OSError:
            found = ""
        if not found:
            raise RayAddressError(
                f"{source}=auto: no Ray cluster was started on this node ({path} does not exist); run "
                "`ray start --head` first, pass --address HOST:PORT, or leave --address out to run on a local Ray"
            )
        address, source = found, f"{source}=auto via {path}"
    _probe(address, source, timeout)
    return Target(address, source)


def connect(
    target: Target | str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 256,
    log_to_driver: bool = True,
    include_dashboard: bool = True,
) -> bool:
    """``ray.init`` for ``target`` (a :class:`Target`, or an address :func:`resolve` checks first).

    Returns True when this call connected or started Ray (the caller shuts it down); an already connected driver
    (tests, notebooks, a job that connected earlier) is used as is and returns False. A local Ray gets
    ``num_cpus`` (default: all), a small object store and the dashboard on 127.0.0.1.
    """
    import ray

    if ray.is_initialized():
        return False
    if not isinstance(target, Target):
        target = resolve(target)
    ctx = None
    try:
        with signals.held() as held:
            if target.address is not None:
                ray.init(address=target.address, log_to_driver=log_to_driver)
            else:
                # "local" forces a fresh instance even when a `ray start` cluster runs here: joining one is explicit.
                ctx = ray.init(
                    address="local",
                    num_cpus=num_cpus or os.cpu_count(),
                    object_store_memory=object_store_mb * 2**20,
                    include_dashboard=include_dashboard,
                    dashboard_host="127.0.0.1",
                    log_to_driver=log_to_driver,
                )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if held:  # the Ctrl-C also reached Ray's new processes: it is the interrupt, not a bad address
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise KeyboardInterrupt from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = target.address or "a local Ray"
        raise RayAddressError(f"cannot join {where} ({target.source}): {first}") from None
    if held:
        # Ctrl-C while Ray was starting: stop now, with Ray torn down (the caller has not taken it over yet;
        # rayjobs.cluster.signals says why the signal waited)
        ray.shutdown()
        raise KeyboardInterrupt
    if target.address is not None:
        return True
    if include_dashboard and getattr(ctx, "dashboard_url", None):
        print(f"Ray dashboard (while this command runs): http://{ctx.dashboard_url}", flush=True)
    return True
