"""rayjobs.cluster.config: cluster.yaml read as data (ceiling, scaled-down node types) and train's capacity check
against an autoscaler's limits, without starting Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rayjobs.cluster import config as cc
from rayjobs.cluster import local as local_cluster
from rayjobs.train import job as train

REPO = Path(__file__).resolve().parents[3]

# Two worker types and a 2-CPU head under a global limit of 4 worker nodes.
SMALL = {
    "max_workers": 4,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 2}, "node_config": {}},
        "gpu": {
            "resources": {"CPU": 4, "GPU": 1, "accelerator_type:A10G": 1, "memory": 16 * 2**30},
            "node_config": {},
            "min_workers": 1,
            "max_workers": 3,
        },
        "cpu": {"resources": {"CPU": 16}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
}


def write(tmp_path: Path, obj) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


def test_max_resources_is_a_per_resource_upper_bound():
    # CPU: the 16-CPU type first (2 nodes), then 2 of the 4-CPU type (global budget 4), plus the head's 2.
    # GPU: all 3 GPU nodes fit the budget of 4.
    assert cc.max_resources(SMALL) == {"CPU": 42.0, "GPU": 3.0, "accelerator_type:A10G": 3.0, "memory": 3 * 16 * 2**30}
    # Only the A10G type counts (not the head, not the CPU type).
    assert cc.max_resources(SMALL, "A10G") == {"CPU": 12.0, "GPU": 3.0, "accelerator_type:A10G": 3.0, "memory": 3 * 16 * 2**30}
    assert cc.max_resources(SMALL, "A100") == {}
    assert cc.accelerator_types(SMALL) == ["A10G"]


def test_local_node_types_cap_counts_and_keep_kinds():
    out = cc.local_node_types(SMALL, cpus=2, gpus=1, max_workers=2, object_store_memory=64 * 2**20)
    assert out == {
        "gpu": {
            "resources": {"CPU": 2, "GPU": 1, "accelerator_type:A10G": 1, "object_store_memory": 64 * 2**20},
            "node_config": {},
            "min_workers": 1,
            "max_workers": 2,
        },
        "cpu": {
            "resources": {"CPU": 2, "object_store_memory": 64 * 2**20},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 2,
        },
    }
    with pytest.raises(cc.ClusterConfigError, match=r"cpus >= 1, gpus >= 0, max_workers >= 1 \(got 0, 1, 2\)"):
        cc.local_node_types(SMALL, cpus=0)


def test_local_node_types_of_the_shipped_cluster_yaml():
    out = cc.local_node_types(cc.load_cluster_config(REPO / "cluster.yaml"))
    assert {n: t["resources"] for n, t in out.items()} == {
        "gpu_a10g": {"CPU": 1, "GPU": 1, "accelerator_type:A10G": 1, "object_store_memory": 100 * 2**20},
        "gpu_a100x8": {"CPU": 1, "GPU": 1, "accelerator_type:A100": 1, "object_store_memory": 100 * 2**20},
        "cpu_decode": {"CPU": 1, "object_store_memory": 100 * 2**20},
    }
    assert {n: (t["min_workers"], t["max_workers"]) for n, t in out.items()} == {
        "gpu_a10g": (0, 2),
        "gpu_a100x8": (0, 2),
        "cpu_decode": (0, 2),
    }


def test_fake_autoscaling_config_passes_rays_validation():
    from ray.autoscaler._private.util import validate_config

    types = cc.local_node_types(SMALL)
    cfg = local_cluster.fake_autoscaling_config(types, gcs_address="10.0.0.1:4321", idle_timeout_minutes=0.05)
    validate_config(cfg)
    assert cfg["provider"]["type"] == "fake_multinode" and cfg["provider"]["gcs_address"] == "10.0.0.1:4321"
    assert cfg["available_node_types"][local_cluster.HEAD_NODE_TYPE]["resources"] == {"CPU": 0}
    assert cfg["max_workers"] == 4 and cfg["idle_timeout_minutes"] == 0.05  # 2 + 2 local nodes at most


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\n", r"cluster\.yaml: not valid YAML at line 2; fix the file"),
        ("- 1\n", r"cluster\.yaml: expected a mapping at the top level"),
        ("head_node_type: head\n", r"cluster\.yaml: no available_node_types; list the head and worker node types"),
        (
            "head_node_type: boss\navailable_node_types: {head: {resources: {}, node_config: {}}}\n",
            r"cluster\.yaml: head_node_type 'boss' is not one of \['head'\]",
        ),
        (
            "head_node_type: head\navailable_node_types: {head: {node_config: {}}}\n",
            r"cluster\.yaml: node type 'head' has no resources mapping",
        ),
    ],
)
def test_bad_cluster_configs_are_named(tmp_path, text, message):
    with pytest.raises(cc.ClusterConfigError, match=message):
        cc.load_cluster_config(write(tmp_path, text))
    with pytest.raises(cc.ClusterConfigError, match=r"nowhere\.yaml: cannot read it"):
        cc.load_cluster_config(tmp_path / "nowhere.yaml")


def test_capacity_check_reads_the_autoscalers_limits(tmp_path, monkeypatch):
    """What rayjobs.train checks before submitting on an autoscaling cluster that has no node up yet."""
    monkeypatch.setenv("TWOHEAD_AUTOSCALING_CONFIG", str(write(tmp_path, SMALL)))
    src = re.escape(f"the autoscaler's maximum ({tmp_path / 'cluster.yaml'})")
    # 3 A10G nodes x 4 CPU = 12 CPU: 2 workers x 4 CPU + 1 for Ray Data fit.
    assert train.check_capacity(2, True, cpus_per_worker=4, accelerator_type="A10G") == {"CPU": 12.0, "GPU": 3.0}
    with pytest.raises(
        train.InsufficientResourcesError, match=rf"--num-workers 4 needs 4 GPU, but {src} has 3 GPU on A10G nodes"
    ):
        train.check_capacity(4, True, accelerator_type="A10G")
    # Elastic: the minimum must fit.
    assert train.check_capacity((3, 8), True, data_cpus=0, accelerator_type="A10G")["GPU"] == 3.0
    with pytest.raises(
        train.InsufficientResourcesError,
        match=rf"--accelerator-type A100: no node of {src} carries accelerator_type:A100 \(accelerator types there: A10G\)",
    ):
        train.check_capacity(1, True, accelerator_type="A100")
    # Without an accelerator type every node type counts: 42 CPU.
    with pytest.raises(train.InsufficientResourcesError, match=r"needs 43 CPU .* has 42 CPU; use at most --num-workers 41"):
        train.check_capacity(42, False, data_cpus=1)


def test_local_cluster_cli_refuses_a_bad_config(tmp_path, capsys):
    assert local_cluster.main(["--config", str(tmp_path / "nowhere.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cluster config {tmp_path / 'nowhere.yaml'}: cannot read it (No such file or directory)"
