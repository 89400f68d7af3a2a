"""Typed run configuration with the paper's defaults, validated once at the edge.

Every field carries a comment saying where its default comes from: the paper (Sec. 3.1), LDAM-DRW /
BBN (what the paper's baselines used but the paper does not state), or this toolkit.

A config is plain data: nested dataclasses that round-trip through ``to_dict`` / ``from_dict`` (YAML,
JSON, Ray Tune's ``param_space``) and take ``key=value`` overrides with dotted keys
(``method.u=20``). ``validate`` raises :class:`ConfigError` naming the field, the value and the
allowed range; every entry point calls it before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "METHODS",
    "MethodSpec",
    "PRESETS",
    "DATASETS",
    "load_config",
    "apply_overrides",
    "data_root",
    "result_identity",
]


class ConfigError(ValueError):
    """A configuration value is unknown or outside its allowed range."""


# --------------------------------------------------------------------------------------------
# Methods: each name fixes which heads exist and which loss terms are used.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    fbh: bool  # feature-balancing head (Sec. 2.1) adds lambda * L1
    cdh: bool  # class-division head (Sec. 2.2): K-way classifier with soft labels (Eq. 4)
    loss: str  # per-sample loss of the main classifier: ce | focal | ldam
    mixup: bool  # mixup data augmentation (Zhang et al. 2018)
    reweight: bool  # class re-weighting by effective number (Cui et al. 2019), from method.drw_epoch
    normed_classifier: bool = False  # cosine classifier (LDAM-DRW's NormedLinear)

    @property
    def two_head(self) -> bool:
        """A method of the two-head family (Table 4's FBH / CDH rows): they share one architecture."""
        return self.fbh or self.cdh


METHODS: dict[str, MethodSpec] = {
    "ce": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=False, reweight=False),
    "focal": MethodSpec(fbh=False, cdh=False, loss="focal", mixup=False, reweight=False),
    # CB: CE re-weighted by the effective number from the first epoch (drw_epoch is ignored).
    "cb": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=False, reweight=True),
    "cb_focal": MethodSpec(fbh=False, cdh=False, loss="focal", mixup=False, reweight=True),
    "ldam": MethodSpec(fbh=False, cdh=False, loss="ldam", mixup=False, reweight=False, normed_classifier=True),
    "ldam_drw": MethodSpec(fbh=False, cdh=False, loss="ldam", mixup=False, reweight=True, normed_classifier=True),
    "mixup": MethodSpec(fbh=False, cdh=False, loss="ce", mixup=True, reweight=False),
    # The paper's method ("Ours", Table 1) and its ablations (Table 4).
    "twohead": MethodSpec(fbh=True, cdh=True, loss="ce", mixup=False, reweight=False),
    "fbh_only": MethodSpec(fbh=True, cdh=False, loss="ce", mixup=False, reweight=False),
    "cdh_only": MethodSpec(fbh=False, cdh=True, loss="ce", mixup=False, reweight=False),
    # "Ours-Full" (Table 1, last row): two heads + mixup + class re-weighting "as used in MiSLAS".
    "twohead_full": MethodSpec(fbh=True, cdh=True, loss="ce", mixup=True, reweight=True),
}

# Methods whose re-weighting starts at method.drw_epoch (deferred re-weighting, LDAM-DRW);
# the others re-weight from the first epoch.
DEFERRED_REWEIGHT = {"ldam_drw", "twohead_full"}

DATASETS = (
    "cifar10-lt",
    "cifar100-lt",
    "tiny-imagenet-lt",
    "imagenet-lt",
    "imagenet-lt-standin",
    "parquet",
    "folder",
)
BACKBONES = ("resnet32", "resnet110", "resnet18", "resnext50_32x4d", "vgg16", "mobilenet_v2")
CLUSTERINGS = ("random", "kmeans", "hierarchical")


def data_root(configured: str = "") -> Path:
    """Resolve the data root: the config value, else ``$TWOHEAD_DATA``, else ``~/.cache/twohead/data``."""
    root = configured or os.environ.get("TWOHEAD_DATA", "") or "~/.cache/twohead/data"
    return Path(root).expanduser()


# Keys that never change a run's results: where data and outputs live, how they are loaded, the device choice, and
# the whole run section (names, checkpoint cadence, plots, progress, test tracking).
RESULT_NEUTRAL = ("data.root", "data.num_workers", "data.device_resident", "optim.device")


def result_identity(config: Mapping[str, Any]) -> dict:
    """The part of a config dict that decides a run's results: two configs with equal identities are the same run
    (resume, refuse-to-overwrite and the reproduction's finished-run check all use this one rule)."""
    d = json.loads(json.dumps(dict(config)))
    d.pop("run", None)
    for key in RESULT_NEUTRAL:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    if d.get("method", {}).get("cluster_seed", "unset") is None:  # None means optim.seed: compare the resolved seed
        d["method"]["cluster_seed"] = d.get("optim", {}).get("seed", 0)
    return d


@dataclass
class DataConfig:
    dataset: str = "cifar10-lt"  # one of DATASETS
    root: str = ""  # data root; empty -> $TWOHEAD_DATA -> ~/.cache/twohead/data
    path: str = ""  # dataset location for `parquet` / `folder` / ImageNet image root (ILSVRC2012)
    imbalance: float = 100.0  # beta = n_max / n_min (paper Sec. 3.1: 10, 50, 100); CIFAR/Tiny only
    lt_seed: int = 0  # numpy seed of LDAM-DRW's per-class shuffle (their code uses 0)
    val_per_class: int = 20  # balanced validation images per class, carved from train images outside
    #                          the LT subset; 0 disables. ImageNet-LT uses its official 20/class list.
    train_fraction: float = 1.0  # stratified fraction of the LT train set (smoke runs only); 1 = all
    eval_fraction: float = 1.0  # stratified fraction of val/test (smoke runs only); 1 = all
    download: bool = False  # allow torchvision / official-URL downloads into `root`
    image_size: int = 0  # training resolution; 0 = the dataset's own (32 CIFAR, 64 Tiny, 224 ImageNet)
    num_workers: int = 4  # DataLoader workers for file-backed datasets (ImageNet-LT, folders)
    device_resident: str = "auto"  # keep decoded uint8 images on the device: auto | on | off
    skip_corrupt: bool = False  # skip undecodable images (counted and reported) instead of failing


@dataclass
class ModelConfig:
    backbone: str = "resnet32"  # paper Sec. 3.1: ResNet-32 (CIFAR), ResNet-18 (Tiny), ResNeXt-50 (ImageNet-LT)
    fbh_kernel: int = 3  # FBH class-specific kernel size K_c (Eq. 1); the paper does not state it
    feature_proj: str = "auto"  # D not a multiple of C: auto = 1x1 conv+BN+ReLU to m*C channels,
    #                             m = max(1, ceil(D/C)), shared by both heads; none = require D % C == 0;
    #                             an integer m forces m*C channels
    inference: str = "max"  # K->C reading at test time (twohead.readings): max = the class of the best cluster, the
    #                         paper's "predict the class with the correspondence between clusters and classes" (Sec.
    #                         2.2) | sum of cluster probabilities | fuse (sum averaged with the FBH) | fbh (FBH alone).
    #                         Every reading is scored at each evaluation; this one is the headline number.
    channels_last: bool = True  # NHWC memory format (faster convolutions on tensor cores)


@dataclass
class MethodConfig:
    name: str = "twohead"  # one of METHODS
    u: int = 10  # clusters of the largest class (Eq. 3); paper default 10
    alpha: float = 0.5  # soft-label value on the sample's own cluster (Sec. 2.2, "e.g., 0.5")
    lam: float = 1.5  # lambda in L = L2 + lambda * L1 (paper: 1.5 for all experiments)
    rounding: str = "ceil"  # Eq. 3's rounding operator: ceil (as printed) | round
    clustering: str = "random"  # random (paper default) | kmeans | hierarchical (Fig. 4 right)
    embedding: str = "pca"  # per-sample embedding for kmeans/hierarchical: pca (of pixels) | pixels | checkpoint:PATH
    cluster_seed: int | None = None  # seed of the random / k-means division; None = optim.seed, so every seed of a
    #                                  multi-seed run also draws its own cluster split (an explicit value wins)
    focal_gamma: float = 1.0  # focal loss gamma (LDAM-DRW's focal baseline uses 1.0)
    cb_beta: float = 0.9999  # effective-number beta (Cui et al. 2019; LDAM-DRW uses 0.9999)
    ldam_max_m: float = 0.5  # LDAM largest margin (Cao et al. 2019)
    ldam_s: float = 30.0  # LDAM logit scale
    mixup_alpha: float = 1.0  # Beta(a, a) of mixup (MiSLAS uses 1.0 on CIFAR)
    drw_epoch: int = 160  # epoch from which deferred re-weighting starts (LDAM-DRW: 160 of 200)


@dataclass
class OptimConfig:
    epochs: int = 200  # paper: 200 (CIFAR, Tiny), 90 (ImageNet-LT)
    batch_size: int = 128  # paper: 128 (CIFAR, Tiny), 512 (ImageNet-LT); global across workers
    lr: float = 0.1  # paper: 0.1 (CIFAR, Tiny), 0.2 (ImageNet-LT)
    momentum: float = 0.9  # paper: SGD momentum 0.9
    weight_decay: float = 2e-4  # not in the paper; LDAM-DRW and BBN use 2e-4 on CIFAR (5e-4 ImageNet-LT)
    schedule: str = "step"  # step (CIFAR, Tiny) | cosine (ImageNet-LT)
    milestones: tuple[int, ...] = (120, 160)  # paper: lr decays at epochs 120 and 160
    lr_gamma: float = 0.01  # factor at EACH milestone: 0.1 -> 1e-3 -> 1e-5. Paper Sec. 3.1 "decayed by 0.01 at the
    #                         120th and 160th epoch" is BBN's recipe (configs/cifar10.yaml LR_FACTOR 0.01 with
    #                         WarmupMultiStepLR); LDAM-DRW's CIFAR code also multiplies by 0.01, then 0.0001
    warmup_epochs: int = 5  # linear warm-up; not in the paper, LDAM-DRW and BBN use 5
    seed: int = 0  # torch seed: init, shuffling, augmentation
    amp: str = "auto"  # autocast dtype: auto (bf16 on CUDA, off on CPU) | bf16 | off
    compile: str = "auto"  # launch-overhead removal: auto (cuda-graphs on CUDA, off on CPU) | cuda-graphs | off
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class RunConfig:
    out: str = "runs"  # results folder; each run writes OUT/NAME/{config.yaml,metrics.json,...}
    name: str = ""  # run name; empty -> derived from dataset, imbalance, method and seed
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch always checkpoints)
    resume: bool = True  # continue from OUT/NAME/checkpoint.pt when it exists
    eval_every: int = 1  # epochs between validation passes (metrics reported each time)
    plots: bool = True  # write PNG plots (Fig. 3 style) next to metrics.json
    progress: bool = True  # progress bar (tqdm)
    test_curve: bool = False  # also evaluate TEST each epoch from the first lr decay on, to report the best-over-
    #                           epochs number of the baselines' code (LDAM-DRW, BBN keep their best test epoch) beside
    #                           the final-epoch headline; reproduction runs only, never used to choose anything


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- derived views ------------------------------------------------------------------
    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method.name]

    @property
    def cluster_seed(self) -> int:
        """The seed of the cluster division: ``method.cluster_seed``, else ``optim.seed``."""
        return self.optim.seed if self.method.cluster_seed is None else int(self.method.cluster_seed)

    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        imb = f"{self.data.imbalance:g}"
        return f"{self.data.dataset}-imb{imb}-{self.model.backbone}-{self.method.name}-s{self.optim.seed}"

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["milestones"] = list(self.optim.milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        cfg = cls()
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; allowed: data, model, method, optim, run")
        flat = {}
        for section, values in d.items():
            if values is None:
                continue
            if not isinstance(values, Mapping):
                raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
            for k, v in values.items():
                flat[f"{section}.{k}"] = v
        return apply_overrides(cfg, flat)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "TrainConfig":
        _validate(self)
        return self


# --------------------------------------------------------------------------------------------
# Overrides: "section.key=value" with the value parsed to the field's type.
# --------------------------------------------------------------------------------------------
_ALIASES = {"lambda": "method.lam", "u": "method.u", "alpha": "method.alpha", "clustering": "method.clustering"}


def _field_type(section_cls: type, name: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    if name not in hints:
        allowed = ", ".join(f.name for f in dataclasses.fields(section_cls))
        raise ConfigError(f"unknown config key {name!r} in {section_cls.__name__}; allowed: {allowed}")
    return hints[name]


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    try:
        if origin in (tuple, list):
            (inner, *_rest) = typing.get_args(typ) or (str,)
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").replace("(", "").replace(")", "").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(_coerce(key, v, inner) for v in value)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(typ) if a is not type(None)]
            if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
                if len(inner) < len(typing.get_args(typ)):
                    return None
            return _coerce(key, value, inner[0]) if len(inner) == 1 else value
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}={value!r} is not a valid {name}")


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any] | list[str]) -> TrainConfig:
    """Return a copy of ``cfg`` with dotted-key overrides applied (values parsed to the field type).

    ``overrides`` is a mapping or a list of ``"key=value"`` strings (the CLI's ``--set``). The search
    parameter names ``u``, ``alpha``, ``lambda`` and ``clustering`` are accepted as aliases.
    """
    if isinstance(overrides, list):
        pairs: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = _parse_scalar(v.strip())
        overrides = pairs
    out = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data),
        model=dataclasses.replace(cfg.model),
        method=dataclasses.replace(cfg.method),
        optim=dataclasses.replace(cfg.optim),
        run=dataclasses.replace(cfg.run),
    )
    for key, value in overrides.items():
        key = _ALIASES.get(key, key)
        if "." not in key:
            raise ConfigError(f"override key {key!r} must be section.key (sections: data, model, method, optim, run)")
        section, name = key.split(".", 1)
        if section not in ("data", "model", "method", "optim", "run"):
            raise ConfigError(f"unknown config section {section!r} in {key!r}; allowed: data, model, method, optim, run")
        sub = getattr(out, section)
        typ = _field_type(type(sub), name)
        setattr(sub, name, _coerce(key, value, typ))
    return out


def _parse_scalar(text: str) -> Any:
    """Parse a CLI value with YAML rules (numbers, booleans, lists) but keep plain strings."""
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


# --------------------------------------------------------------------------------------------
# Presets: the paper's recipes per dataset, and a CPU smoke run.
# --------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-lt": {"data.dataset": "cifar10-lt", "model.backbone": "resnet32"},
    "cifar100-lt": {"data.dataset": "cifar100-lt", "model.backbone": "resnet32"},
    "tiny-imagenet-lt": {"data.dataset": "tiny-imagenet-lt", "model.backbone": "resnet18"},
    # Paper Sec. 3.1: ResNeXt-50, batch 512, 90 epochs, lr 0.2 with a cosine schedule.
    "imagenet-lt": {
        "data.dataset": "imagenet-lt",
        "model.backbone": "resnext50_32x4d",
        "optim.epochs": 90,
        "optim.batch_size": 512,
        "optim.lr": 0.2,
        "optim.schedule": "cosine",
        "optim.milestones": [],
        "optim.weight_decay": 5e-4,
        "method.drw_epoch": 60,
    },
    # The same recipe on the generated stand-in (1000 classes, real counts, small images).
    "imagenet-lt-standin": {
        "data.dataset": "imagenet-lt-standin",
        "data.image_size": 32,
        "model.backbone": "resnet32",
        "optim.epochs": 2,
        "optim.batch_size": 256,
        "optim.schedule": "cosine",
        "optim.milestones": [],
        "optim.warmup_epochs": 0,
        "method.drw_epoch": 1,
    },
    # Finishes in well under a minute on a 2-core CPU (35 s measured): a stratified 20% of CIFAR-10-LT
    # (imbalance 100, ~2.5k images), 4 epochs at lr 0.05, a quarter of the validation and test splits.
    # Enough to leave chance level (22% test top-1 measured), not to be a result.
    "smoke": {
        "data.dataset": "cifar10-lt",
        "data.train_fraction": 0.2,
        "data.eval_fraction": 0.25,
        "model.backbone": "resnet32",
        "optim.epochs": 4,
        "optim.lr": 0.05,
        "optim.milestones": [3],
        "optim.warmup_epochs": 0,
        "method.drw_epoch": 3,
        "run.checkpoint_every": 1,
    },
}


def load_config(path: str | Path | None = None, *, preset: str | None = None, overrides: list[str] | Mapping[str, Any] | None = None) -> TrainConfig:
    """Build a validated config: defaults <- preset <- YAML file <- overrides."""
    cfg = TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
        cfg = apply_overrides(cfg, PRESETS[preset])
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        text = p.read_text()
        d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        flat = {}
        for section, values in d.items():
            if section not in ("data", "model", "method", "optim", "run") or not isinstance(values, Mapping):
                raise ConfigError(f"config file {str(p)!r}: section {section!r} is not one of data, model, method, optim, run")
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        cfg = apply_overrides(cfg, flat)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg.validate()


# --------------------------------------------------------------------------------------------
# Validation: one place, every rule names the field, the value and the allowed range.
# --------------------------------------------------------------------------------------------
def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    _check(value in allowed, f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")


def _validate(cfg: TrainConfig) -> None:
    d, mo, me, o, r = cfg.data, cfg.model, cfg.method, cfg.optim, cfg.run
    _one_of("data.dataset", d.dataset, DATASETS)
    _check(d.imbalance >= 1, f"data.imbalance={d.imbalance} must be >= 1 (n_max / n_min)")
    _check(d.val_per_class >= 0, f"data.val_per_class={d.val_per_class} must be >= 0")
    _check(0 < d.train_fraction <= 1, f"data.train_fraction={d.train_fraction} must be in (0, 1]")
    _check(0 < d.eval_fraction <= 1, f"data.eval_fraction={d.eval_fraction} must be in (0, 1]")
    _check(d.image_size >= 0, f"data.image_size={d.image_size} must be >= 0 (0 = dataset default)")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    _one_of("data.device_resident", d.device_resident, ("auto", "on", "off"))
    if d.dataset in ("parquet", "folder"):
        _check(bool(d.path), f"data.path must name the {d.dataset} dataset location for data.dataset={d.dataset}")

    _one_of("model.backbone", mo.backbone, BACKBONES)
    _check(mo.fbh_kernel >= 1 and mo.fbh_kernel % 2 == 1, f"model.fbh_kernel={mo.fbh_kernel} must be an odd integer >= 1")
    _check(
        mo.feature_proj in ("auto", "none") or (mo.feature_proj.isdigit() and int(mo.feature_proj) >= 1),
        f"model.feature_proj={mo.feature_proj!r} must be auto, none or an integer m >= 1",
    )
    _one_of("model.inference", mo.inference, ("max", "sum", "fuse", "fbh"))

    _one_of("method.name", me.name, list(METHODS))
    _check(isinstance(me.u, int) and me.u >= 1, f"method.u={me.u} must be an integer >= 1")
    _check(0 < me.alpha <= 1, f"method.alpha={me.alpha} must be in (0, 1]")
    _check(me.lam >= 0, f"method.lam (lambda)={me.lam} must be >= 0")
    _one_of("method.rounding", me.rounding, ("ceil", "round"))
    _one_of("method.clustering", me.clustering, CLUSTERINGS)
    _check(
        me.embedding in ("pca", "pixels") or me.embedding.startswith("checkpoint:"),
        f"method.embedding={me.embedding!r} must be pca, pixels or checkpoint:PATH",
    )
    _check(me.focal_gamma >= 0, f"method.focal_gamma={me.focal_gamma} must be >= 0")
    _check(0 <= me.cb_beta < 1, f"method.cb_beta={me.cb_beta} must be in [0, 1)")
    _check(me.ldam_max_m > 0, f"method.ldam_max_m={me.ldam_max_m} must be > 0")
    _check(me.ldam_s > 0, f"method.ldam_s={me.ldam_s} must be > 0")
    _check(me.mixup_alpha > 0, f"method.mixup_alpha={me.mixup_alpha} must be > 0")
    _check(me.drw_epoch >= 0, f"method.drw_epoch={me.drw_epoch} must be >= 0")
    _check(me.cluster_seed is None or (isinstance(me.cluster_seed, int) and me.cluster_seed >= 0),
           f"method.cluster_seed={me.cluster_seed!r} must be an integer >= 0, or null for optim.seed")
    if me.name in METHODS:
        _check(mo.inference in ("max", "sum") or METHODS[me.name].fbh,
               f"model.inference={mo.inference} needs the feature-balancing head, which method.name={me.name} lacks; "
               "use max or sum")

    _check(o.epochs >= 1, f"optim.epochs={o.epochs} must be >= 1")
    _check(o.batch_size >= 1, f"optim.batch_size={o.batch_size} must be >= 1")
    _check(o.lr > 0, f"optim.lr={o.lr} must be > 0")
    _check(0 <= o.momentum < 1, f"optim.momentum={o.momentum} must be in [0, 1)")
    _check(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _one_of("optim.schedule", o.schedule, ("step", "cosine"))
    _check(all(0 < m for m in o.milestones) and list(o.milestones) == sorted(o.milestones),
           f"optim.milestones={list(o.milestones)} must be increasing positive epochs")
    _check(0 < o.lr_gamma <= 1, f"optim.lr_gamma={o.lr_gamma} must be in (0, 1]")
    _check(0 <= o.warmup_epochs < o.epochs or o.warmup_epochs == 0,
           f"optim.warmup_epochs={o.warmup_epochs} must be in [0, epochs={o.epochs})")
    _one_of("optim.amp", o.amp, ("auto", "bf16", "off"))
    _one_of("optim.compile", o.compile, ("auto", "cuda-graphs", "off"))
    _check(o.device in ("auto", "cpu", "cuda") or o.device.startswith("cuda:"),
           f"optim.device={o.device!r} must be auto, cpu, cuda or cuda:N")

    _check(r.checkpoint_every >= 1, f"run.checkpoint_every={r.checkpoint_every} must be >= 1")
    _check(r.eval_every >= 1, f"run.eval_every={r.eval_every} must be >= 1")
    _check(bool(r.out), "run.out must name a results folder")
    _check("/" not in r.name and r.name not in (".", ".."), f"run.name={r.name!r} must be a plain folder name")
