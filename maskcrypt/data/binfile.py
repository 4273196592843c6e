"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` the encoded images
(JPEG/PNG bytes, 112 x 112) in consecutive pairs, ``issame_list`` one bool per pair.
The published files were written by Python 2, so their byte strings are read with
``encoding="bytes"``. Unpickling can run arbitrary code, so :func:`read_bin` uses an
unpickler that refuses every global (class or function reference): only the built-in
containers and scalars a pickle can hold without one come through, and the structure is
then checked to be exactly lists/tuples of bytes and bools.

:func:`write_bin` writes the same format from any image set with pairs, so a run's
test split (with generated pairs) can be evaluated by insightface's own scripts too.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import atomic_path
from maskcrypt.data.images import MAX_PIXELS, to_chw


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something that could run code."""


class _NoGlobals(pickle.Unpickler):
    """An unpickler that resolves no class or function: nothing in the file can run code."""

    def find_class(self, module: str, name: str) -> object:
        raise _Refused(f"refers to {module}.{name}")

    def persistent_load(self, pid: object) -> object:
        raise _Refused("holds a persistent id")


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], list[bool]]:
    """The encoded images and the per-pair same/different flags of a ``.bin`` file, checked."""
    p = Path(path)
    if not p.is_file():
        raise MaskcryptError(f"{p}: no such file (an insightface verification .bin, e.g. lfw.bin)")
    try:
        with open(p, "rb") as f:
            obj = _NoGlobals(f, encoding="bytes").load()
    except _Refused as exc:
        raise MaskcryptError(f"{p}: not an insightface verification .bin: the pickle {exc} (only lists, tuples, "
                             "bytes and bools are accepted)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError) as exc:
        raise MaskcryptError(f"{p}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise MaskcryptError(f"{p}: expected a pickle of (bins, issame_list), got {_describe(obj)}")
    bins, same = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        bad = next((i for i, b in enumerate(bins) if not isinstance(b, (bytes, bytearray))), None) \
            if isinstance(bins, (list, tuple)) else None
        raise MaskcryptError(f"{p}: bins must be a list of encoded images (bytes), got {_describe(bins)}"
                             + (f" (item {bad} is {_describe(bins[bad])})" if bad is not None else ""))
    if not isinstance(same, (list, tuple)) or not all(isinstance(s, bool) for s in same):
        raise MaskcryptError(f"{p}: issame_list must be a list of bools, got {_describe(same)}")
    if len(bins) % 2:
        raise MaskcryptError(f"{p}: {len(bins)} images, an odd count: images come in consecutive pairs")
    if len(bins) != 2 * len(same):
        raise MaskcryptError(f"{p}: {len(bins)} images for {len(same)} pairs (expected {2 * len(same)})")
    if not same:
        raise MaskcryptError(f"{p}: holds no pairs")
    return [bytes(b) for b in bins], list(same)


def _describe(obj: object) -> str:
    if isinstance(obj, (list, tuple)):
        kinds = sorted({type(x).__name__ for x in obj[:50]})
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(kinds) or 'empty'})"
    return f"a {type(obj).__name__}"


def decode_bin_image(data: bytes, where: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """One encoded image -> uint8 ``C x H x W`` at ``size``; an undecodable one is a named error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise MaskcryptError(f"{where}: {img.width}x{img.height} pixels, over the limit")
            img.load()
            return to_chw(img, size, channels, "none")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskcryptError(f"{where}: not a decodable JPEG/PNG image ({exc})") from None


def write_bin(path: str | os.PathLike[str], images: np.ndarray, pairs: np.ndarray, fmt: str = "png") -> Path:
    """Write ``(bins, issame_list)`` for ``pairs`` rows ``(a, b, same, fold)`` of uint8 ``N x C x H x W`` images.

    Pairs are written fold by fold (stable), so reading the file back with consecutive
    folds gives the same folds when they are of equal size.
    """
    from PIL import Image

    if fmt not in ("png", "jpg"):
        raise MaskcryptError(f"--format: expected png or jpg, got {fmt!r}")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 4 or len(pairs) == 0:
        raise MaskcryptError("write_bin: expected pairs rows (index_a, index_b, same, fold)")
    order = np.argsort(pairs[:, 3], kind="stable")
    cache: dict[int, bytes] = {}

    def encode(i: int) -> bytes:
        if i not in cache:
            arr = images[i]
            img = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0)))
            buf = io.BytesIO()
            img.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
            cache[i] = buf.getvalue()
        return cache[i]

    bins: list[bytes] = []
    same: list[bool] = []
    for a, b, s, _ in pairs[order]:
        bins += [encode(int(a)), encode(int(b))]
        same.append(bool(s))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((bins, same), f, protocol=4)
    return Path(path)
