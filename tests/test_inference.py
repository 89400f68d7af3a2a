"""twohead.load / predict / eval_split / export and `twohead predict|export|eval` on trained runs.

Two tiny runs are trained here on an image-folder dataset the tests write themselves (three colour classes,
long-tailed): 32 px images decoded into memory, and 72 px ones streamed from files (the ImageNet-style eval crop).
Expected predictions come from an independent forward pass: the checkpoint's weights in a fresh model,
normalisation in numpy, and the max reading spelled out as "the class of the best cluster".
The slow test does the same on the real smoke preset (CIFAR-10-LT from $TWOHEAD_DATA). One module past ~400 lines
because every test shares the two trained runs (module-scoped fixtures): split up, each part would train them again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import twohead
from twohead.cli import main
from twohead.config import ConfigError, TrainConfig, load_config
from twohead.data import DataError, build_data
from twohead.export import ExportError, read_metadata
from twohead.loop import fit
from twohead.model import create_model
from twohead.runs import CheckpointError

COLOURS = {"blue": (40, 40, 220), "green": (40, 220, 40), "red": (220, 40, 40)}  # sorted: class ids 0, 1, 2
TRAIN_COUNTS = {"blue": 40, "green": 14, "red": 6}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # folder datasets' normalisation
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # LDAM-DRW's, for CIFAR-10-LT


USER_CACHE = os.environ.get("TWOHEAD_CACHE")


@pytest.fixture(scope="module", autouse=True)
def no_decode_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWOHEAD_CACHE", "off")  # the tests' images are new each session: keep the decode cache clean
        yield


def write_folder(root: Path, shape: tuple[int, int], test_per_class: int = 6, classes=COLOURS, seed: int = 0) -> Path:
    """ImageFolder layout: root/train/<class>/*.png (long-tailed) and root/test/<class>/*.png (balanced)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name, colour in classes.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            n = TRAIN_COUNTS.get(name, 6) if split == "train" else test_per_class
            for i in range(n):
                img = np.asarray(colour, np.float32) + rng.normal(0, 50, (*shape, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


def train_run(root: Path, out: Path, name: str, **over) -> Path:
    base = {
        "data.dataset": "folder",
        "data.path": str(root),
        "data.val_per_class": 2,
        "data.num_workers": 0,
        "model.backbone": "resnet8",
        "method.u": 3,
        "optim.epochs": 2,
        "optim.batch_size": 16,
        "optim.warmup_epochs": 0,
        "optim.milestones": [1],
        "optim.lr": 0.05,
        "run.out": str(out),
        "run.name": name,
        "run.progress": False,
        "run.plots": False,
    }
    fit(load_config(overrides=base | over))
    return out / name


@pytest.fixture(scope="module")
def run32(tmp_path_factory) -> Path:
    """A finished run on 32 px images (in-memory data, like CIFAR)."""
    base = tmp_path_factory.mktemp("inference32")
    return train_run(write_folder(base / "data", (32, 32)), base / "runs", "tiny32")


@pytest.fixture(scope="module")
def run72(tmp_path_factory) -> Path:
    """A finished run at 72 px on 80 x 96 images: above 64 px a folder dataset is streamed from files."""
    base = tmp_path_factory.mktemp("inference72")
    return train_run(
        write_folder(base / "data", (80, 96)),
        base / "runs",
        "tiny72",
        **{"data.image_size": 72, "optim.epochs": 1, "optim.milestones": []},
    )


def split_of(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The run's test split as the data pipeline builds it: pixels (in-memory runs), labels and files."""
    clf = twohead.load(run)
    files = sorted(str(p) for p in (Path(clf.config.data.path) / "test").rglob("*.png"))
    data = build_data(clf.config.data)
    return data.test.images, data.test.labels, files


def independent(run: Path, images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[np.ndarray, np.ndarray]:
    """(classes, probs) of the max reading from the checkpoint's weights, without twohead's inference code:
    the class of the best cluster, and a softmax over each class's best cluster logit."""
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = create_model(TrainConfig.from_dict(state["config"]), state["class_counts"], state["image_size"])
    model.load_state_dict(state["model"])
    model.eval()
    x = (images.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)).logits.double().numpy()
    owner = np.repeat(np.arange(len(state["clusters_per_class"])), state["clusters_per_class"])  # cluster -> class
    scores = np.stack([logits[:, owner == c].max(axis=1) for c in range(owner.max() + 1)], axis=1)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    return owner[logits.argmax(axis=1)], probs / probs.sum(axis=1, keepdims=True)


def confusion(pred: np.ndarray, labels: np.ndarray, c: int) -> list[list[int]]:
    return np.bincount(labels * c + pred, minlength=c * c).reshape(c, c).tolist()


# ---- load ----------------------------------------------------------------------------------------------------
def test_load_reads_what_the_checkpoint_carries(run32):
    clf = twohead.load(run32)
    assert clf.class_names == ["blue", "green", "red"] and clf.num_classes == 3
    assert clf.image_size == 32 and clf.reading == "max" and clf.device == torch.device("cpu")
    assert clf.mean == IMAGENET_MEAN and clf.std == IMAGENET_STD
    # The training counts after the 2-per-class validation carve, and Eq. 3 with u = 3 on them:
    # u_c = 1 + ceil((n_c - 4) / (38 - 4) * 2) -> 1 + ceil(2) = 3, 1 + ceil(0.47) = 2, 1 + ceil(0) = 1.
    assert clf.class_counts == [38, 12, 4] and clf.clusters_per_class == [3, 2, 1]
    assert twohead.load(run32 / "checkpoint.pt").class_names == clf.class_names  # the file itself works too
    assert twohead.load(run32, reading="sum").reading == "sum"


def test_predict_is_the_evaluation_reports_prediction_and_the_models_own(run32):
    clf = twohead.load(run32)
    images, labels, _ = split_of(run32)
    pred = clf.predict(images)
    report = clf.eval_split("test")
    assert report["num_samples"] == len(labels) == len(pred) == 18
    assert report["top1"] == pytest.approx(float((pred.classes == labels).mean() * 100))
    assert report["confusion"] == confusion(pred.classes, labels, 3)
    want_classes, want_probs = independent(run32, images)
    assert set(want_classes.tolist()) == {0, 1, 2}  # a model that tells the classes apart, so the check means something
    np.testing.assert_array_equal(pred.classes, want_classes)
    np.testing.assert_allclose(pred.probs, want_probs, atol=1e-5)
    assert pred.names == [clf.class_names[c] for c in want_classes]
    np.testing.assert_allclose(pred.confidence, want_probs.max(axis=1), atol=1e-5)
    assert pred.files == [None] * 18


def test_a_folder_files_pil_images_and_npy_give_the_arrays_prediction(run32, tmp_path):
    clf = twohead.load(run32)
    images, _, files = split_of(run32)
    want = clf.predict(images)
    folder = clf.predict(Path(clf.config.data.path) / "test")
    assert folder.files == files  # recursive, sorted: the same order as the dataset's test split
    by_path = clf.predict(files)
    pil = clf.predict([Image.open(f) for f in files])
    np.save(tmp_path / "batch.npy", images)
    npy = clf.predict(tmp_path / "batch.npy")
    one_by_one = clf.predict([images[i] for i in range(len(images))], batch_size=5)
    for got in (folder, by_path, pil, npy, one_by_one):
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    assert npy.files[3] == f"{tmp_path / 'batch.npy'}[3]"
    single = clf.predict(images[4])  # one H x W x 3 image
    assert single.classes.tolist() == [want.classes[4]] and single.probs.shape == (1, 3)


def test_other_sizes_are_centre_cropped_and_resized_as_the_data_was(run32):
    clf = twohead.load(run32)
    images, _, _ = split_of(run32)
    # 48 x 32: the shorter side is already 32, so only the centre crop acts: rows 8..39.
    tall = np.concatenate([np.zeros((8, 32, 3), np.uint8), images[0], np.full((8, 32, 3), 255, np.uint8)])
    np.testing.assert_allclose(clf.predict(tall).probs, clf.predict(images[0]).probs, atol=1e-6)
    # A flat colour stays that colour whatever the resize: 100 x 80 -> 32 x 32.
    flat = np.empty((100, 80, 3), np.uint8)
    flat[:] = (200, 30, 90)
    np.testing.assert_allclose(clf.predict(flat).probs, clf.predict(flat[:32, :32]).probs, atol=1e-6)


def test_file_backed_run_predicts_with_the_eval_crop_of_its_test_files(run72):
    clf = twohead.load(run72)
    assert clf.file_backed and clf.image_size == 72
    _, labels, files = split_of(run72)
    pred = clf.predict(files)
    assert clf.eval_split("test")["confusion"] == confusion(pred.classes, labels, 3)
    # An image of side round(72 / 0.875) = 82 is not resized, only centre-cropped to rows/columns 5..76.
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (82, 82, 3), dtype=np.uint8)
    want_classes, want_probs = independent(run72, big[None, 5:77, 5:77])
    got = clf.predict(big)
    assert got.classes.tolist() == want_classes.tolist()
    np.testing.assert_allclose(got.probs, want_probs, atol=1e-5)


def test_eval_split_takes_data_overrides_and_refuses_model_changes(run32, tmp_path):
    clf = twohead.load(run32)
    assert clf.eval_split("val")["num_samples"] == 6  # 2 per class carved from train
    sub = clf.eval_split("test", eval_fraction=0.5)
    assert sub["num_samples"] == 9 and sub == clf.eval_split("test", overrides=["data.eval_fraction=0.5"])
    assert clf.eval_split("test", **{"model.inference": "sum"})["reading"] == "sum"
    with pytest.raises(
        ConfigError, match=r"method\.u=5 does not match the checkpoint .*checkpoint\.pt, trained with method\.u=3"
    ):
        clf.eval_split(overrides=["method.u=5"])
    with pytest.raises(ConfigError, match="data.image_size=64 does not match the checkpoint .* trained at 32px"):
        clf.eval_split(image_size=64)
    with pytest.raises(ConfigError, match="override 'name' names fields of method, run; write it as section.key"):
        clf.eval_split(name="x")
    four = write_folder(tmp_path / "four", (32, 32), classes=COLOURS | {"white": (230, 230, 230)})
    with pytest.raises(DataError, match=r"classifies 3 classes but the data folder:four has 4"):
        clf.eval_split(data_root=None, path=str(four))
    with pytest.raises(DataError, match=r"trained on 38 images of class 0 \(blue\) but the data folder:data has 39"):
        clf.eval_split(val_per_class=1)


# ---- export ----------------------------------------------------------------------------------------------------
def run_export(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_is_a_plain_classifier_with_the_loaded_models_predictions(run32, tmp_path, fmt):
    clf = twohead.load(run32)
    images, _, _ = split_of(run32)
    want = clf.predict(images)
    out = clf.export(tmp_path / f"model.{fmt}", fmt)
    for batch in (images, images[:1]):  # the batch size is dynamic
        probs = run_export(out, fmt, np.ascontiguousarray(batch))
        assert probs.shape == (len(batch), 3)
        np.testing.assert_array_equal(probs.argmax(axis=1), want.classes[: len(batch)])
        np.testing.assert_allclose(probs, want.probs[: len(batch)], atol=1e-4)
    meta = read_metadata(out)
    assert json.loads(meta["class_names"]) == ["blue", "green", "red"] and meta["image_size"] == "32"
    assert meta["reading"] == "max" and json.loads(meta["clusters_per_class"]) == [3, 2, 1]
    with pytest.raises(ExportError, match=r"model\.\w+ exists; choose another output file"):
        clf.export(out, fmt)


def test_export_of_float_input_and_another_reading(run32, tmp_path):
    clf = twohead.load(run32, reading="fuse")
    images, _, _ = split_of(run32)
    want = clf.predict(images)
    out = clf.export(tmp_path / "fuse.pt", "torchscript", input="float")
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    probs = run_export(out, "torchscript", x)
    np.testing.assert_array_equal(probs.argmax(axis=1), want.classes)
    np.testing.assert_allclose(probs, want.probs, atol=1e-4)
    assert read_metadata(out)["input"] == "float32 [N, 3, 32, 32] in [0, 1] (NCHW)"


# ---- the command line ----------------------------------------------------------------------------------------------
def test_cli_predict_prints_what_predict_returns(run32, capsys):
    clf = twohead.load(run32)
    folder = Path(clf.config.data.path) / "test"
    want = clf.predict(folder)
    assert main(["predict", str(run32), str(folder)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == want.files and [r[1] for r in rows] == want.names
    np.testing.assert_allclose([float(r[2]) for r in rows], want.confidence, atol=5e-5)
    assert main(["predict", str(run32), want.files[0], want.files[7], "--json", "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["file"] for x in lines] == [want.files[0], want.files[7]]
    for x, i in zip(lines, (0, 7)):
        assert (x["class"], x["name"]) == (int(want.classes[i]), want.names[i])
        assert x["prob"] == pytest.approx(float(want.confidence[i]), abs=1e-6)
        top = sorted(range(3), key=lambda c: -want.probs[i, c])[:2]
        assert [t["class"] for t in x["top_k"]] == top
        assert [t["prob"] for t in x["top_k"]] == pytest.approx(want.probs[i, top].tolist(), abs=1e-6)


def test_cli_eval_prints_eval_split(run32, capsys):
    assert main(["eval", str(run32), "--set", "data.eval_fraction=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = twohead.load(run32).eval_split(eval_fraction=0.5)
    assert printed["top1"] == want["top1"] and printed["per_class_recall"] == want["per_class_recall"]
    assert "confusion" not in printed


def test_cli_export_writes_a_checked_model_and_keeps_an_existing_file(run32, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(run32), "--format", "onnx", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "file": str(out),
        "format": "onnx",
        "input": "uint8 [N, 32, 32, 3] (NHWC, RGB)",
        "output": "probabilities [N, 3]",
    }
    before = out.read_bytes()
    assert main(["export", str(run32), "--format", "onnx", "--out", str(out)]) == 2
    assert f"twohead: error: {out} exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for r in roots for p in sorted(r.rglob("*"))}


def bad_inputs(run: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, what the one-line error must say)."""
    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    image = next((Path(twohead.load(run).config.data.path) / "test").rglob("*.png"))
    (tmp / "empty_run").mkdir()
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({k: state[k] for k in ("model", "config", "class_counts", "epoch")}, tmp / "old.pt")
    (tmp / "no_images").mkdir()
    (tmp / "no_images" / "notes.txt").write_text("no images here")
    np.save(tmp / "rgba.npy", np.zeros((2, 32, 32, 4), np.uint8))
    np.save(tmp / "float.npy", np.zeros((2, 32, 32, 3), np.float32))
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp / "a_file").write_text("x")
    four = write_folder(tmp / "four", (32, 32), test_per_class=1, classes=COLOURS | {"white": (230, 230, 230)})
    r, t = str(run), str(tmp)
    return {
        "missing run": (["predict", f"{t}/nope", str(image)], f"{t}/nope does not exist; pass a run folder"),
        "run without checkpoint": (["predict", f"{t}/empty_run", str(image)], "empty_run holds no checkpoint.pt"),
        "corrupt checkpoint": (["predict", f"{t}/garbage.pt", str(image)], "garbage.pt is not a readable checkpoint"),
        "truncated checkpoint": (["eval", f"{t}/truncated.pt"], "truncated.pt is not a readable checkpoint"),
        "older checkpoint": (["predict", f"{t}/old.pt", str(image)], "old.pt lacks class_names, mean, std, image_size"),
        "folder without images": (["predict", r, f"{t}/no_images"], f"no images under {t}/no_images"),
        "missing image": (["predict", r, f"{t}/nope.png"], f"image path {t}/nope.png does not exist"),
        "undecodable image": (["predict", r, f"{t}/broken.png"], f"cannot decode the image file {t}/broken.png"),
        "wrong channel count": (["predict", r, f"{t}/rgba.npy"], "rgba.npy has shape (2, 32, 32, 4); expected uint8 RGB"),
        "float pixels": (["predict", r, f"{t}/float.npy"], "float.npy has dtype float32; expected uint8"),
        "top-k too large": (["predict", r, str(image), "--top-k", "4"], "--top-k 4 must be between 1 and 3"),
        "bad device": (["predict", r, str(image), "--device", "cuda:x"], "device='cuda:x' must be auto, cpu, cuda or cuda:N"),
        "eval with another u": (["eval", r, "--set", "method.u=5"], "method.u=5 does not match the checkpoint"),
        "eval with another backbone": (["eval", r, "--set", "model.backbone=resnet20"], "trained with model.backbone=resnet8"),
        "eval on data with other classes": (
            ["eval", r, "--set", f"data.path={four}"],
            f"the checkpoint {r}/checkpoint.pt classifies 3 classes but the data folder:four has 4",
        ),
        "eval on other training counts": (
            ["eval", r, "--set", "data.val_per_class=0"],
            "was trained on 38 images of class 0 (blue) but the data folder:data has 40",
        ),
        "export over a file": (["export", r, "--out", f"{t}/a_file/m.pt"], f"cannot write {t}/a_file/m.pt: {t}/a_file is a file"),
        "export onto a file": (["export", r, "--format", "onnx", "--out", f"{t}/a_file"], f"{t}/a_file exists"),
    }


def test_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(run32, tmp_path, capsys):
    cases = bad_inputs(run32, tmp_path)
    before = snapshot(run32, tmp_path)
    for name, (argv, message) in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("twohead: error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
    assert snapshot(run32, tmp_path) == before


def test_bad_python_input_names_the_problem(run32):
    clf = twohead.load(run32)
    with pytest.raises(DataError, match=r"the input has shape \(32, 32\); expected uint8 RGB pixels shaped H x W x 3"):
        clf.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"item 1 of the input has shape \(32, 32, 4\)"):
        clf.predict([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 4), np.uint8)])
    with pytest.raises(DataError, match="cannot read the input \\(int\\) as images"):
        clf.predict(7)
    with pytest.raises(DataError, match="no images to predict: the input is empty"):
        clf.predict([])
    with pytest.raises(ConfigError, match=r"reading='fbh' is not available for .* \(method.name=ce\); allowed: max, sum"):
        twohead.load(
            train_run(
                Path(clf.config.data.path), run32.parent, "ce", **{"method.name": "ce", "optim.epochs": 1, "optim.milestones": []}
            ),
            reading="fbh",
        )
    with pytest.raises(CheckpointError, match="does not exist; pass a run folder holding checkpoint.pt"):
        twohead.load(run32 / "nope")


# ---- the smoke preset on real CIFAR-10 ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_run_predicts_its_test_split_and_exports_the_same_classifier(tmp_path, data_root, monkeypatch):
    if USER_CACHE is None:  # CIFAR's decoded arrays are worth caching (other tests decode the same rows)
        monkeypatch.delenv("TWOHEAD_CACHE")
    else:
        monkeypatch.setenv("TWOHEAD_CACHE", USER_CACHE)
    out = tmp_path / "runs"
    overrides = ["optim.epochs=2", "optim.milestones=[]", "data.train_fraction=0.25", "data.eval_fraction=0.1"]
    overrides += ["run.plots=false", "run.name=smoke"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "twohead.cli",
            "train",
            "--preset",
            "smoke",
            "--out",
            str(out),
            *(a for o in overrides for a in ("--set", o)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run = out / "smoke"
    metrics = json.loads((run / "metrics.json").read_text())
    clf = twohead.load(run)
    assert clf.class_names[:3] == ["airplane", "automobile", "bird"] and clf.image_size == 32
    data = build_data(clf.config.data)
    images, labels = data.test.images, data.test.labels
    pred = clf.predict(images)
    assert len(pred) == metrics["num_samples"] == len(labels)
    assert metrics["top1"] == pytest.approx(float((pred.classes == labels).mean() * 100))
    assert metrics["confusion"] == confusion(pred.classes, labels, 10)
    want_classes, want_probs = independent(run, images, CIFAR_MEAN, CIFAR_STD)
    assert len(set(want_classes.tolist())) > 2  # the model tells classes apart, so agreeing on them means something
    np.testing.assert_array_equal(pred.classes, want_classes)
    np.testing.assert_allclose(pred.probs, want_probs, atol=1e-5)
    # `twohead predict` on a few of those images, written as PNG files
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(images[i]).save(folder / f"{i:02d}.png")
    r = subprocess.run(
        [sys.executable, "-m", "twohead.cli", "predict", str(run), str(folder)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert [line.split("\t")[1] for line in r.stdout.splitlines()] == pred.names[:12]
    for fmt in ("torchscript", "onnx"):
        probs = run_export(clf.export(tmp_path / f"smoke.{fmt}", fmt), fmt, images)
        np.testing.assert_array_equal(probs.argmax(axis=1), pred.classes)
        np.testing.assert_allclose(probs, pred.probs, atol=1e-4)
