"""Typed run configuration with the paper's defaults, validated once at the edge (pydantic).

Every field carries a comment saying where its default comes from: the paper (Sec. 3.1), LDAM-DRW /
BBN (what the paper's baselines used but the paper does not state), or this toolkit.

A config is plain data: five sections that round-trip through ``to_dict`` / ``from_dict`` (YAML, JSON, Ray Tune's
``param_space``) and take ``key=value`` overrides with dotted keys (``method.u=20``). Any invalid value raises
:class:`ConfigError` with one line naming the field, the value and what is allowed; a config that exists is valid.

One module, a little over 400 lines on purpose: the fields, their rules and the ways a config is built (overrides,
files, the run identity) change together, and a field with its comment reads best next to its rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .methods import DEFERRED_REWEIGHT, METHODS, MethodSpec
from .presets import PRESETS

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "METHODS",
    "DEFERRED_REWEIGHT",
    "MethodSpec",
    "PRESETS",
    "DATASETS",
    "SECTIONS",
    "load_config",
    "apply_overrides",
    "data_root",
    "flatten",
    "result_identity",
    "RESULT_NEUTRAL",
]


class ConfigError(ValueError):
    """A configuration value is unknown or outside its allowed range."""


DATASETS = ("cifar10-lt", "cifar100-lt", "tiny-imagenet-lt", "imagenet-lt", "imagenet-lt-standin", "parquet", "folder")
SECTIONS = ("data", "model", "method", "optim", "run")
CLUSTERINGS = ("random", "kmeans", "hierarchical")
# The search parameter names of the paper are accepted as aliases of their keys.
ALIASES = {"lambda": "method.lam", "u": "method.u", "alpha": "method.alpha", "clustering": "method.clustering"}

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


def data_root(configured: str = "") -> Path:
    """Resolve the data root: the config value, else ``$TWOHEAD_DATA``, else ``~/.cache/twohead/data``."""
    root = configured or os.environ.get("TWOHEAD_DATA", "") or "~/.cache/twohead/data"
    return Path(root).expanduser()


def no_bool_for_number(model: type[BaseModel], v: Any, info: Any) -> Any:
    """A ``mode="before"`` field check: pydantic reads ``true`` as 1 for a number field; refuse it instead."""
    if isinstance(v, bool) and model.model_fields[info.field_name].annotation in (int, float):
        raise ValueError("a number is needed, not true/false")
    return v


class _Section(BaseModel):
    # Unknown keys are errors; inf / nan are never a valid number; values are re-checked on assignment; a number
    # given for a text field (run.name: 2024) is that text.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        return no_bool_for_number(cls, v, info)  # `method.u=true` is a typo, not a cluster count


class DataConfig(_Section):
    dataset: Literal[DATASETS] = "cifar10-lt"  # one of DATASETS
    root: str = ""  # data root; empty -> $TWOHEAD_DATA -> ~/.cache/twohead/data
    path: str = ""  # dataset location for `parquet` / `folder` / ImageNet image root (ILSVRC2012)
    imbalance: Annotated[float, Field(ge=1)] = 100.0  # beta = n_max / n_min (paper Sec. 3.1: 10, 50, 100); CIFAR/Tiny
    lt_seed: NonNegInt = 0  # numpy seed of LDAM-DRW's per-class shuffle (their code uses 0)
    val_per_class: NonNegInt = 20  # balanced validation images per class, carved from train images outside
    #                                the LT subset; 0 disables. ImageNet-LT uses its official 20/class list.
    train_fraction: Fraction = 1.0  # stratified fraction of the LT train set (smoke runs only); 1 = all
    eval_fraction: Fraction = 1.0  # stratified fraction of val/test (smoke runs only); 1 = all
    download: bool = False  # allow torchvision / official-URL downloads into `root`
    image_size: NonNegInt = 0  # training resolution; 0 = the dataset's own (32 CIFAR, 64 Tiny, 224 ImageNet)
    num_workers: NonNegInt = 4  # DataLoader workers for file-backed datasets (ImageNet-LT, folders)
    device_resident: Literal["auto", "on", "off"] = "auto"  # keep decoded uint8 images on the device
    skip_corrupt: bool = False  # skip undecodable images (counted and reported) instead of failing


class ModelConfig(_Section):
    backbone: str = "resnet32"  # a twohead.backbones registry name; paper Sec. 3.1: ResNet-32 (CIFAR), ResNet-18
    #                             (Tiny), ResNeXt-50 (ImageNet-LT)
    fbh_kernel: PositiveInt = 3  # FBH class-specific kernel size K_c (Eq. 1), odd; the paper does not state it
    feature_proj: str = "auto"  # D not a multiple of C: auto = 1x1 conv+BN+ReLU to m*C channels,
    #                             m = max(1, ceil(D/C)), shared by both heads; none = require D % C == 0;
    #                             an integer m forces m*C channels
    inference: Literal["max", "sum", "fuse", "fbh"] = "max"  # K->C reading at test time (twohead.readings): max =
    #                         the class of the best cluster, the paper's "predict the class with the correspondence
    #                         between clusters and classes" (Sec. 2.2) | sum of cluster probabilities | fuse (sum
    #                         averaged with the FBH) | fbh (FBH alone). All are scored; this one is the headline.
    channels_last: bool = True  # NHWC memory format (faster convolutions on tensor cores)

    @field_validator("backbone")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .backbones import list_backbones  # the registry is the one list of names

        if v not in list_backbones():
            raise ValueError(f"unknown backbone; registered: {', '.join(list_backbones())}")
        return v

    @field_validator("fbh_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (same padding keeps the map size)")
        return v

    @field_validator("feature_proj", mode="before")
    @classmethod
    def _proj(cls, v: Any) -> str:
        s = str(v)
        if s not in ("auto", "none") and not (s.isdigit() and int(s) >= 1):
            raise ValueError("must be auto, none or an integer m >= 1")
        return s


class MethodConfig(_Section):
    name: Literal[tuple(METHODS)] = "twohead"  # one of twohead.methods.METHODS
    u: PositiveInt = 10  # clusters of the largest class (Eq. 3); paper default 10
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.5  # soft-label value on the sample's own cluster (Sec. 2.2, "e.g., 0.5")
    lam: Annotated[float, Field(ge=0)] = 1.5  # lambda in L = L2 + lambda * L1 (paper: 1.5 for all experiments)
    rounding: Literal["ceil", "round"] = "ceil"  # Eq. 3's rounding operator: ceil (as printed) | round
    clustering: Literal[CLUSTERINGS] = "random"  # random (paper default) | kmeans | hierarchical (Fig. 4 right)
    embedding: str = "pca"  # per-sample embedding for kmeans/hierarchical: pca (of pixels) | pixels | checkpoint:PATH
    cluster_seed: NonNegInt | None = None  # seed of the random / k-means division; None = optim.seed, so every seed
    #                                      of a multi-seed run also draws its own cluster split (an explicit value wins)
    focal_gamma: Annotated[float, Field(ge=0)] = 1.0  # focal loss gamma (LDAM-DRW's focal baseline uses 1.0)
    cb_beta: Annotated[float, Field(ge=0, lt=1)] = 0.9999  # effective-number beta (Cui et al. 2019; LDAM-DRW 0.9999)
    ldam_max_m: Annotated[float, Field(gt=0)] = 0.5  # LDAM largest margin (Cao et al. 2019)
    ldam_s: Annotated[float, Field(gt=0)] = 30.0  # LDAM logit scale
    mixup_alpha: Annotated[float, Field(gt=0)] = 1.0  # Beta(a, a) of mixup (MiSLAS uses 1.0 on CIFAR)
    drw_epoch: NonNegInt = 160  # epoch from which deferred re-weighting starts (LDAM-DRW: 160 of 200)

    @field_validator("embedding")
    @classmethod
    def _embedding(cls, v: str) -> str:
        if v not in ("pca", "pixels") and not v.startswith("checkpoint:"):
            raise ValueError("must be pca, pixels or checkpoint:PATH")
        return v


class OptimConfig(_Section):
    epochs: PositiveInt = 200  # paper: 200 (CIFAR, Tiny), 90 (ImageNet-LT)
    batch_size: PositiveInt = 128  # paper: 128 (CIFAR, Tiny), 512 (ImageNet-LT); global across workers
    lr: Annotated[float, Field(gt=0)] = 0.1  # paper: 0.1 (CIFAR, Tiny), 0.2 (ImageNet-LT)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # paper: SGD momentum 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 2e-4  # not in the paper; LDAM-DRW and BBN use 2e-4 on CIFAR
    schedule: Literal["step", "cosine"] = "step"  # step (CIFAR, Tiny) | cosine (ImageNet-LT)
    milestones: tuple[PositiveInt, ...] = (120, 160)  # paper: lr decays at epochs 120 and 160 (0-based)
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.01  # factor at EACH milestone: 0.1 -> 1e-3 -> 1e-5. Paper Sec.
    #                         3.1 "decayed by 0.01 at the 120th and 160th epoch" is BBN's recipe (configs/cifar10.yaml
    #                         LR_FACTOR 0.01 with WarmupMultiStepLR); LDAM-DRW's CIFAR code also multiplies by 0.01,
    #                         then 0.0001
    warmup_epochs: NonNegInt = 5  # linear warm-up; not in the paper, LDAM-DRW and BBN use 5
    seed: NonNegInt = 0  # torch seed: init, shuffling, augmentation (and the cluster split, see method.cluster_seed)
    amp: Literal["auto", "bf16", "off"] = "auto"  # autocast dtype: auto (bf16 on CUDA, off on CPU) | bf16 | off
    compile: Literal["auto", "cuda-graphs", "off"] = "auto"  # launch-overhead removal: auto (cuda-graphs on CUDA)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @field_validator("milestones", mode="before")
    @classmethod
    def _milestones(cls, v: Any) -> Any:
        if isinstance(v, str):  # "120,160" from a command line
            v = [x for x in v.strip("[]() ").split(",") if x.strip()]
        if isinstance(v, (int, float)):
            v = [v]
        if isinstance(v, (list, tuple)) and any(float(a) >= float(b) for a, b in zip(v, v[1:])):
            raise ValueError("must be strictly increasing epochs")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v


class RunConfig(_Section):
    out: Annotated[str, Field(min_length=1)] = "runs"  # results folder; each run writes OUT/NAME/{config.yaml,...}
    name: str = ""  # run name; empty -> derived from dataset, imbalance, method and seed
    checkpoint_every: PositiveInt = 10  # epochs between checkpoints (the last epoch always checkpoints)
    resume: bool = True  # continue from OUT/NAME/checkpoint.pt when it exists
    eval_every: PositiveInt = 1  # epochs between validation passes (metrics reported each time)
    plots: bool = True  # write PNG plots (Fig. 3 style) next to metrics.json
    progress: bool = True  # progress bar (tqdm)
    test_curve: bool = False  # also evaluate TEST each epoch from the first lr decay on, to report the best-over-
    #                           epochs number of the baselines' code (LDAM-DRW, BBN keep their best test epoch) beside
    #                           the final-epoch headline; reproduction runs only, never used to choose anything

    @field_validator("out")
    @classmethod
    def _out(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a results folder")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "/" in v or v in (".", ".."):
            raise ValueError("must be a plain folder name")
        return v


class TrainConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    # ---- rules that involve several fields --------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        d, mo, me, o = self.data, self.model, self.method, self.optim
        spec = METHODS[me.name]

        def bad(msg: str) -> None:
            raise ValueError(msg)

        if d.dataset in ("parquet", "folder") and not d.path:
            bad(f"data.path must name the {d.dataset} dataset location for data.dataset={d.dataset}")
        if o.warmup_epochs and o.warmup_epochs >= o.epochs:
            bad(f"optim.warmup_epochs={o.warmup_epochs} must be below optim.epochs={o.epochs}")
        early = [m for m in o.milestones if m < o.warmup_epochs]
        if o.schedule == "step" and early:
            bad(
                f"optim.milestones={list(o.milestones)} has epochs inside the {o.warmup_epochs}-epoch warm-up, where "
                "the warm-up sets the rate and the decay would be lost; move them after optim.warmup_epochs"
            )
        late = [m for m in o.milestones if m >= o.epochs]
        if o.schedule == "step" and late:
            bad(
                f"optim.milestones={list(o.milestones)} has epochs at or past optim.epochs={o.epochs}, where the "
                f"learning rate would never decay; set milestones below {o.epochs} or optim.milestones=[]"
            )
        if me.name in DEFERRED_REWEIGHT and me.drw_epoch >= o.epochs:
            bad(
                f"method.drw_epoch={me.drw_epoch} is not before optim.epochs={o.epochs}: {me.name}'s deferred "
                f"re-weighting would never start; set method.drw_epoch below {o.epochs}"
            )
        if mo.inference not in ("max", "sum") and not spec.fbh:
            bad(
                f"model.inference={mo.inference} needs the feature-balancing head, which method.name={me.name} "
                "lacks; use max or sum"
            )
        if mo.inference not in ("max", "sum") and me.lam == 0:
            bad(
                f"model.inference={mo.inference} reads the feature-balancing head, which method.lam=0 leaves "
                "untrained; use max or sum, or set method.lam > 0"
            )
        return self

    # ---- derived views ------------------------------------------------------------------------------------
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

    # ---- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"a config must be a mapping of sections {', '.join(SECTIONS)}, got {type(d).__name__}")
        return _validated(lambda: cls.model_validate({k: v for k, v in d.items() if v is not None}))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> TrainConfig:
        """Check the config again (fields may have been assigned since it was built); returns it."""
        _validated(lambda: TrainConfig.model_validate(self.to_dict()))
        return self


# --------------------------------------------------------------------------------------------------------
# Errors: one line naming the field, the value and what is allowed
# --------------------------------------------------------------------------------------------------------
def _describe(err: Mapping[str, Any]) -> str:
    parts = [str(p) for p in err.get("loc", ())]
    loc = ".".join(parts)
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    kind = err.get("type")
    if kind == "extra_forbidden":
        parent = ".".join(parts[:-1])
        fields = (_SECTION_MODELS[parent] if parent in _SECTION_MODELS else TrainConfig).model_fields
        return f"unknown config key {loc!r}; allowed{' ' + parent + '.*' if parent else ''} keys: {', '.join(fields)}"
    if not loc:
        return msg
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return f"config section {loc!r} must be a mapping of keys, got {err.get('input')!r}"
    return f"{loc}={err.get('input')!r}: {msg[:1].lower() + msg[1:]}"


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


def _validated(build):
    try:
        return build()
    except ValidationError as e:
        raise ConfigError("; ".join(_describe(err) for err in e.errors())) from None


# --------------------------------------------------------------------------------------------------------
# Overrides: "section.key=value" (CLI), mappings (YAML files, presets, search trials)
# --------------------------------------------------------------------------------------------------------
def _is_text(key: str) -> bool:
    section, _, name = key.partition(".")
    model = _SECTION_MODELS.get(section)
    return model is not None and name in model.model_fields and model.model_fields[name].annotation is str


def _parse_scalar(text: str) -> Any:
    """Parse a CLI value with YAML rules (numbers, booleans, lists, null) but keep plain strings."""
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any] | list[str]) -> TrainConfig:
    """A new, validated config: ``cfg`` with dotted-key overrides applied (values parsed to the field types).

    ``overrides`` is a mapping or a list of ``"key=value"`` strings (the CLI's ``--set``). The search parameter
    names ``u``, ``alpha``, ``lambda`` and ``clustering`` are accepted as aliases.
    """
    if isinstance(overrides, list):
        pairs: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            k, v = (x.strip() for x in item.split("=", 1))
            # Text fields take the text as written (run.name=001 stays "001"); the others are parsed like YAML.
            pairs[k] = v if _is_text(ALIASES.get(k, k)) else _parse_scalar(v)
        overrides = pairs
    d = cfg.to_dict()
    for key, value in overrides.items():
        key = ALIASES.get(key, key)
        if "." not in key:
            raise ConfigError(f"override key {key!r} must be section.key (sections: {', '.join(SECTIONS)})")
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; allowed: {', '.join(SECTIONS)}")
        d[section][name] = value
    return TrainConfig.from_dict(d)


def _no_duplicate_keys_loader():
    """A YAML SafeLoader that refuses a mapping with the same key twice (the later would silently win)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct)
    return Loader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The sections of a YAML / JSON config file, or :class:`ConfigError` naming the file and the problem."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text()
        d = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_no_duplicate_keys_loader())
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
        first = " ".join(str(e).split())[:200]
        raise ConfigError(f"config file {str(p)!r} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}") from None
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in d.items():
        if section not in SECTIONS or not isinstance(values, Mapping):
            raise ConfigError(
                f"config file {str(p)!r}: section {section!r} is not one of {', '.join(SECTIONS)} holding a mapping"
            )
    return dict(d)


def load_config(
    path: str | Path | None = None, *, preset: str | None = None, overrides: list[str] | Mapping[str, Any] | None = None
) -> TrainConfig:
    """Build a validated config: defaults <- preset <- YAML/JSON file <- overrides."""
    cfg = TrainConfig()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
        cfg = apply_overrides(cfg, PRESETS[preset])
    if path:
        sections = read_config_file(path)
        cfg = apply_overrides(cfg, {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


# --------------------------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------------------------
# Keys that never change a run's results: where data and outputs live, how they are loaded, the device choice, and
# the whole run section (names, checkpoint cadence, plots, progress, test tracking).
RESULT_NEUTRAL = ("data.root", "data.download", "data.num_workers", "data.device_resident", "optim.device")


def flatten(d: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined with ``sep``: a config's ``optim.lr`` (the names ``--set`` takes),
    a metric's ``val_posthoc/la_tau1.0``. Leaves (lists included) are kept as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
