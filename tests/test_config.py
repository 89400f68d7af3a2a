"""Typed config: paper defaults, overrides, YAML, and validation errors that name the field and the range."""
from __future__ import annotations

import pytest

from twohead.config import PRESETS, ConfigError, TrainConfig, apply_overrides, load_config


def test_paper_defaults():
    cfg = TrainConfig()
    assert (cfg.method.u, cfg.method.lam, cfg.method.clustering) == (10, 1.5, "random")  # Sec. 3.1
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.batch_size, cfg.optim.epochs) == (0.1, 0.9, 128, 200)
    assert cfg.optim.milestones == (120, 160)
    imnet = load_config(preset="imagenet-lt")
    assert (imnet.optim.lr, imnet.optim.batch_size, imnet.optim.epochs, imnet.optim.schedule) == (0.2, 512, 90, "cosine")
    assert imnet.model.backbone == "resnext50_32x4d"


def test_overrides_are_typed_and_aliases_work():
    cfg = apply_overrides(TrainConfig(), ["method.u=20", "lambda=0.5", "optim.milestones=[30,40]", "data.download=true", "alpha=1"])
    assert cfg.method.u == 20 and isinstance(cfg.method.u, int)
    assert cfg.method.lam == 0.5 and cfg.method.alpha == 1.0 and isinstance(cfg.method.alpha, float)
    assert cfg.optim.milestones == (30, 40) and cfg.data.download is True
    assert TrainConfig().method.u == 10  # the default instance is not mutated


@pytest.mark.parametrize(
    "override,match",
    [
        ({"method.u": 0}, r"method.u=0 must be an integer >= 1"),
        ({"method.alpha": 1.5}, r"method.alpha=1.5 must be in \(0, 1\]"),
        ({"method.alpha": 0.0}, r"method.alpha=0.0 must be in \(0, 1\]"),
        ({"method.lam": -0.1}, r"lambda\)=-0.1 must be >= 0"),
        ({"model.backbone": "resnet9000"}, r"model.backbone='resnet9000' is unknown; allowed: resnet32"),
        ({"data.dataset": "mnist"}, r"data.dataset='mnist' is unknown"),
        ({"method.name": "magic"}, r"method.name='magic' is unknown"),
        ({"method.clustering": "spectral"}, r"method.clustering='spectral' is unknown"),
        ({"optim.milestones": [160, 120]}, r"increasing"),
    ],
)
def test_validation_names_field_value_and_range(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), override).validate()


def test_bad_override_syntax_and_types():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(TrainConfig(), ["u20"])
    with pytest.raises(ConfigError, match="unknown config key 'uu'"):
        apply_overrides(TrainConfig(), {"method.uu": 3})
    with pytest.raises(ConfigError, match="is not a valid int"):
        apply_overrides(TrainConfig(), {"method.u": "ten"})
    with pytest.raises(ConfigError, match="is not a valid int"):
        apply_overrides(TrainConfig(), {"method.u": 2.5})


def test_yaml_roundtrip_and_file_errors(tmp_path):
    cfg = load_config(preset="smoke", overrides=["method.u=7"])
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: {u: 3}\n")
    with pytest.raises(ConfigError, match="section 'methods'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="nope")


def test_every_preset_validates():
    for name in PRESETS:
        load_config(preset=name)
