"""Search-space YAML parsing and validation (rayjobs.search.space): fast, Ray-free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from rayjobs.search.space import (
    ALIASES,
    SearchSpaceError,
    SearchSpaceWarning,
    available_presets,
    load_search_space,
    parse_search_space,
)
from twohead import config as tconfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = {
    "base": {"preset": "cifar10-lt", "set": {"method.name": "twohead"}},
    "metric": "val_top1",
    "mode": "max",
    "params": {
        "u": {"type": "int", "low": 2, "high": 30},
        "alpha": {"type": "float", "low": 0.3, "high": 1.0},
        "lambda": {"type": "float", "low": 0.0, "high": 3.0},
        "clustering": {"type": "categorical", "choices": ["random", "kmeans", "hierarchical"]},
        "optim.lr": {"type": "float", "low": 0.05, "high": 0.2, "log": True},
    },
    "search": {"num_samples": 40, "max_concurrent": 6, "seed": 0, "asha": {"grace_period": 20, "reduction_factor": 3}},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.16},
}


def _write(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _with(**changes) -> dict:
    d = yaml.safe_load(yaml.safe_dump(GOOD))  # deep copy
    for dotted, value in changes.items():
        node = d
        *parents, leaf = dotted.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return d


_DELETE = object()


def _error(tmp_path: Path, data: dict) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path)
    msg = str(info.value)
    assert str(path) in msg, f"error does not name the file: {msg}"
    return msg


# ------------------------------------------------------------------------------------------ good specs
def test_aliases_match_the_config_overrides():
    # The search's names must map exactly as `twohead train --set u=...` does.
    assert ALIASES == tconfig.ALIASES


@pytest.mark.parametrize("name", ["smoke", "cifar10-lt", "cifar100-lt", "imagenet-lt"])
def test_presets_parse_and_optimise_a_validation_metric(name):
    assert name in available_presets()
    spec = load_search_space(name)
    assert spec.study_name == name
    assert spec.metric.startswith("val_")
    assert {"u", "alpha", "lambda", "clustering"} <= {p.name for p in spec.params}
    assert spec.base.method.name == "twohead"


def test_smoke_preset_is_small():
    spec = load_search_space("smoke")
    assert spec.base.data.dataset == "cifar10-lt"
    assert spec.base.model.backbone == "resnet8" and spec.base.optim.epochs == 10
    assert spec.search.num_samples <= 4 and spec.search.max_concurrent == 2
    assert spec.resources.gpus_per_trial == 0


def test_good_spec_maps_aliases_and_applies_base(tmp_path):
    spec = load_search_space(_write(tmp_path, GOOD))
    keys = {p.name: p.key for p in spec.params}
    assert keys == {
        "u": "method.u",
        "alpha": "method.alpha",
        "lambda": "method.lam",
        "clustering": "method.clustering",
        "optim.lr": "optim.lr",
    }
    assert spec.study_name == "space"  # from the file name
    assert spec.search.asha.grace_period == 20 and spec.max_epochs == 200
    assert spec.resources.gpus_per_trial == pytest.approx(0.16)
    cfg = spec.trial_config({"u": 7, "alpha": 0.9, "lambda": 0.5, "clustering": "kmeans", "optim.lr": 0.1})
    assert (cfg.method.u, cfg.method.alpha, cfg.method.lam, cfg.method.clustering, cfg.optim.lr) == (7, 0.9, 0.5, "kmeans", 0.1)
    assert cfg.data.dataset == "cifar10-lt" and cfg.model.backbone == "resnet32"


def test_define_by_run_samples_inside_ranges_and_respects_conditions(tmp_path):
    d = _with()
    d["params"]["method.name"] = {"type": "categorical", "choices": ["twohead", "twohead_full"]}
    d["params"]["method.mixup_alpha"] = {"type": "float", "low": 0.2, "high": 1.0, "condition": {"method.name": "twohead_full"}}
    spec = load_search_space(_write(tmp_path, d))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen_full = seen_plain = 0
    for _ in range(30):
        t = study.ask()
        spec.suggest(t)
        p = t.params
        assert 2 <= p["u"] <= 30 and isinstance(p["u"], int)
        assert 0.3 <= p["alpha"] <= 1.0 and 0.0 <= p["lambda"] <= 3.0 and 0.05 <= p["optim.lr"] <= 0.2
        assert p["clustering"] in ("random", "kmeans", "hierarchical")
        # the conditional parameter exists exactly when its condition holds
        assert ("method.mixup_alpha" in p) == (p["method.name"] == "twohead_full")
        seen_full += p["method.name"] == "twohead_full"
        seen_plain += p["method.name"] == "twohead"
        cfg = spec.trial_config(p)
        assert cfg.method.name == p["method.name"]
        study.tell(t, 0.0)
    assert seen_full and seen_plain


def test_unreachable_condition_warns(tmp_path):
    d = _with()
    d["params"]["method.mixup_alpha"] = {"type": "float", "low": 0.2, "high": 1.0, "condition": {"method.name": "twohead_full"}}
    with pytest.warns(SearchSpaceWarning, match="never holds"):
        spec = load_search_space(_write(tmp_path, d))
    t = optuna.create_study().ask()
    spec.suggest(t)
    assert "method.mixup_alpha" not in t.params


def test_scientific_notation_without_dot_is_accepted(tmp_path):
    d = _with()
    d["params"]["optim.weight_decay"] = {"type": "float", "low": "1e-5", "high": "1e-3", "log": True}
    spec = load_search_space(_write(tmp_path, d))
    wd = next(p for p in spec.params if p.name == "optim.weight_decay")
    assert (wd.low, wd.high) == (1e-5, 1e-3)


def test_cli_overrides_are_validated(tmp_path):
    spec = load_search_space(_write(tmp_path, GOOD))
    s2 = spec.replace(num_samples=3, gpus_per_trial=0.25, study_name="x", set=["optim.epochs=30", "optim.milestones=[20,25]"])
    assert (s2.search.num_samples, s2.resources.gpus_per_trial, s2.study_name, s2.base.optim.epochs) == (3, 0.25, "x", 30)
    with pytest.raises(SearchSpaceError, match="grace_period=20"):
        spec.replace(set=["optim.epochs=10", "optim.milestones=[8]"])  # ASHA grace period no longer fits
    with pytest.raises(SearchSpaceError, match="gpus_per_trial=1.5"):
        spec.replace(gpus_per_trial=1.5)
    with pytest.raises(SearchSpaceError, match="optim.lr"):
        spec.replace(set=["optim.lr=-1"])


def test_base_config_file_relative_to_the_space(tmp_path):
    (tmp_path / "base.yaml").write_text("method: {name: cdh_only, u: 4}\noptim: {epochs: 30, milestones: [20, 25]}\n")
    d = _with(base={"config": "base.yaml"}, search__asha={"grace_period": 5, "reduction_factor": 3})
    spec = load_search_space(_write(tmp_path, d))
    assert spec.base.method.name == "cdh_only" and spec.base.optim.epochs == 30


# ------------------------------------------------------------------------------------------ bad specs
def test_unknown_parameter(tmp_path):
    d = _with()
    d["params"]["gamma"] = {"type": "float", "low": 0.1, "high": 1.0}
    msg = _error(tmp_path, d)
    assert "'gamma'" in msg and "unknown parameter" in msg
    d = _with()
    d["params"]["method.nope"] = {"type": "float", "low": 0.1, "high": 1.0}
    msg = _error(tmp_path, d)
    assert "'method.nope'" in msg and "method.* keys" in msg and "alpha" in msg


@pytest.mark.parametrize("low,high", [(5, 5), (10, 2)])
def test_empty_range(tmp_path, low, high):
    msg = _error(tmp_path, _with(params__u={"type": "int", "low": low, "high": high}))
    assert "'u'" in msg and "empty range" in msg


@pytest.mark.parametrize(
    "param,spec,needle",
    [
        ("u", {"type": "integer", "low": 2, "high": 30}, "type='integer' is unknown"),
        ("u", {"type": "float", "low": 2, "high": 30}, "type float does not fit"),
        ("u", {"type": "int", "low": 2.5, "high": 30}, "must be an integer"),
        ("alpha", {"type": "float", "low": "a lot", "high": 1.0}, "must be a number"),
        ("alpha", {"type": "float", "high": 1.0}, "`low` is required"),
        ("alpha", {"type": "float", "low": 0.3, "high": 1.0, "choices": [0.5]}, "only applies to type: categorical"),
        ("clustering", {"type": "categorical", "choices": []}, "non-empty list"),
        ("clustering", {"type": "categorical", "choices": ["random"], "low": 1}, "does not apply to a categorical"),
        ("clustering", {"type": "float", "low": 0.0, "high": 1.0}, "type float does not fit"),
        ("optim.lr", {"type": "float", "low": 0.0, "high": 0.2, "log": True}, "log=true needs low > 0"),
        ("optim.lr", {"type": "float", "low": 0.01, "high": 0.2, "log": "yes"}, "must be true or false"),
        ("u", {"type": "int", "low": 2, "high": 30, "bins": 3}, "unknown key(s) ['bins']"),
        ("u", [2, 30], "spec must be a mapping"),
    ],
)
def test_bad_type(tmp_path, param, spec, needle):
    msg = _error(tmp_path, _with(**{f"params__{param}": spec}))
    assert f"'{param}'" in msg and needle in msg, msg


def test_unknown_clustering_choice(tmp_path):
    msg = _error(tmp_path, _with(params__clustering={"type": "categorical", "choices": ["random", "spectral"]}))
    assert "'clustering'" in msg and "'spectral'" in msg and "hierarchical" in msg


@pytest.mark.parametrize(
    "param,spec,needle",
    [
        ("alpha", {"type": "float", "low": 0.5, "high": 1.5}, "method.alpha=1.5: input should be less than or equal to 1"),
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0}, "method.alpha=0.0: input should be greater than 0"),
        ("lambda", {"type": "float", "low": -1.0, "high": 3.0}, "method.lam=-1.0: input should be greater than or equal to 0"),
        ("u", {"type": "int", "low": 0, "high": 30}, "method.u=0: input should be greater than or equal to 1"),
    ],
)
def test_range_outside_what_the_config_allows(tmp_path, param, spec, needle):
    msg = _error(tmp_path, _with(**{f"params__{param}": spec}))
    assert f"'{param}'" in msg and "outside what the config allows" in msg and needle in msg, msg


def test_conditional_range_checked_under_its_condition(tmp_path):
    d = _with()
    d["params"]["method.mixup_alpha"] = {
        "type": "float",
        "low": -0.5,
        "high": 1.0,
        "condition": {"method.name": ["twohead_full"]},
    }
    msg = _error(tmp_path, d)
    assert "'method.mixup_alpha'" in msg and "method.mixup_alpha=-0.5: input should be greater than 0" in msg


def test_condition_on_unknown_key_or_later_parameter(tmp_path):
    d = _with()
    d["params"]["method.mixup_alpha"] = {"type": "float", "low": 0.2, "high": 1.0, "condition": {"method.kind": "x"}}
    assert "condition on 'method.kind'" in _error(tmp_path, d)
    d = _with()
    d["params"] = {
        "method.mixup_alpha": {"type": "float", "low": 0.2, "high": 1.0, "condition": {"method.name": "twohead_full"}},
        "method.name": {"type": "categorical", "choices": ["twohead", "twohead_full"]},
    }
    assert "declared after it" in _error(tmp_path, d)


@pytest.mark.parametrize(
    "metric,needle",
    [("test_top1", "is a test metric"), ("test_few", "is a test metric"), ("val_loss2", "is unknown"), ("top1", "is unknown")],
)
def test_metric_must_be_a_known_validation_metric(tmp_path, metric, needle):
    msg = _error(tmp_path, _with(metric=metric))
    assert repr(metric) in msg and needle in msg and "val_top1" in msg


def test_metric_needs_a_validation_split(tmp_path):
    msg = _error(tmp_path, _with(base={"preset": "cifar10-lt", "set": {"data.val_per_class": 0}}))
    assert "val_per_class=0" in msg


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"mode": "maximise"}, "mode='maximise'"),
        ({"search__num_samples": 0}, "num_samples=0"),
        ({"search__max_concurrent": 0}, "max_concurrent=0"),
        ({"search__asha": {"grace_period": 500, "reduction_factor": 3}}, "grace_period=500"),
        ({"search__asha": {"grace_period": 5, "reduction_factor": 1}}, "reduction_factor=1: input should be greater than 1"),
        ({"search__asha": {"grace": 5}}, "unknown key(s) ['grace']"),
        ({"resources__gpus_per_trial": -0.5}, "gpus_per_trial=-0.5"),
        ({"resources__cpus_per_trial": 0}, "cpus_per_trial=0"),
        ({"resources__gpus": 1}, "unknown key(s) ['gpus']"),
        ({"extra": 1}, "unknown key(s) ['extra']"),
        ({"base": {"preset": "cifar11-lt"}}, "cifar11-lt"),
        ({"base": {"preset": "cifar10-lt", "set": {"optim.lr": -0.1}}}, "optim.lr"),
        ({"params": {}}, "at least one parameter"),
        ({"study_name": "a/b"}, "plain name"),
    ],
)
def test_bad_settings(tmp_path, changes, needle):
    msg = _error(tmp_path, _with(**changes))
    assert needle in msg, msg


def test_two_names_for_one_key(tmp_path):
    d = _with()
    d["params"]["method.u"] = {"type": "int", "low": 2, "high": 9}
    msg = _error(tmp_path, d)
    assert "method.u" in msg and "'u'" in msg


def test_bad_files(tmp_path):
    with pytest.raises(SearchSpaceError, match="unknown search-space preset 'nope'.*smoke"):
        load_search_space("nope")
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [u: {\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML"):
        load_search_space(bad)
    with pytest.raises(SearchSpaceError, match="must be a mapping"):
        parse_search_space([1, 2], source="list.yaml")


def test_trial_params_outside_the_space_are_refused(tmp_path):
    spec = load_search_space(_write(tmp_path, GOOD))
    with pytest.raises(SearchSpaceError, match="not in this search space"):
        spec.trial_config({"u": 3, "beta": 1})


def test_import_is_ray_free():
    code = textwrap.dedent(
        """
        import sys
        import rayjobs.search.space as s
        s.load_search_space("smoke")
        assert "ray" not in sys.modules and "optuna" not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna'))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
