"""Typed config: paper defaults, overrides, YAML, and validation errors that name the field and the range."""

from __future__ import annotations

import json

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
    cfg = apply_overrides(
        TrainConfig(), ["method.u=20", "lambda=0.5", "optim.milestones=[30,40]", "data.download=true", "alpha=1"]
    )
    assert cfg.method.u == 20 and isinstance(cfg.method.u, int)
    assert cfg.method.lam == 0.5 and cfg.method.alpha == 1.0 and isinstance(cfg.method.alpha, float)
    assert cfg.optim.milestones == (30, 40) and cfg.data.download is True
    assert TrainConfig().method.u == 10  # the default instance is not mutated


@pytest.mark.parametrize(
    "override,match",
    [
        ({"method.u": 0}, r"^method.u=0: input should be greater than or equal to 1$"),
        ({"method.alpha": 1.5}, r"^method.alpha=1.5: input should be less than or equal to 1$"),
        ({"method.alpha": 0.0}, r"^method.alpha=0.0: input should be greater than 0$"),
        ({"method.lam": -0.1}, r"^method.lam=-0.1: input should be greater than or equal to 0$"),
        ({"model.backbone": "resnet9000"}, r"^model.backbone='resnet9000': unknown backbone; registered: .*resnet32"),
        ({"data.dataset": "mnist"}, r"^data.dataset='mnist': input should be 'cifar10-lt', .* or 'folder'$"),
        ({"method.name": "magic"}, r"^method.name='magic': input should be 'ce', .*'twohead_full'$"),
        (
            {"method.clustering": "spectral"},
            r"^method.clustering='spectral': input should be 'random', 'kmeans' or 'hierarchical'$",
        ),
        ({"optim.milestones": [160, 120]}, r"^optim.milestones=\[160, 120\]: must be strictly increasing epochs$"),
        ({"optim.lr": float("inf")}, r"^optim.lr=inf: input should be a finite number$"),
        ({"optim.lr": float("nan")}, r"^optim.lr=nan: input should be a finite number$"),
        ({"model.fbh_kernel": 4}, r"^model.fbh_kernel=4: must be odd"),
        ({"run.out": ""}, r"^run.out='': string should have at least 1 character$"),
        ({"run.out": "  "}, r"^run.out='  ': must name a results folder$"),
        ({"run.name": "../x"}, r"^run.name='../x': must be a plain folder name$"),
        ({"method.cluster_seed": -1}, r"^method.cluster_seed=-1: input should be greater than or equal to 0$"),
        ({"optim.milestones": [120, 120]}, r"^optim.milestones=\[120, 120\]: must be strictly increasing epochs$"),
        ({"method.u": True}, r"^method.u=True: a number is needed, not true/false$"),
        ({"optim.lr": True}, r"^optim.lr=True: a number is needed, not true/false$"),
        ({"data.lt_seed": -1}, r"^data.lt_seed=-1: input should be greater than or equal to 0$"),
        ({"optim.milestones": [3, 120]}, r"^optim.milestones=\[3, 120\] has epochs inside the 5-epoch warm-up"),
        (
            {"model.inference": "fuse", "method.lam": 0},
            r"^model.inference=fuse reads the feature-balancing head, which "
            r"method.lam=0 leaves untrained",
        ),
        # Rules across fields: a schedule that never reaches its milestones, re-weighting that never starts.
        (
            {"optim.epochs": 10},
            r"^optim.milestones=\[120, 160\] has epochs at or past optim.epochs=10, where the "
            r"learning rate would never decay; set milestones below 10 or optim.milestones=\[\]$",
        ),
        (
            {"method.name": "ldam_drw", "optim.epochs": 100, "optim.milestones": [50]},
            r"^method.drw_epoch=160 is not before optim.epochs=100: ldam_drw's deferred re-weighting would never start",
        ),
        (
            {"model.inference": "fbh", "method.name": "cdh_only"},
            r"^model.inference=fbh needs the feature-balancing head, which method.name=cdh_only lacks; use max or sum$",
        ),
        ({"data.dataset": "folder"}, r"^data.path must name the folder dataset location"),
        ({"optim.warmup_epochs": 200}, r"^optim.warmup_epochs=200 must be below optim.epochs=200$"),
    ],
)
def test_validation_names_field_value_and_range(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), override)


def test_cluster_seed_defaults_to_the_run_seed():
    assert TrainConfig().method.cluster_seed is None and TrainConfig().cluster_seed == 0
    assert apply_overrides(TrainConfig(), {"optim.seed": 3}).cluster_seed == 3
    assert apply_overrides(TrainConfig(), ["optim.seed=3", "method.cluster_seed=5"]).cluster_seed == 5
    assert apply_overrides(TrainConfig(), ["method.cluster_seed=5", "method.cluster_seed=null"]).cluster_seed == 0


def test_bad_override_syntax_and_types():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(TrainConfig(), ["u20"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'method.uu'; allowed method.\* keys: name, u, alpha"):
        apply_overrides(TrainConfig(), {"method.uu": 3})
    with pytest.raises(ConfigError, match=r"^unknown config section 'methods' in 'methods.u'"):
        apply_overrides(TrainConfig(), {"methods.u": 3})
    with pytest.raises(ConfigError, match=r"^method.u='ten': input should be a valid integer"):
        apply_overrides(TrainConfig(), {"method.u": "ten"})
    with pytest.raises(ConfigError, match=r"^method.u=2.5: input should be a valid integer, got a number with a fractional part"):
        apply_overrides(TrainConfig(), {"method.u": 2.5})
    assert apply_overrides(TrainConfig(), ["optim.milestones=30,40", "optim.epochs=50"]).optim.milestones == (30, 40)


def test_yaml_roundtrip_and_file_errors(tmp_path):
    cfg = load_config(preset="smoke", overrides=["method.u=7"])
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    j = tmp_path / "c.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert load_config(j).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: {u: 3}\n")
    with pytest.raises(ConfigError, match="section 'methods'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="nope")


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("broken.yaml", "method: {u: 3\n", r"^config file '.*broken.yaml' is not valid YAML: "),
        ("broken.json", '{"method": {"u": 3}', r"^config file '.*broken.json' is not valid JSON: "),
        ("dup.yaml", "method:\n  u: 3\n  u: 5\n", r"^config file '.*dup.yaml' is not valid YAML: .*duplicate key 'u'"),
        ("dupsec.yaml", "method: {u: 3}\nmethod: {alpha: 0.4}\n", r"duplicate key 'method'"),
        ("list.yaml", "- method\n", r"must hold a mapping of sections"),
        ("scalar.yaml", "method: 3\n", r"section 'method' is not one of .* holding a mapping"),
    ],
)
def test_malformed_config_files_are_one_line_errors(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_every_preset_validates():
    for name in PRESETS:
        load_config(preset=name)


def test_text_fields_keep_the_text_as_written():
    assert apply_overrides(TrainConfig(), ["run.name=001"]).run.name == "001"
    assert apply_overrides(TrainConfig(), {"run.name": 2024}).run.name == "2024"  # a YAML number for a text field
    assert apply_overrides(TrainConfig(), ["data.dataset=parquet", "data.path=123"]).data.path == "123"


def test_where_data_comes_from_is_not_part_of_a_runs_identity():
    from twohead.config import result_identity

    a = apply_overrides(TrainConfig(), {"data.download": True, "data.root": "/a", "optim.device": "cpu"})
    assert result_identity(a.to_dict()) == result_identity(TrainConfig().to_dict())
    assert result_identity(apply_overrides(a, {"method.u": 3}).to_dict()) != result_identity(a.to_dict())
