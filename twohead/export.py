"""Export a trained model as a plain C-way classifier: TorchScript or ONNX, probabilities out.

The exported graph is the whole test-time path after resizing, with no Python left in it: pixels -> float,
normalised with the run's mean / std -> backbone -> heads -> the K-to-C reading (the cluster-to-class map is a
constant of the graph; :mod:`twohead.readings`) -> class probabilities ``[N, C]``. The batch size is dynamic;
the side is the model's (resize and centre-crop outside, as :func:`twohead.data.loader.test_transform` does).

Inputs (``input=``): ``uint8`` -- ``[N, S, S, 3]`` uint8 as decoded (NHWC, RGB), the default; ``float`` --
``[N, 3, S, S]`` float32 in [0, 1] (NCHW, torchvision's ``to_tensor`` / ``ToDtype(scale=True)`` convention).

* TorchScript (``torch.jit.trace``): ``torch.jit.load(path)`` in Python or libtorch, no twohead needed.
* ONNX: torch's ``torch.export``-based exporter (``dynamo=True``, the default since torch 2.9; it needs the
  ``onnxscript`` package), one self-contained file, runs in onnxruntime.

Class names, image size, input layout, mean / std and the reading travel inside the file: ONNX
``metadata_props`` and the TorchScript extra file ``twohead.json`` (both the same JSON fields, see
:func:`export_metadata`). Every export is checked before it is kept: the written file is loaded back and run on a
batch of another size, and must give the model's probabilities (``check=True``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from . import atomic

log = logging.getLogger("twohead")

__all__ = [
    "Exportable",
    "export",
    "export_metadata",
    "read_metadata",
    "input_layout",
    "ExportError",
    "ProbabilityModel",
    "FORMATS",
    "INPUTS",
    "SUFFIXES",
]

FORMATS = ("torchscript", "onnx")
INPUTS = ("uint8", "float")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
CHECK_TOLERANCE = 1e-4  # max |p_export - p_model| accepted by the check (float32 reassociation is ~1e-6)


class Exportable(Protocol):
    """What an export reads of a trained model. :class:`twohead.inference.Classifier` is one; this module depends
    on these fields only, never on the inference module (which calls :func:`export` from ``Classifier.export``)."""

    model: nn.Module  # the TwoHeadModel (backbone, heads, K-to-C readings)
    config: Any  # its TrainConfig: method and backbone go into the metadata
    class_names: list[str]
    num_classes: int
    clusters_per_class: list[int]  # u_c of Eq. 3, the cluster-to-class map
    image_size: int  # the side the model was trained at
    file_backed: bool  # decoded from files at full size (ImageNet-LT / Places-LT): resize / 0.875 before the crop
    mean: Sequence[float]
    std: Sequence[float]
    reading: str  # the K-to-C reading the exported graph applies


class ExportError(RuntimeError):
    """An export could not be written or does not reproduce the model."""


class ProbabilityModel(nn.Module):
    """pixels -> class probabilities ``[N, C]`` of a :class:`~twohead.model.TwoHeadModel` under one reading."""

    def __init__(self, model: nn.Module, mean, std, reading: str, input: str = "uint8"):
        super().__init__()
        self.model = model
        self.reading = reading
        self.uint8 = input == "uint8"
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:  # fixed at construction, so a traced / exported graph holds one of the two paths
            x = x.permute(0, 3, 1, 2).float().div(255.0)
        out, _ = self.model.outputs((x - self.mean) / self.std)  # twohead.augment.normalize's arithmetic
        return self.model.probs(out, self.reading)


def input_layout(input: str, size: int) -> str:
    """The exported graph's input, in words."""
    return f"uint8 [N, {size}, {size}, 3] (NHWC, RGB)" if input == "uint8" else f"float32 [N, 3, {size}, {size}] in [0, 1] (NCHW)"


def export_metadata(classifier: Exportable, input: str) -> dict[str, str]:
    """What a user of the exported file needs, as string fields (ONNX ``metadata_props`` holds strings)."""
    s, cfg = classifier.image_size, classifier.config
    return {
        "producer": "twohead",
        "class_names": json.dumps(classifier.class_names),
        "image_size": str(s),
        "input": input_layout(input, s),
        "output": f"float32 [N, {classifier.num_classes}] class probabilities",
        "resize": "shorter side to image_size / 0.875, then centre crop"
        if classifier.file_backed
        else "shorter side to image_size, then centre crop",
        "mean": json.dumps(list(classifier.mean)),
        "std": json.dumps(list(classifier.std)),
        "reading": classifier.reading,
        "method": cfg.method.name,
        "backbone": cfg.model.backbone,
        "clusters_per_class": json.dumps(classifier.clusters_per_class),
    }


def _example(classifier: Exportable, input: str, n: int, seed: int) -> torch.Tensor:
    s = classifier.image_size
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, s, s, 3), generator=g, dtype=torch.uint8)
    return pixels if input == "uint8" else pixels.permute(0, 3, 1, 2).float().div(255.0)


def export(
    classifier: Exportable,
    path: str | os.PathLike,
    format: str = "torchscript",
    *,
    input: str = "uint8",
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Write ``classifier`` to ``path`` as a TorchScript or ONNX C-way classifier (see the module docstring).

    The file appears only once complete and checked; an existing file is kept unless ``overwrite``."""
    if format not in FORMATS:
        raise ExportError(f"format={format!r} must be one of {', '.join(FORMATS)}")
    if input not in INPUTS:
        raise ExportError(f"input={input!r} must be one of {', '.join(INPUTS)}")
    path = Path(path)
    if path.is_dir() or (path.exists() and not overwrite):
        raise ExportError(f"{path} exists; choose another output file (or replace it: --force, overwrite=True)")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ExportError(f"cannot write {path}: {blocker} is a file, not a folder")
    model = copy.deepcopy(classifier.model).float().cpu().eval()
    module = ProbabilityModel(
        model.to(memory_format=torch.contiguous_format), classifier.mean, classifier.std, classifier.reading, input
    )
    module.eval()
    meta = export_metadata(classifier, input)
    example = _example(classifier, input, 2, seed=0)
    try:
        with atomic.atomic_path(path) as tmp:
            if format == "torchscript":
                _torchscript(module, example, tmp, meta)
            else:
                _onnx(module, example, tmp, meta)
            if check:
                _check(tmp, format, module, _example(classifier, input, 3, seed=1))
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in favour of torch.export, but TorchScript is still what libtorch (C++) and
        # TorchServe load; the traced graph is checked below like the ONNX one.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"twohead.json": json.dumps(meta)})


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    try:
        import onnxscript  # noqa: F401 - torch's exporter imports it; say what to install before it fails
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["probs"],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    program.model.metadata_props.update(meta)
    program.save(str(path), external_data=False)


def _run(path: Path, format: str, x: torch.Tensor) -> np.ndarray:
    if format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, see _torchscript
            return torch.jit.load(str(path)).eval()(x).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _check(path: Path, format: str, module: nn.Module, x: torch.Tensor) -> None:
    if format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            log.warning("onnxruntime is not installed: %s was not run back to check it", path)
            return
    with torch.no_grad():
        want = module(x).numpy()
    try:
        got = _run(path, format, x)
    except Exception as e:  # noqa: BLE001 - any failure to run the file back means the export is unusable
        raise ExportError(
            f"the exported {format} file does not run on a batch of {len(x)}: {str(e).splitlines()[0][:200]}"
        ) from None
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not err <= CHECK_TOLERANCE:
        raise ExportError(
            f"the exported {format} graph disagrees with the model (output {got.shape} vs {want.shape}, max |dp| = {err:.3g})"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The twohead metadata of an exported file (ONNX or TorchScript)."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx

        return {e.key: e.value for e in onnx.load(str(p), load_external_data=False).metadata_props}
    files = {"twohead.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(p), _extra_files=files)
    return json.loads(files["twohead.json"])
