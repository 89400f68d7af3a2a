"""twohead.data: LDAM-DRW's exact LT subsets, the validation reserve, fractions, readers and bad-input errors.

Real CIFAR-10 is decoded once per machine (the decode cache makes later runs instant); everything else runs
on small synthetic Parquet files / folders written to tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from twohead.config import DataConfig
from twohead.data import (
    DataError,
    LTData,
    Split,
    build_data,
    carve_val,
    describe_counts,
    ldam_counts,
    ldam_lt_split,
    plan_data,
    stratified_subsample,
)


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------
def ldam_reference_counts(img_max: float, cls_num: int, imb_factor: float) -> list[int]:
    """LDAM-DRW imbalance_cifar.get_img_num_per_cls, 'exp' branch, written as in their code."""
    img_num_per_cls = []
    for cls_idx in range(cls_num):
        num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        img_num_per_cls.append(int(num))
    return img_num_per_cls


def ldam_reference_selection(targets: np.ndarray, img_num_per_cls: list[int], seed: int = 0) -> list[np.ndarray]:
    """LDAM-DRW gen_imbalanced_data with the *global* numpy RNG, as they call it (state restored after)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        out = []
        for the_class, the_img_num in zip(np.unique(targets), img_num_per_cls):
            idx = np.where(targets == the_class)[0]
            np.random.shuffle(idx)
            out.append(idx[:the_img_num])
        return out
    finally:
        np.random.set_state(state)


def webp_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def write_parquet(path: Path, images: list[bytes], labels, index=None, class_names=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {"image": pa.array(images, type=pa.binary()), "label": pa.array(labels)}
    if index is not None:
        cols["index"] = pa.array(np.asarray(index, dtype=np.int32))
    table = pa.table(cols)
    if class_names is not None:
        table = table.replace_schema_metadata({"class_names": json.dumps(class_names)})
    pq.write_table(table, path)
    return path


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TWOHEAD_CACHE", str(d))
    return d / "decoded"


# ------------------------------------------------------------------------------------------------
# LDAM counts and selection
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("imb", [10, 50, 100])
@pytest.mark.parametrize("C", [10, 100])
def test_ldam_counts_match_ldam_formula(C, imb):
    ours = ldam_counts(50000 / C, C, imb)
    assert ours == ldam_reference_counts(50000 / C, C, {10: 0.1, 50: 0.02, 100: 0.01}[imb])
    assert ours[0] == 50000 // C and ours == sorted(ours, reverse=True)


def test_ldam_totals_from_the_issue():
    assert sum(ldam_counts(5000.0, 10, 100)) == 12406
    assert sum(ldam_counts(500.0, 100, 100)) == 10847


def test_cifar100_lt_counts_on_synthetic_labels():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(100), 500))
    sel = ldam_lt_split(labels, 100, 100, seed=0)
    assert sel.counts == ldam_reference_counts(500.0, 100, 0.01)
    assert len(sel.train) == 10847
    ref = ldam_reference_selection(labels, sel.target)
    np.testing.assert_array_equal(sel.train, np.concatenate(ref))


def test_cifar10_lt_subset_is_ldam_exactly(data_root):
    # Labels read straight from the Parquet file, in official order (the index column).
    t = pq.read_table(data_root / "cifar10" / "train.parquet", columns=["label", "index"])
    targets = np.empty(len(t), dtype=np.int64)
    targets[t.column("index").to_numpy()] = t.column("label").to_numpy()
    counts = ldam_reference_counts(len(targets) / 10, 10, 0.01)
    ref = np.concatenate(ldam_reference_selection(targets, counts))

    plan = plan_data(DataConfig(root=str(data_root), imbalance=100, val_per_class=0))
    np.testing.assert_array_equal(plan.train.ids, ref)
    np.testing.assert_array_equal(plan.train.labels, targets[ref])
    assert plan.val is None

    desc = describe_counts(DataConfig(root=str(data_root), imbalance=100, val_per_class=0))
    assert desc["train_counts"] == counts and desc["train_total"] == 12406
    assert desc["test_counts"] == [1000] * 10 and desc["notes"] == []


def test_validation_reserve_is_balanced_disjoint_and_keeps_ldam_tail(data_root):
    plan = plan_data(DataConfig(root=str(data_root), imbalance=100, val_per_class=20))
    ref = plan_data(DataConfig(root=str(data_root), imbalance=100, val_per_class=0))
    assert np.bincount(plan.val.labels, minlength=10).tolist() == [20] * 10
    assert not set(plan.val.ids.tolist()) & set(plan.train.ids.tolist())
    # Val and train come from the train file, test from the test file.
    assert plan.val.source is plan.train.source and plan.test.source is not plan.train.source
    assert plan.val.source.files[0].name == "train.parquet" and plan.test.source.files[0].name == "test.parquet"
    # Only the head class loses its last 20 LDAM picks; classes 1..9 are LDAM's exactly.
    assert len(plan.train) == 12386
    head = ref.train.ids[ref.train.labels == 0]
    np.testing.assert_array_equal(plan.train.ids[plan.train.labels == 0], head[:4980])
    np.testing.assert_array_equal(plan.train.ids[plan.train.labels > 0], ref.train.ids[ref.train.labels > 0])
    assert any("capped at 4980" in n for n in describe_counts(DataConfig(root=str(data_root)))["notes"])


@pytest.fixture(scope="module")
def cifar10(data_root) -> LTData:
    return build_data(DataConfig(root=str(data_root), imbalance=100, val_per_class=20))


def test_cifar10_real_images_decode(cifar10, data_root):
    d = cifar10
    assert d.name == "cifar10-lt" and d.num_classes == 10 and d.image_size == 32
    assert d.class_names[:3] == ["airplane", "automobile", "bird"]
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2023, 0.1994, 0.2010)
    assert d.train.images.shape == (12386, 32, 32, 3) and d.train.images.dtype == np.uint8
    assert d.test.images.shape == (10000, 32, 32, 3) and d.val.images.shape == (200, 32, 32, 3)
    assert d.class_counts.tolist() == [4980] + ldam_reference_counts(5000.0, 10, 0.01)[1:]
    # Pixels and labels at a few ids equal a plain PIL decode of the same Parquet rows.
    t = pq.read_table(data_root / "cifar10" / "train.parquet")
    pos = {int(i): r for r, i in enumerate(t.column("index").to_numpy())}
    for k in (0, 5000, len(d.train) - 1):
        row = pos[int(d.train.ids[k])]
        img = np.asarray(Image.open(io.BytesIO(t.column("image")[row].as_py())).convert("RGB"))
        np.testing.assert_array_equal(d.train.images[k], img)
        assert d.train.labels[k] == t.column("label")[row].as_py()


def test_cifar10_val_pixels_never_in_test_or_train(cifar10):
    digest = lambda a: hashlib.sha1(a.tobytes()).hexdigest()  # noqa: E731
    test = {digest(x) for x in cifar10.test.images}
    train = {digest(x) for x in cifar10.train.images}
    val = [digest(x) for x in cifar10.val.images]
    assert not (set(val) & test) and not (set(val) & train)


def test_stratified_fractions(data_root):
    full = describe_counts(DataConfig(root=str(data_root)))
    cfg = DataConfig(root=str(data_root), train_fraction=0.15, eval_fraction=0.1)
    small = describe_counts(cfg)
    assert small["train_counts"] == [max(1, round(0.15 * n)) for n in full["train_counts"]]
    assert small["test_counts"] == [100] * 10 and small["val_counts"] == [2] * 10
    a, b = plan_data(cfg), plan_data(cfg)
    np.testing.assert_array_equal(a.train.ids, b.train.ids)
    assert set(a.train.ids.tolist()) <= set(plan_data(DataConfig(root=str(data_root))).train.ids.tolist())

    labels = np.repeat(np.arange(4), [100, 10, 3, 1])
    idx = stratified_subsample(labels, 0.01, 4, seed=0)
    assert np.bincount(labels[idx], minlength=4).tolist() == [1, 1, 1, 1]
    assert not np.array_equal(stratified_subsample(labels, 0.5, 4, seed=0), stratified_subsample(labels, 0.5, 4, seed=1))


# ------------------------------------------------------------------------------------------------
# CIFAR code path on synthetic Parquet (CIFAR-100 train is not available here)
# ------------------------------------------------------------------------------------------------
def make_cifar(root: Path, C: int, per_class: int, test_per_class: int = 1, shuffle_rows: bool = True) -> np.ndarray:
    """Write <root>/cifar{C}/{train,test}.parquet in the shared schema; rows stored in a shuffled order with
    the official position in ``index``. Returns the train images in official order."""
    name = "cifar10" if C == 10 else "cifar100"
    n = C * per_class
    official_labels = np.random.default_rng(3).permutation(np.repeat(np.arange(C), per_class)).astype(np.int16)
    imgs = random_images(n, seed=4)
    order = np.random.default_rng(5).permutation(n) if shuffle_rows else np.arange(n)
    write_parquet(
        root / name / "train.parquet",
        [webp_bytes(imgs[i]) for i in order],
        official_labels[order],
        index=order,
        class_names=[f"c{i}" for i in range(C)],
    )
    nt = C * test_per_class
    timgs = random_images(nt, seed=6)
    write_parquet(
        root / name / "test.parquet",
        [webp_bytes(x) for x in timgs],
        np.repeat(np.arange(C), test_per_class).astype(np.int16),
        index=np.arange(nt),
        class_names=[f"c{i}" for i in range(C)],
    )
    return imgs, official_labels.astype(np.int64)


def test_cifar100_code_path_on_synthetic_parquet(tmp_path, cache):
    imgs, labels = make_cifar(tmp_path, 100, per_class=6)
    cfg = DataConfig(dataset="cifar100-lt", root=str(tmp_path), imbalance=2, val_per_class=1)
    d = build_data(cfg)
    target = ldam_reference_counts(6.0, 100, 0.5)
    assert d.class_counts.tolist() == [min(n, 5) for n in target]
    assert np.bincount(d.val.labels, minlength=100).tolist() == [1] * 100
    # The selection follows official order (index column), not storage order, and pixels follow the ids.
    ref = ldam_reference_selection(labels, target)
    for c in range(1, 100):
        np.testing.assert_array_equal(d.train.ids[d.train.labels == c], ref[c])
    np.testing.assert_array_equal(d.train.images, imgs[d.train.ids])
    np.testing.assert_array_equal(d.val.images, imgs[d.val.ids])
    assert d.class_names[7] == "c7" and d.test.images.shape == (100, 32, 32, 3)
    assert d.mean == (0.4914, 0.4822, 0.4465)


def test_decode_cache_hit_and_invalidation(tmp_path, cache, caplog):
    make_cifar(tmp_path, 10, per_class=8)
    cfg = DataConfig(root=str(tmp_path), imbalance=2, val_per_class=2)
    first = build_data(cfg)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 3  # train, val, test selections
    caplog.set_level(logging.INFO, logger="twohead.data")
    second = build_data(cfg)
    assert sum("from cache" in r.getMessage() for r in caplog.records) == 3
    np.testing.assert_array_equal(first.train.images, second.train.images)
    # A rewritten source file (new mtime/size) is decoded again, into a new cache entry.
    p = tmp_path / "cifar10" / "train.parquet"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    build_data(cfg)
    assert sum("from cache" in r.getMessage() for r in caplog.records) == 1  # test split only
    assert len(list(cache.glob("*.npy"))) == 5


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def test_missing_cifar_names_both_paths_and_the_fix(tmp_path):
    with pytest.raises(DataError) as e:
        build_data(DataConfig(dataset="cifar100-lt", root=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "cifar100" / "train.parquet") in msg and "cifar-100-python" in msg
    assert "data.download=true" in msg


def test_label_out_of_range_names_file_and_row(tmp_path):
    imgs = random_images(20)
    labels = np.repeat(np.arange(10), 2).astype(np.int16)
    labels[13] = 10
    write_parquet(tmp_path / "cifar10" / "train.parquet", [webp_bytes(x) for x in imgs], labels, index=np.arange(20))
    with pytest.raises(DataError) as e:
        describe_counts(DataConfig(root=str(tmp_path)))
    msg = str(e.value)
    assert "label 10" in msg and "row 13" in msg and "train.parquet" in msg and "[0, 10)" in msg


def test_empty_class_names_the_class(tmp_path):
    imgs = random_images(18)
    labels = np.repeat([0, 1, 2, 4, 5, 6, 7, 8, 9], 2).astype(np.int16)
    write_parquet(
        tmp_path / "cifar10" / "train.parquet",
        [webp_bytes(x) for x in imgs],
        labels,
        index=np.arange(18),
        class_names=["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
    )
    with pytest.raises(DataError, match=r"class 3 \(d\) has no images"):
        describe_counts(DataConfig(root=str(tmp_path), val_per_class=0))


def test_corrupt_image_fails_or_is_skipped_and_counted(tmp_path, cache, caplog):
    imgs, labels = make_cifar(tmp_path, 10, per_class=4, shuffle_rows=False)
    p = tmp_path / "cifar10" / "train.parquet"
    t = pq.read_table(p)
    images = t.column("image").to_pylist()
    bad_row = int(np.flatnonzero(labels == 0)[0])  # a head-class image: always selected at imbalance 1
    images[bad_row] = b"RIFF\x00\x00not-a-webp"
    pq.write_table(t.set_column(0, "image", pa.array(images, type=pa.binary())), p)
    cfg = DataConfig(root=str(tmp_path), imbalance=1, val_per_class=0)
    with pytest.raises(DataError) as e:
        build_data(cfg)
    assert f"row {bad_row} of {p}" in str(e.value) and "skip_corrupt" in str(e.value)

    caplog.set_level(logging.WARNING, logger="twohead.data")
    d = build_data(DataConfig(root=str(tmp_path), imbalance=1, val_per_class=0, skip_corrupt=True))
    assert d.skipped == 1 and len(d.train) == 39 and bad_row not in d.train.ids.tolist()
    assert any("skipped 1 undecodable" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(d.train.images, imgs[d.train.ids])


def test_val_reserve_larger_than_a_class_is_rejected(tmp_path):
    make_cifar(tmp_path, 10, per_class=4)
    with pytest.raises(DataError, match=r"class 0 .* has 4 training images; data.val_per_class=4 needs at least 5"):
        describe_counts(DataConfig(root=str(tmp_path), imbalance=1, val_per_class=4))


# ------------------------------------------------------------------------------------------------
# Tiny-ImageNet-LT
# ------------------------------------------------------------------------------------------------
def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_tiny_imagenet_lt_from_official_layout(tmp_path, cache):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n04", "n03"]  # unsorted on purpose: classes are the sorted wnids
    per_class = 10
    for k, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i, img in enumerate(random_images(per_class, size=64, seed=k)):
            (d / f"{w}_{i}.JPEG").write_bytes(jpeg_bytes(img))
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tshark\nn03\tray\nn04\tcock\n")
    (base / "val" / "images").mkdir(parents=True)
    ann = []
    for i, w in enumerate(wnids * 2):
        img = random_images(1, size=64, seed=100 + i)[0]
        # Some official val JPEGs are grayscale: they must come back as 3-channel RGB.
        Image.fromarray(img[..., 0] if i % 2 else img).save(base / "val" / "images" / f"val_{i}.JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")

    d = build_data(DataConfig(dataset="tiny-imagenet-lt", root=str(tmp_path), imbalance=5, val_per_class=2))
    assert d.class_names == ["goldfish", "shark", "ray", "cock"]
    target = ldam_reference_counts(10.0, 4, 0.2)
    assert d.class_counts.tolist() == [min(n, 8) for n in target]
    assert np.bincount(d.val.labels, minlength=4).tolist() == [2] * 4
    assert d.image_size == 64 and d.train.images.shape[1:] == (64, 64, 3)
    assert d.test.labels.tolist() == [1, 0, 3, 2] * 2 and d.test.images.shape == (8, 64, 64, 3)
    gray = d.test.images[1]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    labels = np.repeat(np.arange(4), per_class)
    ref = ldam_reference_selection(labels, target)
    for c in range(1, 4):
        np.testing.assert_array_equal(d.train.ids[d.train.labels == c], ref[c])

    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 1 of .*val_annotations.txt: wnid 'n99'"):
        describe_counts(DataConfig(dataset="tiny-imagenet-lt", root=str(tmp_path), imbalance=5, val_per_class=2))


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200.*data.download=true"):
        build_data(DataConfig(dataset="tiny-imagenet-lt", root=str(tmp_path)))


# ------------------------------------------------------------------------------------------------
# ImageNet-LT
# ------------------------------------------------------------------------------------------------
def test_shared_imagenet_lt_lists_parse(data_root):
    from twohead.data.imagenet_lt import read_split_list

    for name, n, per in (("val", 20000, 20), ("test", 50000, 50)):
        rel, labels = read_split_list(data_root / "imagenet_lt" / f"ImageNet_LT_{name}.txt")
        assert len(rel) == n and np.bincount(labels, minlength=1000).tolist() == [per] * 1000


def test_imagenet_lt_missing_train_list_says_where_to_get_it(data_root):
    with pytest.raises(DataError) as e:
        build_data(DataConfig(dataset="imagenet-lt", root=str(data_root), path="/nonexistent"))
    msg = str(e.value)
    assert "ImageNet_LT_train.txt" in msg and "classifier-balancing" in msg and "OLTR" in msg


def make_imagenet_lt(tmp_path: Path) -> tuple[Path, Path]:
    root, imgs = tmp_path / "data", tmp_path / "ilsvrc"
    lists = root / "imagenet_lt"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = [f"train/n{c:08d}/n{c:08d}_{k}.JPEG {c}" for c in range(1000) for k in range(1 + (c < 10))]
    val = [f"train/n{c:08d}/n{c:08d}_v.JPEG {c}" for c in range(1000)]
    test = [f"val/n{c:08d}/ILSVRC2012_val_{c:08d}.JPEG {c}" for c in range(1000)]
    for name, lines in (("train", train), ("val", val), ("test", test)):
        (lists / f"ImageNet_LT_{name}.txt").write_text("\n".join(lines) + "\n")
        for line in lines[:3]:  # only a few images exist: file-backed splits decode lazily
            p = imgs / line.split()[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(20, 48, size=2)
            p.write_bytes(jpeg_bytes(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)))
    return root, imgs


def test_imagenet_lt_file_backed_from_lists(tmp_path):
    import torch

    from twohead.data import FileDataset, collate_skip_corrupt, load_images

    root, imgs = make_imagenet_lt(tmp_path)
    d = build_data(DataConfig(dataset="imagenet-lt", root=str(root), path=str(imgs), image_size=16))
    assert d.train.images is None and len(d.train) == 1010 and len(d.val) == 1000 and len(d.test) == 1000
    assert d.class_counts[:10].tolist() == [2] * 10 and d.class_counts[10:].max() == 1
    assert d.class_names[3] == "n00000003" and d.image_size == 16 and d.mean == (0.485, 0.456, 0.406)
    assert d.train.files[0] == str(imgs / "train/n00000000/n00000000_0.JPEG") and d.train.ids[5] == 5

    ds = FileDataset(d.train, train=True)
    x, y, i = ds[1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and (y, i) == (0, 1) and ds.augmented
    x_eval, _, _ = FileDataset(d.test, train=False)[2]
    assert x_eval.shape == (3, 16, 16)
    out = load_images(d.val, [0, 2], size=8)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8

    (imgs / d.train.files[2].split(str(imgs) + "/")[1]).write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DataError, match=r"n00000001_0.JPEG \(row 2\)"):
        FileDataset(d.train, train=True)[2]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(FileDataset(d.train, train=True, skip_corrupt=True), [0, 1, 2]),
        batch_size=3,
        collate_fn=collate_skip_corrupt,
    )
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (2, 3, 16, 16) and ib.tolist() == [0, 1]


def test_imagenet_lt_bad_list_and_image_root(tmp_path):
    root, imgs = make_imagenet_lt(tmp_path)
    with pytest.raises(DataError, match="data.path must name the ILSVRC-2012 image root"):
        build_data(DataConfig(dataset="imagenet-lt", root=str(root)))
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}.*does not exist"):
        build_data(DataConfig(dataset="imagenet-lt", root=str(root), path=str(tmp_path / "nope")))
    lst = root / "imagenet_lt" / "ImageNet_LT_test.txt"
    lines = lst.read_text().splitlines()
    lines[41] = lines[41].rsplit(" ", 1)[0] + " 1000"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"label 1000 at line 42 of .*ImageNet_LT_test.txt is outside \[0, 1000\)"):
        build_data(DataConfig(dataset="imagenet-lt", root=str(root), path=str(imgs)))


# ------------------------------------------------------------------------------------------------
# Generic Parquet and image folders
# ------------------------------------------------------------------------------------------------
def test_generic_parquet_dataset(tmp_path, cache):
    counts = [12, 6, 3]
    labels = np.repeat(["cat", "dog", "emu"], counts)
    imgs = random_images(len(labels), size=24, seed=9)
    write_parquet(
        tmp_path / "ds" / "train.parquet", [webp_bytes(x) for x in imgs], list(labels), class_names=["cat", "dog", "emu"]
    )
    timgs = random_images(6, size=24, seed=10)
    write_parquet(
        tmp_path / "ds" / "test.parquet",
        [webp_bytes(x) for x in timgs],
        ["cat", "dog", "emu"] * 2,
        class_names=["cat", "dog", "emu"],
    )
    d = build_data(DataConfig(dataset="parquet", path=str(tmp_path / "ds"), val_per_class=2))
    assert d.class_names == ["cat", "dog", "emu"] and d.image_size == 24
    assert d.class_counts.tolist() == [10, 4, 2]  # as given, minus the carved validation images
    assert np.bincount(d.val.labels, minlength=3).tolist() == [2, 2, 1]  # emu has 3: gives at most half
    assert not set(d.val.ids.tolist()) & set(d.train.ids.tolist())
    np.testing.assert_array_equal(d.train.images, imgs[d.train.ids])
    assert d.test.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert any("half" in n for n in d.notes)

    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(dataset="parquet", path=str(tmp_path / "missing")))
    write_parquet(
        tmp_path / "bad" / "train.parquet",
        [webp_bytes(x) for x in imgs[:3]],
        ["cat", "cow", "emu"],
        class_names=["cat", "dog", "emu"],
    )
    write_parquet(tmp_path / "bad" / "test.parquet", [webp_bytes(timgs[0])], ["cat"], class_names=["cat", "dog", "emu"])
    with pytest.raises(DataError, match=r"label 'cow' at row 1 of .*train.parquet"):
        build_data(DataConfig(dataset="parquet", path=str(tmp_path / "bad")))


def test_generic_folder_dataset(tmp_path, cache):
    base = tmp_path / "folder"
    for s, (split, per) in enumerate((("train", {"a": 7, "b": 3}), ("test", {"a": 2, "b": 2}))):
        for k, (cls, n) in enumerate(per.items()):
            (base / split / cls).mkdir(parents=True)
            for i, img in enumerate(random_images(n, size=16, seed=10 * s + k)):
                Image.fromarray(img).save(base / split / cls / f"{i}.png")
    d = build_data(DataConfig(dataset="folder", path=str(base), val_per_class=1))
    assert d.class_names == ["a", "b"] and d.image_size == 16 and d.train.images is not None
    assert d.class_counts.tolist() == [6, 2] and len(d.val) == 2 and len(d.test) == 4
    listing = [base / "train" / c / f"{i}.png" for c, n in (("a", 7), ("b", 3)) for i in range(n)]  # ids index this
    for j, i in enumerate(d.train.ids.tolist()):
        np.testing.assert_array_equal(d.train.images[j], np.asarray(Image.open(listing[i]).convert("RGB")))
    big = build_data(DataConfig(dataset="folder", path=str(base), val_per_class=1, image_size=96))
    assert big.train.images is None and big.train.image_size == 96

    (base / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"\['zebra'\].*not training classes"):
        build_data(DataConfig(dataset="folder", path=str(base)))


# ------------------------------------------------------------------------------------------------
# Split / LTData contract
# ------------------------------------------------------------------------------------------------
def test_split_contract():
    imgs = random_images(5, size=4)
    s = Split(labels=np.array([0, 1, 1, 2, 2]), ids=np.arange(10, 15), images=imgs)
    sub = s.subset([4, 1])
    assert len(sub) == 2 and sub.ids.tolist() == [14, 11] and sub.labels.dtype == np.int64
    np.testing.assert_array_equal(sub.images, imgs[[4, 1]])
    f = Split(labels=np.array([1, 0]), ids=np.array([0, 1]), files=["x.jpg", "y.jpg"], image_size=224)
    assert f.file_backed and f.subset([1]).files == ["y.jpg"]
    with pytest.raises(DataError):
        Split(labels=np.array([0]), ids=np.array([0]))
    with pytest.raises(DataError):
        Split(labels=np.array([0, 1]), ids=np.array([0, 1]), images=imgs)
    d = LTData("x", ["a", "b", "c", "d"], 4, 4, (0.5,) * 3, (0.5,) * 3, s, None, s)
    assert d.class_counts.tolist() == [1, 2, 2, 0]


def test_carve_val_is_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), [30, 10, 4])
    tr, va, notes = carve_val(labels, 3, 5, seed=0)
    assert np.bincount(labels[va], minlength=3).tolist() == [5, 5, 2] and len(notes) == 1
    assert not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == len(labels)
    tr2, va2, _ = carve_val(labels, 3, 5, seed=0)
    np.testing.assert_array_equal(va, va2)
