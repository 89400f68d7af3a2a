"""twohead: two-head class balancing (Chen, Lu, Wang, Zheng) for long-tailed image classification.

    >>> import twohead
    >>> cfg = twohead.load_config(preset="smoke")
    >>> metrics = twohead.fit(cfg)            # the one training loop
    >>> twohead.clusters_per_class([5000, 500, 50], u=10)   # Eq. 3
    [10, 2, 1]
    >>> clf = twohead.load("runs/smoke")      # a trained run: predict images, re-evaluate, export
    >>> clf.predict("photos/").names

Heavy modules (torch models, data, the loop) are imported on first use; Ray is never imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ConfigError, TrainConfig, apply_overrides, load_config
from .division import DivisionPlan, assign_clusters, clusters_per_class, soft_label_matrix

__version__ = "0.1.0"

_LAZY = {
    "fit": "twohead.loop",
    "evaluate": "twohead.evaluation",
    "create_model": "twohead.model",
    "TwoHeadModel": "twohead.model",
    "create_backbone": "twohead.backbones",
    "build_criterion": "twohead.losses",
    "build_data": "twohead.data",
    "classification_report": "twohead.metrics",
    "load": "twohead.inference",
    "Classifier": "twohead.inference",
    "Prediction": "twohead.inference",
}

__all__ = [
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "DivisionPlan",
    "assign_clusters",
    "clusters_per_class",
    "soft_label_matrix",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'twohead' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover - the lazy names, for type checkers and IDEs
    from .backbones import create_backbone  # noqa: F401
    from .data import build_data  # noqa: F401
    from .evaluation import evaluate  # noqa: F401
    from .inference import Classifier, Prediction, load  # noqa: F401
    from .loop import fit  # noqa: F401
    from .losses import build_criterion  # noqa: F401
    from .metrics import classification_report  # noqa: F401
    from .model import TwoHeadModel, create_model  # noqa: F401
