"""Image folders and zip archives laid out as ``[<split>/]<class>/<image>``.

This is how a defender brings their own small clean set (a folder of class folders, no split
level) and how the shared CIFAR-10 copy is stored (a zip with ``train/`` and ``test/``). Reading
is deterministic (classes, then file names, sorted), every failure names the file at fault, and
decoded zips are cached as safetensors (never pickle) so a 60,000-image archive is decoded once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.errors import DataError
from unbackdoor.utils.io import atomic_write

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "test")
_PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_MAX_MEMBER_BYTES = 256 << 20  # an image file larger than this in a zip is refused
_CACHE_VERSION = 1
_LAYOUT_HELP = "expected <split>/<class>/<image> or <class>/<image> with .png/.jpg/.jpeg/.bmp/.webp"


# --------------------------------------------------------------------------- sources


class _Source:
    """The files of a directory or a zip archive, addressed by POSIX paths relative to its root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self.dirs: set[str] = set()
        self.files: list[str] = []
        if path.is_dir():
            self._list_dir()
        elif path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{path}: not a readable zip archive ({e})") from None
            self._list_zip()
        else:
            raise DataError(f"{path}: no such file or directory")

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def _list_dir(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            rel = Path(dirpath).relative_to(self.path).as_posix()
            prefix = "" if rel == "." else rel + "/"
            if prefix:
                self.dirs.add(rel)
            self.files.extend(prefix + f for f in sorted(filenames) if not _hidden(f))

    def _list_zip(self) -> None:
        assert self._zip is not None
        for info in self._zip.infolist():
            name = info.filename.replace("\\", "/").strip("/")
            parts = name.split("/")
            if not name or any(_hidden(p) or p in ("", ".", "..") for p in parts):
                continue
            for i in range(1, len(parts)):
                self.dirs.add("/".join(parts[:i]))
            if info.is_dir():
                self.dirs.add(name)
            else:
                self._infos[name] = info
                self.files.append(name)
        self.files.sort()

    def where(self, rel: str) -> str:
        return f"{self.path}:{rel}" if self.is_zip else str(self.path / rel)

    def read(self, rel: str) -> bytes:
        if self._zip is None:
            try:
                return (self.path / rel).read_bytes()
            except OSError as e:
                raise DataError(
                    f"{self.where(rel)}: cannot read file ({e.strerror or e})"
                ) from None
        info = self._infos[rel]
        if info.file_size > _MAX_MEMBER_BYTES:
            raise DataError(
                f"{self.where(rel)}: {info.file_size} bytes uncompressed, more than an image "
                f"file may hold ({_MAX_MEMBER_BYTES} bytes)"
            )
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise DataError(f"{self.where(rel)}: corrupt zip member ({e})") from None

    def size(self, rel: str) -> int:
        if self._zip is not None:
            return self._infos[rel].file_size
        try:
            return (self.path / rel).stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _hidden(name: str) -> bool:
    """Dot files and the folders archivers and Python leave behind are not data."""
    return name.startswith(".") or name in ("__MACOSX", "__pycache__")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- layout


def _resolve_layout(src: _Source, split: str) -> tuple[str, bool]:
    """The folder whose children are the class folders, and whether a split level was used.

    A single wrapping folder (``cifar10/train/...`` in a zip) is looked through.
    """
    images = [f.split("/") for f in src.files if _is_image(f)]
    prefix: list[str] = []
    for _ in range(4):
        rel = [p[len(prefix) :] for p in images if p[: len(prefix)] == prefix]
        below = {
            d[len(prefix)]
            for d in (x.split("/") for x in src.dirs)
            if len(d) == len(prefix) + 1 and d[: len(prefix)] == prefix
        }
        tops = {r[0] for r in rel if len(r) > 1} | below
        splits_here = sorted(tops & set(SPLITS))
        if splits_here:
            if split not in tops:
                raise DataError(
                    f"{src.where('/'.join(prefix)) if prefix else src.path}: no {split!r} folder "
                    f"(found split folders: {', '.join(splits_here)})"
                )
            return "/".join([*prefix, split]), True
        if rel and len(tops) == 1 and min(len(r) for r in rel) >= 3:
            prefix.append(next(iter(tops)))
            continue
        break
    return "/".join(prefix), False


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Folder names in class-index order: numerically when all are integers, else sorted."""
    names = sorted(set(names))
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return names


def _fmt(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def class_index_map(
    found: Iterable[str], class_names: Sequence[str] | None, where: str
) -> tuple[list[str], dict[str, int]]:
    """Class names of the result and the index of each found name.

    Without ``class_names`` the found names, sorted, are the classes. With them (the model's
    classes), each found name must be one of them and keeps that class's index.
    """
    found = sorted(set(found))
    if class_names is None:
        names = sort_class_names(found)
        return names, {n: i for i, n in enumerate(names)}
    names = [str(c) for c in class_names]
    if not names:
        raise DataError(f"{where}: class_names is empty")
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{where}: class_names repeats {_fmt(dup)}")
    unknown = [n for n in found if n not in index]
    if unknown and len(unknown) == len(found):
        raise DataError(
            f"{where}: no folder names a class of the model: unknown {_fmt(unknown)}; "
            f"known classes: {_fmt(names)}"
        )
    if unknown:
        raise DataError(
            f"{where}: folders {_fmt(unknown)} name no class of the model "
            f"(known classes: {_fmt(names)})"
        )
    return names, index


# --------------------------------------------------------------------------- decoding


def check_image_size(image_size: tuple[int, int] | int | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DataError(f"image_size must be (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise DataError(f"image_size must be positive, got {image_size!r}")
    return h, w


def check_channels(channels: int | None) -> int | None:
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels


def _natural_channels(mode: str) -> int:
    return 1 if mode in _GRAY_MODES else 3


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if channels == 1:
        if im.mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits
            arr = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            return Image.fromarray(arr, mode="L")
        return im if im.mode == "L" else im.convert("L")
    if im.mode.startswith("I;16"):
        im = _to_mode(im, 1)
    return im if im.mode == "RGB" else im.convert("RGB")


def _open(data: bytes, name: str) -> Image.Image:
    hint = _PIL_FORMAT.get(os.path.splitext(name)[1].lower())
    try:
        # Naming the format skips PIL's probing of every plugin (~20% faster on tiny JPEGs).
        return Image.open(io.BytesIO(data), formats=[hint] if hint else None)
    except UnidentifiedImageError:
        return Image.open(io.BytesIO(data))


def decode_image(
    data: bytes,
    where: str,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """One image file's bytes as a ``H x W x C`` uint8 array (resized / converted if asked)."""
    try:
        with _open(data, where) as im:
            im.load()
            mode = "L" if (channels or _natural_channels(im.mode)) == 1 else "RGB"
            if im.mode != mode:
                im = _to_mode(im, 1 if mode == "L" else 3)
            if image_size is not None and im.size != (image_size[1], image_size[0]):
                im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
    ) as e:
        raise DataError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_all(
    src: _Source,
    files: Sequence[str],
    image_size: tuple[int, int] | None,
    channels: int | None,
    workers: int | None,
) -> np.ndarray:
    """Decode ``files`` into one ``N x H x W x C`` array, checking they agree in size and mode."""
    first = decode_image(
        src.read(files[0]), src.where(files[0]), image_size=image_size, channels=channels
    )
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    out[0] = first
    h, w, c = first.shape

    def one(k: int) -> None:
        rel = files[k]
        arr = decode_image(src.read(rel), src.where(rel), image_size=image_size, channels=channels)
        if arr.shape != first.shape:
            if arr.shape[:2] != (h, w):
                raise DataError(
                    f"{src.where(rel)}: image is {arr.shape[0]}x{arr.shape[1]} (HxW) but expected "
                    f"{h}x{w} like {files[0]}; pass image_size=(H, W) to resize"
                )
            raise DataError(
                f"{src.where(rel)}: image has {arr.shape[2]} channel(s) but expected {c} like "
                f"{files[0]}; pass channels=1 or 3 to convert"
            )
        out[k] = arr

    if workers is None:
        # Tiny images (CIFAR's ~1 KB JPEGs) decode fastest in one thread: PIL's per-file Python
        # overhead holds the GIL (measured: 2 threads 30% slower). Large files spend their time
        # in libjpeg/zlib, which releases the GIL, so threads pay off there.
        sample = files[:: max(1, len(files) // 16)]
        mean_bytes = sum(src.size(f) for f in sample) / len(sample)
        workers = min(8, os.cpu_count() or 1) if mean_bytes > 64 * 1024 else 1
    if workers <= 1 or len(files) < 64:
        for k in range(1, len(files)):
            one(k)
    else:
        chunks = np.array_split(np.arange(1, len(files)), workers * 4)

        def run(chunk: np.ndarray) -> None:
            for k in chunk.tolist():
                one(k)

        with ThreadPoolExecutor(workers) as ex:
            for fut in [ex.submit(run, ch) for ch in chunks]:
                fut.result()
    return out


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where decoded data sets are cached: ``$UNBACKDOOR_CACHE`` or ``~/.cache/unbackdoor``."""
    return Path(os.environ.get("UNBACKDOOR_CACHE") or "~/.cache/unbackdoor").expanduser()


def cached(
    name: str, key: dict, build: Callable[[], ImageDataset], *, source: Path
) -> ImageDataset:
    """``build()``, or its result cached under the cache root, keyed by ``source``'s path, size and
    mtime plus ``key``. The cache is a safetensors file written atomically; one that cannot be read
    or does not match is ignored and rebuilt; one that cannot be written is skipped."""
    st = source.stat()
    ident = {"v": _CACHE_VERSION, "source": str(source.resolve()), **key}
    full = {**ident, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    full_json = json.dumps(full, sort_keys=True)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    path = cache_root() / "data" / f"{safe}-{digest}.safetensors"
    if path.is_file():
        ds = _read_cache(path, full_json, name)
        if ds is not None:
            return ds
    ds = build()
    try:
        from safetensors.torch import save_file

        meta = {
            "key": full_json,
            "class_names": json.dumps(ds.class_names),
            "meta": json.dumps(ds.meta),
            "name": ds.name,
        }
        tensors = {"images": ds.images.contiguous(), "labels": ds.labels.contiguous()}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    except OSError as e:
        log.warning("could not write the data cache %s (%s); continuing without it", path, e)
    return ds


def _read_cache(path: Path, full_json: str, name: str) -> ImageDataset | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != full_json:
                return None  # the source changed, or options differ: rebuild
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
        return ImageDataset(
            images,
            labels,
            json.loads(meta["class_names"]),
            meta.get("name", name),
            json.loads(meta["meta"]),
        )
    except Exception as e:  # a cache must never be the reason loading fails
        log.warning("ignoring unreadable data cache %s (%s); rebuilding it", path, e)
        return None


# --------------------------------------------------------------------------- public


def read_image_folder(
    path: str | Path,
    split: str = "train",
    *,
    class_names: Sequence[str] | None = None,
    image_size: tuple[int, int] | int | None = None,
    channels: int | None = None,
    name: str | None = None,
    cache: bool = True,
    workers: int | None = None,
) -> ImageDataset:
    """Read an image folder or zip: ``<split>/<class>/<image>``, or ``<class>/<image>`` (no split
    level: the whole folder is returned whatever ``split`` is).

    ``class_names`` (the model's classes) fixes the label of each class folder; without it the
    sorted folder names are the classes. ``image_size`` is ``(height, width)``; ``channels`` is 1 or
    3. Without them all images must share one size and channel count. Zips are cached decoded.
    """
    path = Path(path).expanduser()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    size = check_image_size(image_size)
    channels = check_channels(channels)
    label = name or f"{path.stem if path.is_file() else path.name}/{split}"

    def build() -> ImageDataset:
        src = _Source(path)
        try:
            return _read(src, split, class_names, size, channels, label, workers)
        finally:
            src.close()

    if cache and path.is_file():
        key = {
            "split": split,
            "class_names": list(class_names) if class_names is not None else None,
            "image_size": list(size) if size else None,
            "channels": channels,
            "name": label,
        }
        return cached(label, key, build, source=path)
    return build()


def _read(
    src: _Source,
    split: str,
    class_names: Sequence[str] | None,
    size: tuple[int, int] | None,
    channels: int | None,
    label: str,
    workers: int | None,
) -> ImageDataset:
    base, has_split = _resolve_layout(src, split)
    where = src.where(base) if base else str(src.path)
    prefix = base + "/" if base else ""
    per_class: dict[str, list[str]] = {}
    for rel in src.files:
        if not rel.startswith(prefix) or not _is_image(rel):
            continue
        parts = rel[len(prefix) :].split("/")
        if len(parts) == 1:
            raise DataError(f"{src.where(rel)}: image outside any class folder ({_LAYOUT_HELP})")
        if len(parts) > 2:
            raise DataError(f"{src.where(rel)}: image nested too deep ({_LAYOUT_HELP})")
        per_class.setdefault(parts[0], []).append(rel)
    if not per_class:
        raise DataError(f"{where}: no images found ({_LAYOUT_HELP})")
    if class_names is None:
        empty = sorted(
            d[len(prefix) :]
            for d in src.dirs
            if d.startswith(prefix)
            and "/" not in d[len(prefix) :]
            and d[len(prefix) :]
            and d[len(prefix) :] not in per_class
        )
        if empty:
            raise DataError(
                f"{where}: class folder(s) {_fmt(empty)} hold no images; remove them or pass "
                "class_names so that class indices are unambiguous"
            )
    names, index = class_index_map(per_class, class_names, where)
    ordered = sorted(per_class, key=lambda c: index[c])
    files = [f for c in ordered for f in sorted(per_class[c])]
    labels = torch.tensor([index[c] for c in ordered for _ in per_class[c]], dtype=torch.int64)
    arr = _decode_all(src, files, size, channels, workers)
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    meta = {
        "source": str(src.path),
        "format": "zip" if src.is_zip else "folder",
        "split": split if has_split else None,
    }
    return ImageDataset(images, labels, names, label, meta)
