"""Packaging by audience, from a built wheel in a fresh virtual environment, outside the repository.

``pip install twohead`` is the library (no Ray, no Optuna); ``pip install "twohead[ray]"`` adds the scale-out layer,
whose search-space presets ship inside the wheel and are found with importlib.resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_installs_the_library_without_ray_and_the_ray_layer_as_an_extra(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)], cwd=tmp_path)
    (wheel,) = dist.glob("twohead-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = str(venv / "bin" / "python")
    constraints = str(REPO / "constraints.txt")
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, str(wheel)], cwd=tmp_path)

    # The library alone: twohead and its loop import; Ray and Optuna are not installed.
    code = (
        "import importlib.util, twohead, twohead.loop, twohead.cli; "
        "assert importlib.util.find_spec('ray') is None and importlib.util.find_spec('optuna') is None; "
        "print(twohead.__file__)"
    )
    out = _run([py, "-c", code], cwd=tmp_path).stdout
    assert str(venv) in out  # imported from the venv, not from the repository
    r = subprocess.run([py, "-c", "import ray"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'ray'" in r.stderr
    assert "usage: twohead" in _run([str(venv / "bin" / "twohead"), "--help"], cwd=tmp_path).stdout
    # Without the tracking extra, its flags are one line naming it (exit 2), before anything is written.
    r = subprocess.run(
        [str(venv / "bin" / "twohead"), "train", "--preset", "smoke", "--out", "o", "--mlflow"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == (
        "twohead: error: --mlflow needs the mlflow package, which is not installed: pip install 'twohead[tracking]' "
        "(MLflow, TensorBoard, tensorboardX)"
    ), r.stderr
    assert not (tmp_path / "o").exists()

    # The Ray layer as an extra: the search CLI and its presets work from outside the repository.
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, f"twohead[ray] @ {wheel.as_uri()}"], cwd=tmp_path)
    assert "--preset" in _run([py, "-m", "rayjobs.search", "--preset", "smoke", "--help"], cwd=tmp_path).stdout
    code = (
        "from rayjobs.search.space import available_presets, load_search_space; "
        "print(available_presets(), load_search_space('smoke').base.model.backbone)"
    )
    out = _run([py, "-c", code], cwd=tmp_path).stdout
    assert "'smoke'" in out and "'cifar10-lt'" in out and "resnet8" in out
