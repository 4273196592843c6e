"""One indexer per source kind: what items exist, their labels, classes and own split.

An index is cheap (file names, label files, small arrays); pixels are produced only
for the items a caller asks for, so ``data info`` on VGGFace2 lists 3 million files
without decoding one, and a ``limit`` decodes only what it keeps.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.binfile import decode_bin_image, read_bin
from maskcrypt.data.images import IMAGE_EXTENSIONS, decode_many, probe_file
from maskcrypt.data.pairs import consecutive_folds
from maskcrypt.data.spec import DataSpec, parse_size
from maskcrypt.data.synthetic import render_dataset

#: Default target size for file-based sources (the face-recognition standard).
FILE_DEFAULT_SIZE = 112
SYNTHETIC_DEFAULT_SIZE = 32
LFW_DEFAULT_CROP = "150"

Loader = Callable[[np.ndarray, tuple[int, int], int], tuple[np.ndarray, list[int], list[tuple[str, str]]]]


@dataclass
class SourceIndex:
    """Every item of a source: labels, class names, the source's own split if any, and a loader.

    ``load(items, size, channels)`` returns (images uint8 N x C x H x W, positions of
    the items that loaded, (name, reason) for each that did not).
    """

    labels: np.ndarray
    class_names: list[str]
    own_split: np.ndarray | None
    load: Loader
    default_size: tuple[int, int]
    default_channels: int
    native: str
    paths: list[str] | None = None
    #: Verification pairs ``(a, b, same, fold)``: ``a``/``b`` are paths (LFW) or item positions (``bin:``).
    pairs: list[tuple[str | int, str | int, int, int]] = field(default_factory=list)
    crop: str = ""  # file sources: the crop option their loader applies
    #: No identity labels (an insightface .bin): images and pairs for verification only.
    verification_only: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# -- files ---------------------------------------------------------------------------------
def _file_loader(paths: list[str], crop: str) -> Loader:
    def load(items: np.ndarray, size: tuple[int, int], channels: int):
        chosen = [paths[i] for i in items]
        return decode_many(chosen, size, channels, crop)
    return load


def _size_of(spec: DataSpec, default: int | tuple[int, int]) -> tuple[int, int]:
    if spec.get("size"):
        return parse_size(spec.get("size"), f"data spec {spec.text!r}: size")
    return (default, default) if isinstance(default, int) else default


def _native(paths: list[str]) -> str:
    try:
        w, h, mode = probe_file(paths[0])
    except MaskcryptError as exc:
        return f"unknown ({exc})"
    return f"{h}x{w} {mode} (first file)"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _class_folders(root: Path, spec: DataSpec) -> tuple[list[str], list[int], list[str]]:
    if not root.is_dir():
        raise MaskcryptError(f"data spec {spec.text!r}: {root} is not a directory")
    paths: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    empty: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(f) for f in folder.iterdir() if _is_image(f))
        if not files:
            empty.append(folder.name)
            continue
        names.append(folder.name)
        paths.extend(files)
        labels.extend([len(names) - 1] * len(files))
    if empty:
        warnings.warn(f"{root}: skipped {len(empty)} class folder(s) with no images: {empty[:10]}", stacklevel=3)
    if not paths:
        raise MaskcryptError(
            f"data spec {spec.text!r}: no images under {root} (expected ROOT/<class>/<image> with "
            f"{', '.join(IMAGE_EXTENSIONS)} files)"
        )
    return paths, labels, names


def index_imagefolder(spec: DataSpec) -> SourceIndex:
    """``ROOT/<class or identity>/<image>``: classes are the sorted folder names; no own split."""
    paths, labels, names = _class_folders(Path(spec.path), spec)
    crop = spec.get("crop") or "center"
    return SourceIndex(np.asarray(labels, np.int64), names, None, _file_loader(paths, crop),
                       _size_of(spec, FILE_DEFAULT_SIZE), 3, _native(paths), paths, crop=crop)


def _read_lfw_pairs(pairs_file: Path, root: Path) -> list[tuple[str, str, int, int]]:
    """Parse LFW ``pairs.txt``: header ``folds n`` (or ``n``), then same / different lines."""
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    if not lines:
        raise MaskcryptError(f"{pairs_file}: empty pairs file")
    header, body = lines[0], lines[1:]
    try:
        per_fold = int(header[1]) if len(header) == 2 else len(body)
    except ValueError:
        raise MaskcryptError(
            f"{pairs_file}: expected a header 'folds pairs_per_fold', got {' '.join(header)!r}"
        ) from None

    def img(name: str, num: str) -> str:
        return str(root / name / f"{name}_{int(num):04d}.jpg")

    out = []
    for i, parts in enumerate(body):
        fold = i // (2 * per_fold) if len(header) == 2 else 0
        try:
            if len(parts) == 3:
                out.append((img(parts[0], parts[1]), img(parts[0], parts[2]), 1, fold))
            elif len(parts) == 4:
                out.append((img(parts[0], parts[1]), img(parts[2], parts[3]), 0, fold))
            else:
                raise ValueError
        except ValueError:
            raise MaskcryptError(
                f"{pairs_file}: line {i + 2}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {' '.join(parts)!r}"
            ) from None
    return out


def index_lfw(spec: DataSpec) -> SourceIndex:
    """LFW: ``ROOT/<Name>/<Name>_0001.jpg`` (250 x 250, face centred), ``pairs.txt`` when present.

    The root may be the folder that holds the name folders or its parent (``lfw/`` or
    ``lfw-deepfunneled/`` inside). The default crop is the centre 150 x 150 box.
    """
    root = Path(spec.path)
    if root.is_dir() and not any(_is_image(f) for d in root.iterdir() if d.is_dir() for f in d.iterdir()):
        inner = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.startswith("lfw")]
        if inner:
            root = inner[0]
    paths, labels, names = _class_folders(root, spec)
    pairs_opt = spec.get("pairs")
    candidates = [Path(pairs_opt)] if pairs_opt else [root / "pairs.txt", root.parent / "pairs.txt"]
    pairs_file = next((p for p in candidates if p.is_file()), None)
    if pairs_opt and pairs_file is None:
        raise MaskcryptError(f"data spec {spec.text!r}: pairs file {pairs_opt} not found")
    pairs = _read_lfw_pairs(pairs_file, root) if pairs_file else []
    crop = spec.get("crop") or LFW_DEFAULT_CROP
    return SourceIndex(np.asarray(labels, np.int64), names, None, _file_loader(paths, crop),
                       _size_of(spec, FILE_DEFAULT_SIZE), 3, _native(paths), paths, pairs, crop)


def _find(root: Path, names: list[str]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def index_celeba(spec: DataSpec) -> SourceIndex:
    """CelebA: ``img_align_celeba/``, ``identity_CelebA.txt`` and ``list_eval_partition.txt``.

    The label files may sit in the root or in ``Anno/`` and ``Eval/`` (the official
    layout). The partition file is the split (0 train, 1 val, 2 test); without it the
    seeded split applies. Classes are identity numbers, sorted numerically.
    """
    root = Path(spec.path)
    img_dir = _find(root, ["img_align_celeba", "img_align_celeba/img_align_celeba", "Img/img_align_celeba"])
    ident = _find(root, ["identity_CelebA.txt", "Anno/identity_CelebA.txt"])
    part = _find(root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"])
    if img_dir is None:
        raise MaskcryptError(f"data spec {spec.text!r}: no img_align_celeba/ folder under {root}")
    if ident is None:
        raise MaskcryptError(f"data spec {spec.text!r}: no identity_CelebA.txt under {root} (or {root}/Anno)")
    file_ids: dict[str, int] = {}
    for n, line in enumerate(ident.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise MaskcryptError(f"{ident}: line {n}: expected '<file> <identity number>', got {line!r}")
        file_ids[parts[0]] = int(parts[1])
    partition: dict[str, int] = {}
    if part is not None:
        for n, line in enumerate(part.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise MaskcryptError(f"{part}: line {n}: expected '<file> 0|1|2', got {line!r}")
            partition[parts[0]] = int(parts[1])
    present = sorted(f for f in file_ids if (img_dir / f).is_file())
    missing = len(file_ids) - len(present)
    if missing:
        warnings.warn(f"{ident}: {missing} listed image(s) are not in {img_dir}", stacklevel=3)
    if not present:
        raise MaskcryptError(f"data spec {spec.text!r}: none of the images in {ident.name} is in {img_dir}")
    idents = sorted({file_ids[f] for f in present})
    pos = {v: i for i, v in enumerate(idents)}
    labels = np.asarray([pos[file_ids[f]] for f in present], np.int64)
    own = None
    if partition:
        names = np.array(["train", "val", "test"])
        unlisted = [f for f in present if f not in partition]
        if unlisted:
            raise MaskcryptError(f"{part}: no partition for {len(unlisted)} image(s), e.g. {unlisted[0]}")
        own = names[[partition[f] for f in present]]
    paths = [str(img_dir / f) for f in present]
    crop = spec.get("crop") or "center"
    return SourceIndex(labels, [str(i) for i in idents], own, _file_loader(paths, crop),
                       _size_of(spec, FILE_DEFAULT_SIZE), 3, _native(paths), paths, crop=crop)


# -- arrays --------------------------------------------------------------------------------
def _resize_arrays(arr: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize/convert uint8 N x C x H x W arrays (bilinear), channels 1 <-> 3."""
    n, c, h, w = arr.shape
    if c != channels:
        if channels == 3:
            arr = np.repeat(arr, 3, axis=1)
        else:
            arr = np.rint(np.tensordot(arr.astype(np.float32), np.array([0.299, 0.587, 0.114]), axes=([1], [0])))
            arr = arr.clip(0, 255).astype(np.uint8)[:, None]
    if (h, w) == tuple(size):
        return np.ascontiguousarray(arr)
    out = np.empty((n, channels, size[0], size[1]), dtype=np.uint8)
    for i in range(n):
        for ch in range(channels):
            out[i, ch] = np.asarray(Image.fromarray(arr[i, ch]).resize((size[1], size[0]), Image.BILINEAR))
    return out


def _array_loader(images: np.ndarray) -> Loader:
    def load(items: np.ndarray, size: tuple[int, int], channels: int):
        return _resize_arrays(images[items], size, channels), list(range(len(items))), []
    return load


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an MNIST-format idx file (raw or gzipped); a truncated file is refused by name."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MaskcryptError(f"{path}: corrupt gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise MaskcryptError(f"{path}: not an idx file (expected magic 00 00 <type> <ndim>)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise MaskcryptError(f"{path}: truncated idx header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = head + int(np.prod(dims)) * dtype.itemsize
    if len(raw) < expected:
        raise MaskcryptError(
            f"{path}: truncated idx file: {len(raw)} bytes, expected {expected} for shape {tuple(dims)}"
        )
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=head).reshape(dims)


def _idx_file(root: Path, prefix: str, what: str) -> Path | None:
    for name in sorted(os.listdir(root)):
        low = name.lower()
        if low.startswith(prefix) and what in low and "idx" in low:
            return root / name
    return None


def index_idx(spec: DataSpec) -> SourceIndex:
    """MNIST-format idx files: ``train-*`` is the train split, ``t10k-*`` the test split."""
    root = Path(spec.path)
    if not root.is_dir():
        raise MaskcryptError(f"data spec {spec.text!r}: {root} is not a directory")
    images, labels, splits = [], [], []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        img_f, lab_f = _idx_file(root, prefix, "images"), _idx_file(root, prefix, "labels")
        if img_f is None and lab_f is None:
            continue
        if img_f is None or lab_f is None:
            raise MaskcryptError(
                f"data spec {spec.text!r}: found {(img_f or lab_f).name} but not its "
                f"{'labels' if lab_f is None else 'images'} file in {root}"
            )
        x, y = read_idx(img_f), read_idx(lab_f)
        if x.ndim not in (3, 4) or x.dtype != np.uint8:
            raise MaskcryptError(f"{img_f}: expected uint8 N x H x W images, got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise MaskcryptError(f"{lab_f}: expected {x.shape[0]} labels, got shape {y.shape}")
        images.append(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))
        labels.append(y.astype(np.int64))
        splits.append(np.full(x.shape[0], split, dtype="<U5"))
    if not images:
        raise MaskcryptError(
            f"data spec {spec.text!r}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] in {root}"
        )
    if len({a.shape[1:] for a in images}) > 1:
        raise MaskcryptError(f"data spec {spec.text!r}: train and t10k images differ in shape")
    x = np.concatenate(images)
    y = np.concatenate(labels)
    names = [str(i) for i in range(int(y.max()) + 1)]
    return SourceIndex(y, names, np.concatenate(splits), _array_loader(x),
                       _size_of(spec, tuple(x.shape[2:])), x.shape[1],
                       f"{x.shape[2]}x{x.shape[3]} x{x.shape[1]} channel(s)")


def index_npz(spec: DataSpec) -> SourceIndex:
    """An ``.npz`` with ``images`` (N x H x W, N x H x W x C or N x C x H x W, uint8) and ``labels``.

    Optional arrays: ``class_names`` (strings) and ``split`` ('train'/'test'/'val' per image).
    """
    path = Path(spec.path)
    if not path.is_file():
        raise MaskcryptError(f"data spec {spec.text!r}: {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MaskcryptError(f"{path}: not a readable .npz file ({exc})") from None
    with data:
        missing = [k for k in ("images", "labels") if k not in data.files]
        if missing:
            raise MaskcryptError(f"{path}: missing array(s) {missing}; found {data.files}")
        x, y = data["images"], data["labels"]
        names = [str(s) for s in data["class_names"]] if "class_names" in data.files else None
        own = data["split"].astype("<U5") if "split" in data.files else None
    if x.dtype != np.uint8:
        raise MaskcryptError(f"{path}: images must be uint8, got {x.dtype} (scale floats with (x*255).round())")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise MaskcryptError(f"{path}: images must be N x H x W, N x H x W x C or N x C x H x W, got {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise MaskcryptError(f"{path}: labels must be {x.shape[0]} non-negative integers, got {y.dtype} {y.shape}")
    if x.shape[0] == 0:
        raise MaskcryptError(f"{path}: holds no images")
    n_classes = int(y.max()) + 1
    if names is not None and len(names) < n_classes:
        raise MaskcryptError(f"{path}: class_names has {len(names)} entries, labels go up to {n_classes - 1}")
    if own is not None and (own.shape != y.shape or not set(np.unique(own)) <= {"train", "test", "val"}):
        raise MaskcryptError(f"{path}: split must hold 'train', 'test' or 'val' for each of {y.shape[0]} images")
    return SourceIndex(y.astype(np.int64), names or [str(i) for i in range(n_classes)], own,
                       _array_loader(np.ascontiguousarray(x)), _size_of(spec, tuple(x.shape[2:])), x.shape[1],
                       f"{x.shape[2]}x{x.shape[3]} x{x.shape[1]} channel(s)")


def index_synthetic(spec: DataSpec) -> SourceIndex:
    """The procedural face set: ``identities`` x ``per_identity`` images, rendered on demand."""
    k, per, seed = spec.get("identities"), spec.get("per_identity"), spec.get("seed")
    offset = spec.get("offset")
    labels = np.repeat(np.arange(k, dtype=np.int64), per)

    def load(items: np.ndarray, size: tuple[int, int], channels: int):
        imgs = render_dataset(k, per, size[0], size[1], seed=seed, channels=channels, items=items, offset=offset)
        return imgs, list(range(len(items))), []

    return SourceIndex(labels, [f"id{i:03d}" for i in range(k)], None, load,
                       _size_of(spec, SYNTHETIC_DEFAULT_SIZE), 3, "rendered at any size")


def index_bin(spec: DataSpec) -> SourceIndex:
    """An insightface verification ``.bin``: images in consecutive pairs, 10 consecutive folds, no labels.

    Every image is in the ``test`` split (``all`` names the same images); the loader
    decodes only the items asked for, and an undecodable image is an error naming its
    position (a pair cannot lose one image silently).
    """
    path = Path(spec.path)
    bins, same = read_bin(path)
    folds = consecutive_folds(len(same)) if len(same) >= 10 else np.zeros(len(same), np.int64)
    pairs = [(2 * i, 2 * i + 1, int(s), int(f)) for i, (s, f) in enumerate(zip(same, folds))]

    def load(items: np.ndarray, size: tuple[int, int], channels: int):
        out = np.empty((len(items), channels, size[0], size[1]), np.uint8)
        for k, i in enumerate(items):
            out[k] = decode_bin_image(bins[int(i)], f"{path}: image {int(i)} (pair {int(i) // 2})", size, channels)
        return out, list(range(len(items))), []

    try:
        from PIL import Image

        with Image.open(io.BytesIO(bins[0])) as first:
            native = f"{len(bins)} encoded images, {first.height}x{first.width} {first.format} (first)"
    except Exception:
        native = f"{len(bins)} encoded images (the first is not decodable)"
    n = len(bins)
    return SourceIndex(np.zeros(n, np.int64), ["(unlabelled)"], np.full(n, "test", dtype="<U5"), load,
                       _size_of(spec, FILE_DEFAULT_SIZE), 3, native, None, pairs, "none", verification_only=True)


INDEXERS: dict[str, Callable[[DataSpec], SourceIndex]] = {
    "imagefolder": index_imagefolder,
    "lfw": index_lfw,
    "celeba": index_celeba,
    "idx": index_idx,
    "npz": index_npz,
    "synthetic": index_synthetic,
    "bin": index_bin,
}
