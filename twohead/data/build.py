"""``build_data(cfg.data) -> LTData``: dispatch on ``data.dataset``, then LT sampling, fractions and decoding."""

from __future__ import annotations

from twohead.config import DATASETS, DataConfig, data_root
from twohead.data.plan import DatasetPlan
from twohead.data.types import DataError, LTData

__all__ = ["build_data", "describe_counts", "plan_data"]


def plan_data(cfg: DataConfig) -> DatasetPlan:
    """The dataset's split plan (labels and row selections, fractions applied), without decoding any image."""
    root = data_root(cfg.root)
    name = cfg.dataset
    if name == "cifar10-lt":
        from twohead.data.cifar import plan_cifar

        plan = plan_cifar(cfg, root, 10)
    elif name == "cifar100-lt":
        from twohead.data.cifar import plan_cifar

        plan = plan_cifar(cfg, root, 100)
    elif name == "tiny-imagenet-lt":
        from twohead.data.tiny_imagenet import plan_tiny_imagenet

        plan = plan_tiny_imagenet(cfg, root)
    elif name == "imagenet-lt":
        from twohead.data.imagenet_lt import plan_imagenet_lt

        plan = plan_imagenet_lt(cfg, root)
    elif name == "parquet":
        from twohead.data.files import plan_parquet

        plan = plan_parquet(cfg, root)
    elif name == "folder":
        from twohead.data.files import plan_folder

        plan = plan_folder(cfg, root)
    else:
        raise DataError(
            f"data.dataset={name!r} has no split plan; allowed: {', '.join(d for d in DATASETS if d != 'imagenet-lt-standin')}"
        )
    return plan.with_fractions(cfg.train_fraction, cfg.eval_fraction, cfg.lt_seed)


def build_data(cfg: DataConfig) -> LTData:
    """Build the dataset named by ``cfg.dataset`` (root: ``twohead.config.data_root(cfg.root)``).

    In-memory datasets (CIFAR, Tiny-ImageNet, Parquet, small image folders) come back decoded (uint8 NHWC,
    cached under ``$TWOHEAD_CACHE/decoded``); ImageNet-LT and large image folders come back file-backed.
    """
    if cfg.dataset == "imagenet-lt-standin":
        from twohead.data.standin import load_standin  # generated stand-in, owned by its own module

        return load_standin(cfg, data_root(cfg.root))
    return plan_data(cfg).materialize(skip_corrupt=cfg.skip_corrupt)


def describe_counts(cfg: DataConfig) -> dict:
    """Per-class counts of train / val / test as ``build_data`` would produce them, decoding no image
    (for CIFAR only the Parquet label column is read). Keys: dataset, num_classes, class_names, image_size,
    file_backed, train_counts, train_total, imbalance, val_counts, val_total, test_counts, test_total, notes."""
    if cfg.dataset == "imagenet-lt-standin":
        from twohead.data.standin import plan_standin  # generates the stand-in once (cached), then plans

        plan = plan_standin(cfg, data_root(cfg.root))
        return plan.with_fractions(cfg.train_fraction, cfg.eval_fraction, cfg.lt_seed).counts()
    return plan_data(cfg).counts()
