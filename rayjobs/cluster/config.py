"""``cluster.yaml`` as data: load it, read its ceiling, and scale its node types down to one machine.

- :func:`load_cluster_config` reads a cluster-launcher YAML (one-line :class:`ClusterConfigError` on a missing,
  malformed or incomplete file).
- :func:`max_resources` is what the autoscaler can ever provide (per node type: ``max_workers`` x resources,
  plus the head), optionally only on node types that carry an accelerator type (``accelerator_type:A100``);
  :func:`cluster_ceiling` finds the running cluster's ceiling (autoscaler record, autoscaling config file or the
  nodes up), which ``rayjobs.train`` checks ``--num-workers`` against before anything starts.
- :func:`local_node_types` maps the worker node types to node types of Ray's fake multi-node provider (the one
  ``ray.cluster_utils.AutoscalingCluster`` and Ray's own autoscaler tests use), so the real autoscaler can be run
  against the same node types on a laptop (:mod:`rayjobs.local_cluster`): same names, resource kinds, accelerator
  markers and ``min_workers``; CPU, GPU and ``max_workers`` capped to what one small machine can host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "ACCELERATOR_PREFIX",
    "ClusterConfigError",
    "accelerator_types",
    "cluster_ceiling",
    "load_cluster_config",
    "local_node_types",
    "max_resources",
    "worker_node_types",
]

# Ray's resource name for "this node has accelerator X" (ray.util.accelerators names, e.g. A10G, A100); the
# raylet of a GPU node adds it itself, and Train's ScalingConfig(accelerator_type=X) asks for 0.001 of it.
ACCELERATOR_PREFIX = "accelerator_type:"
# Resources a fake node must not copy from a cloud node type: memory is this machine's, and the object store is
# sized by local_node_types.
_NOT_SCALED = ("memory", "object_store_memory")


class ClusterConfigError(ValueError):
    """A cluster-launcher config that cannot be read or lacks what is needed (one-line message)."""


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """The parsed YAML of a cluster-launcher config, checked for ``available_node_types`` and ``head_node_type``."""
    import yaml

    p = Path(path).expanduser()
    try:
        config = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ClusterConfigError(f"cluster config {p}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ClusterConfigError(f"cluster config {p}: not valid YAML{at}; fix the file") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"cluster config {p}: expected a mapping at the top level")
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise ClusterConfigError(f"cluster config {p}: no available_node_types; list the head and worker node types")
    head = config.get("head_node_type")
    if head not in types:
        raise ClusterConfigError(f"cluster config {p}: head_node_type {head!r} is not one of {sorted(types)}")
    for name, t in types.items():
        if not isinstance(t, dict) or not isinstance(t.get("resources"), dict):
            raise ClusterConfigError(f"cluster config {p}: node type {name!r} has no resources mapping")
    return config


def worker_node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The node types the autoscaler launches (every type but the head's)."""
    return {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}


def accelerator_types(config: dict[str, Any]) -> list[str]:
    """Accelerator types the node types carry (``accelerator_type:A10G`` -> ``A10G``), sorted."""
    found = {
        k[len(ACCELERATOR_PREFIX) :]
        for t in config["available_node_types"].values()
        for k, v in t.get("resources", {}).items()
        if k.startswith(ACCELERATOR_PREFIX) and v
    }
    return sorted(found)


def max_resources(config: dict[str, Any], accelerator_type: str | None = None) -> dict[str, float]:
    """The most of each resource the autoscaler can ever provide: the head once, plus, resource by resource, the
    global ``max_workers`` node budget spent on the worker types richest in that resource (each up to its own
    ``max_workers``). An upper bound per resource, like the limits Ray's autoscaler enforces.

    With ``accelerator_type``, only node types carrying ``accelerator_type:<it>`` count (a Train worker group with
    ``ScalingConfig(accelerator_type=...)`` runs on those only).
    """
    marker = f"{ACCELERATOR_PREFIX}{accelerator_type}" if accelerator_type else None
    types = [config["available_node_types"][config["head_node_type"]], *worker_node_types(config).values()]
    types = [t for t in types if marker is None or t["resources"].get(marker)]
    head = config["available_node_types"][config["head_node_type"]]
    out: dict[str, float] = {}
    for key in sorted({k for t in types for k in t["resources"]}):
        total = float(head["resources"].get(key, 0)) if any(t is head for t in types) else 0.0
        budget = int(config.get("max_workers", 2**31))
        for t in sorted((t for t in types if t is not head), key=lambda t: -float(t["resources"].get(key, 0))):
            n = min(int(t.get("max_workers", 0)), budget)
            budget -= n
            total += n * float(t["resources"].get(key, 0))
        if total:
            out[key] = total
    return out


def local_node_types(
    config: dict[str, Any],
    *,
    cpus: int = 1,
    gpus: int = 1,
    max_workers: int = 2,
    object_store_memory: int = 100 * 2**20,
) -> dict[str, dict[str, Any]]:
    """The worker node types of ``config`` as node types of Ray's fake multi-node provider on one machine.

    Each keeps its name, ``min_workers``, custom resources (``accelerator_type:*`` markers) and resource kinds;
    ``CPU`` becomes ``min(CPU, cpus)``, ``GPU`` ``min(GPU, gpus)`` (simulated: a logical resource, nothing runs
    on a GPU), ``max_workers`` ``min(max_workers of the type, max_workers)``; every fake node gets an object
    store of ``object_store_memory`` bytes and this machine's memory.
    """
    if cpus < 1 or gpus < 0 or max_workers < 1:
        raise ClusterConfigError(
            f"local node types need cpus >= 1, gpus >= 0, max_workers >= 1 (got {cpus}, {gpus}, {max_workers})"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, t in worker_node_types(config).items():
        res: dict[str, Any] = {}
        for k, v in t["resources"].items():
            if k in _NOT_SCALED:
                continue
            res[k] = min(int(v), cpus) if k == "CPU" else min(int(v), gpus) if k == "GPU" else int(v)
        res["object_store_memory"] = int(object_store_memory)
        hi = min(int(t.get("max_workers", 0)), max_workers)
        out[name] = {
            "resources": res,
            "node_config": {},
            "min_workers": min(int(t.get("min_workers", 0)), hi),
            "max_workers": hi,
        }
    return out


def cluster_ceiling(accelerator_type: str | None = None) -> tuple[dict[str, float], str]:
    """The most of each resource the cluster can ever hold, and where that figure comes from.

    In order: the autoscaler's record in the GCS (autoscaler v2, KubeRay); the autoscaling config file of a
    cluster-launcher head (``$TWOHEAD_AUTOSCALING_CONFIG``, else ``~/ray_bootstrap_config.yaml``, where ``ray up``
    puts it: the v1 autoscaler that ``ray up`` starts records no maximum in the GCS); else the nodes up now (a
    fixed cluster). With ``accelerator_type`` only nodes / node types carrying ``accelerator_type:<it>`` count.
    """
    import ray

    marker = f"{ACCELERATOR_PREFIX}{accelerator_type}" if accelerator_type else None
    out: dict[str, float] = {}

    def add(resources: dict[str, float], count: float) -> None:
        if marker is None or resources.get(marker):
            for k, v in resources.items():
                if v:
                    out[k] = out.get(k, 0.0) + float(v) * count

    groups = []
    try:
        from ray._private.state import state

        cfg = state.get_cluster_config()
        groups = list(cfg.node_group_configs) if cfg is not None else []
    except Exception:  # noqa: BLE001 - older Ray / no autoscaler state: the next source
        groups = []
    if groups:
        for g in groups:
            add(dict(g.resources), float("inf") if g.max_count == -1 else g.max_count)
        return out, "the autoscaler's maximum (cluster config)"
    path = os.environ.get("TWOHEAD_AUTOSCALING_CONFIG") or ""
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if not path and bootstrap.is_file():
        path = str(bootstrap)
    if path:
        return max_resources(load_cluster_config(path), accelerator_type), f"the autoscaler's maximum ({path})"
    for node in ray.nodes():
        if node.get("Alive"):
            add(node.get("Resources", {}), 1)
    return out, "the cluster's nodes (no autoscaler configured)"
