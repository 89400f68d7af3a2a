"""Use a trained model: ``twohead.load(run_or_checkpoint)`` -> :class:`Classifier`.

    >>> clf = twohead.load("runs/cifar10-lt-imb100-resnet32-twohead-s0")
    >>> pred = clf.predict("photos/")           # a folder, image files, PIL images or uint8 H x W x 3 arrays
    >>> pred.names[:3], pred.probs.shape         # predicted class names, [N, C] class probabilities
    >>> clf.eval_split("test")                   # the evaluation report `twohead eval` prints

A checkpoint carries everything inference needs (:func:`twohead.loop.fit` writes it): the config, the class names
and training counts (the K-to-C map follows from them and ``method.u`` by Eq. 3, and is checked against the
stored ``clusters_per_class``), mean / std and the training resolution. ``predict`` brings each image to that
resolution the way the run's own test images were (:func:`twohead.data.loader.test_transform`: a 32 px CIFAR
image keeps its pixels), normalises it, and reads the K-way head with the model's K-to-C reading
(``model.inference``, or ``reading=``) under the autocast evaluation uses, so ``predict`` on a run's test images
gives exactly the predictions behind its evaluation report.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import normalize
from .config import ALIASES, SECTIONS, ConfigError, TrainConfig, apply_overrides
from .data.inputs import read_images
from .data.types import DataError
from .division import DivisionPlan
from .runs import CheckpointError, load_checkpoint

__all__ = ["load", "Classifier", "Prediction", "INFERENCE_KEYS", "MODEL_KEYS"]

# What a checkpoint holds beyond model / config / class_counts so that inference needs no dataset.
INFERENCE_KEYS = ("class_names", "mean", "std", "image_size")
# Config keys that decide the weights' shapes or the K-to-C map: an evaluation of a trained model cannot change them.
MODEL_KEYS = ("method.name", "method.u", "method.rounding", "model.backbone", "model.fbh_kernel", "model.feature_proj")


@dataclass(frozen=True)
class Prediction:
    """Predictions for N images, in input order (a folder's images sorted by path)."""

    classes: np.ndarray  # int64 [N]: predicted class ids
    probs: np.ndarray  # float32 [N, C]: class probabilities under the classifier's reading (rows sum to 1)
    names: list[str]  # [N]: predicted class names
    files: list[str | None]  # [N]: the file each image was read from (``x.npy[i]`` for arrays in files), else None
    class_names: list[str]  # [C]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def confidence(self) -> np.ndarray:
        """float32 [N]: the probability of each predicted class."""
        return self.probs[np.arange(len(self.classes)), self.classes]

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable classes of each image, most probable first: (ids int64 [N, k], probs [N, k]);
        column 0 is :attr:`classes`."""
        if not 1 <= k <= self.probs.shape[1]:
            raise ConfigError(f"top_k={k} must be between 1 and {self.probs.shape[1]} (the model's classes)")
        order = np.argsort(-self.probs, axis=1, kind="stable")
        # The prediction first even where two probabilities tie after exp() (classes is the log-probabilities' argmax).
        for i in np.flatnonzero(order[:, 0] != self.classes):
            order[i] = np.concatenate([[self.classes[i]], order[i][order[i] != self.classes[i]]])
        order = order[:, :k]
        return order, np.take_along_axis(self.probs, order, axis=1)


def _resolve_device(device: str | torch.device) -> torch.device:
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ConfigError(f"device={text!r} must be auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={text!r} but no CUDA device is available; use device=cpu or auto")
    return torch.device(text)


def load(path: str | os.PathLike, *, device: str | torch.device = "auto", reading: str | None = None) -> Classifier:
    """The trained model of a run folder (holding ``checkpoint.pt``) or of a checkpoint file, ready to predict.

    ``device``: auto (CUDA when available) | cpu | cuda | cuda:N. ``reading``: the K-to-C reading (max, sum, fuse,
    fbh; see :mod:`twohead.readings`), default the run's ``model.inference``. Raises :class:`CheckpointError`
    naming the file when it is missing, unreadable, of an older layout, or does not fit its own config.
    """
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoint.pt"
        if not ckpt.is_file():
            raise CheckpointError(f"run folder {p} holds no checkpoint.pt (has the run reached its first checkpoint?)")
    elif not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a run folder holding checkpoint.pt, or a checkpoint file")
    else:
        ckpt = p
    state = load_checkpoint(ckpt)
    epochs = (state.get("config") or {}).get("optim", {}).get("epochs")
    if epochs is not None and int(state.get("epoch", epochs)) < int(epochs):
        logging.getLogger("twohead").warning(
            "%s is from epoch %s of %s: the run has not finished; predictions come from a partly trained model",
            ckpt,
            state.get("epoch"),
            epochs,
        )
    return Classifier.from_state(state, ckpt, device=device, reading=reading)


class Classifier:
    """A trained two-head (or baseline) model with what it needs to classify raw images. Build with :func:`load`."""

    def __init__(
        self,
        model,
        config: TrainConfig,
        *,
        class_names: Sequence[str],
        class_counts: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        device: torch.device,
        path: Path | None = None,
        epoch: int | None = None,
    ):
        self.model = model
        self.config = config
        self.class_names = [str(n) for n in class_names]
        self.class_counts = [int(c) for c in class_counts]
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.image_size = int(image_size)
        self.device = device
        self.path = path
        self.epoch = epoch
        from .data.loader import file_backed, test_transform

        # How the run's own test images reached image_size: eval crop of file-backed data, else decode-time fit.
        self.file_backed = file_backed(config.data, self.image_size)
        self._transform = test_transform(config.data, self.image_size)

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], path: Path, *, device: str | torch.device = "auto", reading: str | None = None
    ) -> Classifier:
        """A classifier from a checkpoint dict (what :func:`twohead.runs.load_checkpoint` returns)."""
        from .model import create_model
        from .readings import readings_of

        missing = [k for k in INFERENCE_KEYS if k not in state]
        if missing:
            raise CheckpointError(
                f"{path} lacks {', '.join(missing)}: it was written before checkpoints carried what inference needs; "
                "retrain the run (under a new run.name) with this twohead to get a loadable checkpoint"
            )
        try:
            cfg = TrainConfig.from_dict(state["config"])
        except ConfigError as e:
            raise CheckpointError(f"{path} holds a config this twohead cannot use: {e}") from None
        counts, names = list(state["class_counts"]), list(state["class_names"])
        if len(names) != len(counts) or len(state["mean"]) != 3 or len(state["std"]) != 3 or int(state["image_size"]) < 1:
            raise CheckpointError(
                f"{path} is inconsistent: {len(names)} class names for {len(counts)} class counts, "
                f"{len(state['mean'])}/{len(state['std'])} mean/std channels, image_size {state['image_size']}"
            )
        dev = _resolve_device(device)
        # The division the run trained with (recorded: a labels file's may differ from Eq. 3 on the final counts).
        stored = state.get("clusters_per_class")
        if stored is not None and len(stored) != len(counts):
            raise CheckpointError(f"{path}: {len(stored)} clusters-per-class entries for {len(counts)} classes")
        plan = DivisionPlan(tuple(int(u) for u in stored)) if stored is not None and cfg.spec.cdh else None
        model = create_model(cfg, counts, int(state["image_size"]), plan)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            first = " ".join(str(e).split())[:200]
            raise CheckpointError(f"{path}: the weights do not fit the model its config describes ({first})") from None
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(dev).eval()
        reading = reading or cfg.model.inference
        allowed = readings_of(model.fbh is not None)
        if reading not in allowed:
            raise ConfigError(
                f"reading={reading!r} is not available for {path} (method.name={cfg.method.name}); allowed: {', '.join(allowed)}"
            )
        model.inference = reading
        return cls(
            model,
            cfg,
            class_names=names,
            class_counts=counts,
            mean=state["mean"],
            std=state["std"],
            image_size=int(state["image_size"]),
            device=dev,
            path=Path(path),
            epoch=state.get("epoch"),
        )

    # ---- description -----------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def reading(self) -> str:
        """The K-to-C reading behind :meth:`predict` (``max``, ``sum``, ``fuse`` or ``fbh``)."""
        return self.model.inference

    @property
    def clusters_per_class(self) -> list[int]:
        """u_c of every class (Eq. 3): the K-to-C map is class c <- its u_c consecutive clusters."""
        return list(self.model.plan.u_per_class)

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"Classifier({self.path}: {cfg.method.name} on {cfg.model.backbone}, {self.num_classes} classes, "
            f"K={self.model.plan.num_clusters}, {self.image_size}px, reading={self.reading}, device={self.device})"
        )

    # ---- images in ---------------------------------------------------------------------------------------------
    def _batches(self, images: Any, batch_size: int | None) -> Iterator[tuple[list[str | None], torch.Tensor]]:
        size = batch_size or (1024 if self.device.type == "cuda" else 128)  # evaluation's batch sizes
        if size < 1:
            raise ConfigError(f"batch_size={size} must be >= 1")
        files: list[str | None] = []
        pixels: list[torch.Tensor] = []
        for f, img in read_images(images):
            files.append(f)
            pixels.append(self._transform(img))
            if len(pixels) == size:
                yield files, torch.stack(pixels)
                files, pixels = [], []
        if pixels:
            yield files, torch.stack(pixels)

    # ---- the model -------------------------------------------------------------------------------------------
    def _outputs(self, batch: torch.Tensor):
        """Heads' outputs (float32) and pooled features of a uint8 [B, 3, S, S] batch, as evaluation computes them."""
        from .runtime import amp_dtype

        x = normalize(batch.to(self.device, non_blocking=True), self.mean, self.std, self.config.model.channels_last)
        amp = amp_dtype(self.config, self.device)
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out, pooled = self.model.outputs(x)
        out = out._replace(logits=out.logits.float(), fbh=None if out.fbh is None else out.fbh.float())
        return out, pooled.float()

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int | None = None) -> Prediction:
        """Classify images: a uint8 H x W x 3 array or an N x H x W x 3 batch, a PIL image, an image file, a ``.npy``
        array file, a folder (images found recursively, sorted by path) or a list of any of these.

        Images not at the model's resolution are resized and centre-cropped as the run's test images were."""
        files: list[str | None] = []
        classes, probs = [], []
        for batch_files, batch in self._batches(images, batch_size):
            out, _ = self._outputs(batch)
            log_probs = self.model.log_probs(out)
            classes.append(log_probs.argmax(dim=1).cpu())  # argmax of the log-probabilities, as evaluation takes it
            probs.append(log_probs.exp().cpu())
            files.extend(batch_files)
        if not files:
            raise DataError("no images to predict: the input is empty")
        ids = torch.cat(classes).numpy().astype(np.int64)
        return Prediction(
            classes=ids,
            probs=torch.cat(probs).numpy(),
            names=[self.class_names[c] for c in ids],
            files=files,
            class_names=list(self.class_names),
        )

    @torch.inference_mode()
    def features(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """float32 [N, D']: the pooled features both heads read (an embedding of what the network finds similar),
        for the same inputs as :meth:`predict`."""
        feats = [self._outputs(batch)[1].cpu() for _, batch in self._batches(images, batch_size)]
        if not feats:
            raise DataError("no images to embed: the input is empty")
        return torch.cat(feats).numpy()

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def eval_split(
        self,
        split: str = "test",
        data_root: str | os.PathLike | None = None,
        *,
        data=None,
        overrides: Sequence[str] | Mapping[str, Any] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        """Build the run's dataset and evaluate ``split`` (test | val): the report of
        :func:`twohead.evaluation.evaluate` (every reading, post-hoc scores, confusion), as ``twohead eval`` prints it.

        ``data_root`` points at the data (``data.root``); ``overrides`` (``["data.eval_fraction=0.2"]`` or a mapping)
        and keyword arguments (``eval_fraction=0.2``, a field name of one section) adjust how the data is read and
        which reading heads the report. ``data`` evaluates an :class:`~twohead.data.LTData` at hand instead. Keys
        that define the trained model (``MODEL_KEYS``, ``data.image_size``) cannot change, and data whose classes
        or training counts differ from the checkpoint's is refused: both raise naming the checkpoint.
        """
        from .evaluation import evaluate
        from .runtime import resolve_device

        if split not in ("test", "val"):
            raise ConfigError(f"split={split!r} must be test or val")
        cfg = self.config
        if overrides and not isinstance(overrides, Mapping):
            cfg = apply_overrides(cfg, list(overrides))
        pairs = dict(overrides) if isinstance(overrides, Mapping) else {}
        pairs.update({self._dotted(k): v for k, v in kw.items()})
        if data_root is not None:
            pairs["data.root"] = str(data_root)
        if pairs:
            cfg = apply_overrides(cfg, pairs)
        self._check_same_model(cfg)
        device = self.device if cfg.optim.device == self.config.optim.device else resolve_device(cfg)
        if data is None:
            from .data import build_data

            data = build_data(cfg.data)
        self._check_data(data)
        target = data.test if split == "test" else data.val
        if target is None:
            raise ConfigError(f"the dataset has no {split} split (data.val_per_class=0?)")
        model = self.model if device == self.device else copy.deepcopy(self.model).to(device)
        reading = cfg.model.inference if cfg.model.inference != self.config.model.inference else self.reading
        before, model.inference = model.inference, reading
        try:
            return evaluate(model, target, data, cfg, device)
        finally:
            model.inference = before

    def _dotted(self, key: str) -> str:
        """``eval_fraction`` -> ``data.eval_fraction``: a bare field name that exactly one section has."""
        if "." in key or key in ALIASES:
            return key
        fields = self.config.to_dict()
        owners = [s for s in SECTIONS if key in fields[s]]
        if len(owners) != 1:
            where = f"fields of {', '.join(owners)}" if owners else "no config field"
            raise ConfigError(f"override {key!r} names {where}; write it as section.key (e.g. data.eval_fraction)")
        return f"{owners[0]}.{key}"

    def _check_same_model(self, cfg: TrainConfig) -> None:
        old, new = self.config.to_dict(), cfg.to_dict()
        for key in MODEL_KEYS:
            section, name = key.split(".")
            if old[section][name] != new[section][name]:
                raise ConfigError(
                    f"{key}={new[section][name]} does not match the checkpoint {self.path}, trained with "
                    f"{key}={old[section][name]}; a trained model's architecture and K-to-C map are fixed"
                )
        if (cfg.data.image_size or self.image_size) != self.image_size:
            raise ConfigError(
                f"data.image_size={cfg.data.image_size} does not match the checkpoint {self.path}, trained at {self.image_size}px"
            )

    def _check_data(self, data) -> None:
        names = [str(n) for n in data.class_names]
        if len(names) != self.num_classes:
            raise DataError(
                f"the checkpoint {self.path} classifies {self.num_classes} classes but the data {data.name} has "
                f"{len(names)}; evaluate on the data the model was trained on"
            )
        for c, (a, b) in enumerate(zip(self.class_names, names)):
            if a != b:
                raise DataError(f"class {c} is {a!r} in the checkpoint {self.path} but {b!r} in the data {data.name}")
        counts = [int(n) for n in data.class_counts]
        for c, (a, b) in enumerate(zip(self.class_counts, counts)):
            if a != b:
                raise DataError(
                    f"the checkpoint {self.path} was trained on {a} images of class {c} ({names[c]}) but the data "
                    f"{data.name} has {b}: its many/medium/few groups and prior would not be the model's; keep the "
                    "training data settings (data.imbalance, data.train_fraction, data.lt_seed, data.val_per_class)"
                )

    # ---- export ----------------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike, format: str = "torchscript", **kw: Any) -> Path:
        """Write this classifier as a plain C-way model (see :func:`twohead.export.export`)."""
        from .export import export

        return export(self, path, format, **kw)
