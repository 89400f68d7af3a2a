"""cluster.yaml: Ray's own validation accepts it, every node runs the image of the Ray and Python this project pins,
every setup step installs the project with constraints.txt, and the node types are the ones the README promises."""

from __future__ import annotations

import re
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def pinned(package: str) -> str:
    line = next(ln for ln in (REPO / "constraints.txt").read_text().splitlines() if ln.lower().startswith(f"{package}=="))
    return line.split("==", 1)[1].strip()


def image_of(raw: dict, node_type: str) -> str:
    """The image Ray's launcher runs on a node of this type (per-type docker.worker_image overrides the global one)."""
    docker = raw["docker"]
    if node_type == raw["head_node_type"]:
        return docker.get("head_image", docker.get("image"))
    return raw["available_node_types"][node_type].get("docker", {}).get("worker_image") or docker.get(
        "worker_image", docker.get("image")
    )


def test_validates_against_ray_schema(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(raw))  # raises on any schema violation


def test_every_node_runs_the_pinned_ray_image_for_this_python(raw):
    ray_version = version("ray")
    assert pinned("ray") == ray_version, "constraints.txt and the venv disagree on Ray"
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    for name, t in raw["available_node_types"].items():
        variant = "gpu" if t["resources"].get("GPU", 0) > 0 else "cpu"
        assert image_of(raw, name) == f"rayproject/ray:{ray_version}-{py}-{variant}", name
    assert raw["docker"]["pull_before_run"] is True


def _setup_commands(raw: dict) -> list[str]:
    cmds = list(raw.get("setup_commands", [])) + list(raw.get("head_setup_commands", []))
    cmds += list(raw.get("worker_setup_commands", []))
    for t in raw["available_node_types"].values():
        cmds += list(t.get("worker_setup_commands", []))
    return cmds


def test_every_setup_step_installs_the_project_with_constraints(raw):
    remote = next(r for r, local in raw["file_mounts"].items() if Path(local) == Path("."))
    installs = [c for c in _setup_commands(raw) if "pip install" in c]
    assert installs, "no setup step installs anything"
    for cmd in installs:
        args = shlex.split(cmd)
        assert args[args.index("-c") + 1] == f"{remote}/constraints.txt", cmd
    project = [a for c in installs for a in shlex.split(c) if a.startswith(remote) and a.endswith("[ray]")]
    assert project == [f"{remote}[ray]"], f"the project with its [ray] extra, from {remote}: {installs}"
    # The [ray] extra brings the PostgreSQL driver of the README's study storage.
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert any(re.match(r"psycopg2(-binary)?\b", d) for d in extra)


def test_head_keeps_the_autoscaling_config_where_train_reads_it(raw):
    # rayjobs.train's capacity check reads the autoscaler's limits from ~/ray_bootstrap_config.yaml on the head.
    start = " ".join(raw["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_node_types(raw):
    from ray.util import accelerators

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs drivers only"
    assert "InstanceMarketOptions" not in head["node_config"], "a reclaimed head would take the cluster down"
    known = {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}
    workers = {n: t for n, t in types.items() if n != raw["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert set(gpu) == {"gpu_a10g", "gpu_a100x8"} and set(workers) - set(gpu) == {"cpu_decode"}
    for name, t in workers.items():
        assert t["min_workers"] == 0, f"{name} must autoscale from 0"
        for res, v in t["resources"].items():
            assert isinstance(v, int), f"{name}.resources.{res}={v!r} must be an integer"
    for name, t in gpu.items():
        marks = [k.split(":", 1)[1] for k in t["resources"] if k.startswith("accelerator_type:")]
        assert len(marks) == 1 and marks[0] in known, f"{name} must carry one Ray accelerator type, has {marks}"
    assert types["gpu_a10g"]["resources"]["accelerator_type:A10G"] == 1
    assert types["gpu_a100x8"]["resources"]["accelerator_type:A100"] == 1
    assert types["gpu_a100x8"]["resources"]["GPU"] == 8
    assert types["gpu_a100x8"]["max_workers"] >= 2, "ImageNet-LT must be able to go multi-node"
    assert raw["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    # Spot where a reclaimed node is retried: single-GPU training (checkpoints + --max-failures) and decoding.
    spot = {n for n, t in workers.items() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    assert spot == {"gpu_a10g", "cpu_decode"}
    assert raw["provider"]["type"] == "aws"


def test_every_user_setting_is_marked():
    text = (REPO / "cluster.yaml").read_text()
    for key in ("region:", "availability_zone:", "IamInstanceProfile", "cluster_name:"):
        line = next(ln for ln in text.splitlines() if key in ln)
        assert "CHANGE" in line, f"{key} line must tell the user to change it: {line!r}"
