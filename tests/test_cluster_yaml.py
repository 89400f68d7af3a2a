"""cluster.yaml passes Ray's own cluster-launcher validation and describes the cluster the README promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_ray_schema(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(raw))  # raises on any schema violation


def test_node_types(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head must be a CPU node"
    gpu = {n: t for n, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    cpu = {n: t for n, t in types.items() if n != raw["head_node_type"] and t.get("resources", {}).get("GPU", 0) == 0}
    assert gpu and cpu, "needs GPU worker types and CPU (decode) worker types"
    for name, t in {**gpu, **cpu}.items():
        assert t["min_workers"] == 0, f"{name} must autoscale from 0"
        assert t["max_workers"] >= 1
        for res, v in t["resources"].items():
            assert isinstance(v, int), f"{name}.resources.{res}={v!r} must be an integer"
    assert raw["provider"]["type"] == "aws"


def test_installs_the_project(raw):
    cmds = " ".join(raw["setup_commands"])
    assert "pip install" in cmds and "twohead" in cmds
    assert "ray[default" in cmds  # the Jobs API needs the dashboard
    assert any(Path(local) == Path(".") for local in raw["file_mounts"].values())


def test_every_user_setting_is_marked():
    text = (REPO / "cluster.yaml").read_text()
    for key in ("region:", "availability_zone:", "IamInstanceProfile", "cluster_name:"):
        line = next(ln for ln in text.splitlines() if key in ln)
        assert "CHANGE" in line, f"{key} line must tell the user to change it: {line!r}"
