"""Data set spec strings: ``KIND:PATH#key=value,...`` parsed into a typed, validated object.

Examples::

    imagefolder:/data/vggface2/train#split=all,min_images_per_identity=20
    lfw:/data/lfw#split=all,crop=150,size=112
    celeba:/data/celeba#split=train
    idx:/data/mnist#split=test
    npz:faces.npz
    synthetic:identities=50,per_identity=40,size=32#split=test
    synthetic:#split=test,pairs=generate
    bin:/data/faces_emore/lfw.bin

``synthetic`` has no path: its options go after the colon (and may also follow ``#``).
A path containing ``#`` is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.synthetic import DEFAULT_IDENTITIES, DEFAULT_PER_IDENTITY, DEFAULT_TEST_FRACTION

KINDS = ("imagefolder", "lfw", "celeba", "idx", "npz", "synthetic", "bin")
SPLITS = ("train", "test", "val", "all")

#: Options every kind understands, with their types and defaults.
COMMON: dict[str, tuple[type, Any]] = {
    "split": (str, ""),  # "" = the caller's default (train for training, test for evaluation)
    "size": (str, ""),  # "" = the kind's default; "64" or "64x48" (H x W)
    "channels": (int, 0),  # 0 = the source's own (1 for grey sources, 3 otherwise)
    "limit": (int, 0),  # 0 = no limit; else a seeded subset of that many images of the split
    "seed": (int, 0),
    "test_fraction": (float, 0.2),
    "split_by": (str, "image"),  # image | identity (disjoint identities, for open-set tests)
    # identity splits: the fraction of each training identity's images held out as ``val`` (training's closed-set
    # held-out images: the test split has none of the training classes)
    "val_fraction": (float, 0.1),
    "min_images_per_identity": (int, 0),
    "max_classes": (int, 0),
    "crop": (str, ""),  # "" = kind default, "none", "center", "S" (centre S x S), "x0,y0,x1,y1"
    "strict": (int, 0),
    # Verification pairs: "" = the source's own (LFW pairs.txt, a .bin's), "generate" = 10 seeded folds
    # from the labels (maskcrypt.data.pairs); lfw also takes a pairs file path.
    "pairs": (str, ""),
    "pairs_per_fold": (int, 300),  # generate: same (and as many different) pairs per fold
}
#: Extra options per kind.
EXTRA: dict[str, dict[str, tuple[type, Any]]] = {
    # offset: variants offset .. offset + per_identity - 1 of each identity (images disjoint from offset 0's)
    "synthetic": {"identities": (int, DEFAULT_IDENTITIES), "per_identity": (int, DEFAULT_PER_IDENTITY),
                  "offset": (int, 0), "test_fraction": (float, DEFAULT_TEST_FRACTION)},
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec. ``options`` holds every option with its default filled in."""

    kind: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str) -> Any:
        return self.options[key]

    @property
    def split(self) -> str:
        return str(self.options["split"])

    def with_options(self, **updates: Any) -> DataSpec:
        """A copy with some options replaced (validated like parsed ones)."""
        opts = dict(self.options)
        known = {**COMMON, **EXTRA.get(self.kind, {})}
        for k, v in updates.items():
            if k not in known:
                raise MaskcryptError(f"data spec {self.text!r}: unknown option {k!r}")
            opts[k] = _coerce(self.text, k, known[k][0], str(v))
        _validate(self.text, self.kind, opts)
        return replace(self, options=opts)

    def held_out(self) -> DataSpec:
        """The split of this source holding unseen images of its *training* identities: ``val`` under
        ``split_by=identity`` (whose test split has other identities), else ``test``. Training measures
        its held-out accuracy there, and the training report its closed-set table."""
        return self.with_options(split="val" if self.get("split_by") == "identity" else "test")

    def __str__(self) -> str:
        return self.text


def _coerce(spec: str, key: str, typ: type, raw: str) -> Any:
    try:
        return typ(raw)
    except ValueError:
        raise MaskcryptError(
            f"data spec {spec!r}: option {key}={raw!r} is not a valid {typ.__name__}"
        ) from None


def _parse_options(spec: str, text: str, known: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not text:
        return out
    # Crop boxes contain commas: "crop=10,20,110,120" -> join bare numbers to the previous key.
    items: list[str] = []
    for part in text.split(","):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    for item in items:
        if "=" not in item:
            raise MaskcryptError(f"data spec {spec!r}: expected key=value options, got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in known:
            raise MaskcryptError(
                f"data spec {spec!r}: unknown option {key!r} (known: {', '.join(sorted(known))})"
            )
        out[key] = _coerce(spec, key, known[key][0], raw)
    return out


def _validate(spec: str, kind: str, opts: dict[str, Any]) -> None:
    if opts["split"] and opts["split"] not in SPLITS:
        raise MaskcryptError(f"data spec {spec!r}: split must be one of {', '.join(SPLITS)}, got {opts['split']!r}")
    if opts["split_by"] not in ("image", "identity"):
        raise MaskcryptError(f"data spec {spec!r}: split_by must be image or identity, got {opts['split_by']!r}")
    if not 0.0 < opts["test_fraction"] < 1.0:
        raise MaskcryptError(f"data spec {spec!r}: test_fraction must be in (0, 1), got {opts['test_fraction']}")
    if not 0.0 <= opts["val_fraction"] < 1.0:
        raise MaskcryptError(f"data spec {spec!r}: val_fraction must be in [0, 1), got {opts['val_fraction']}")
    if opts["channels"] not in (0, 1, 3):
        raise MaskcryptError(f"data spec {spec!r}: channels must be 1 or 3, got {opts['channels']}")
    for key in ("limit", "min_images_per_identity", "max_classes"):
        if opts[key] < 0:
            raise MaskcryptError(f"data spec {spec!r}: {key} must be >= 0, got {opts[key]}")
    if opts["pairs"] not in ("", "generate") and kind != "lfw":
        raise MaskcryptError(f"data spec {spec!r}: pairs must be 'generate' (or a pairs file, for lfw), "
                             f"got {opts['pairs']!r}")
    if kind == "bin" and opts["pairs"]:
        raise MaskcryptError(f"data spec {spec!r}: a .bin holds its own pairs and no identity labels to "
                             "generate others from; drop the pairs option")
    if opts["pairs_per_fold"] < 1:
        raise MaskcryptError(f"data spec {spec!r}: pairs_per_fold must be >= 1, got {opts['pairs_per_fold']}")
    if opts["size"]:
        parse_size(opts["size"], f"data spec {spec!r}: size")
    if kind == "synthetic":
        for key in ("identities", "per_identity"):
            if opts[key] < 1:
                raise MaskcryptError(f"data spec {spec!r}: {key} must be >= 1, got {opts[key]}")
        if opts["offset"] < 0:
            raise MaskcryptError(f"data spec {spec!r}: offset must be >= 0, got {opts['offset']}")


def parse_size(text: str | int, what: str = "size") -> tuple[int, int]:
    """``64`` -> (64, 64); ``64x48`` -> (64, 48) as (height, width)."""
    raw = str(text).lower()
    try:
        h, w = (int(v) for v in raw.split("x", 1)) if "x" in raw else (int(raw), int(raw))
    except ValueError:
        raise MaskcryptError(f"{what}: expected N or HxW pixels, got {text!r}") from None
    if h < 4 or w < 4:
        raise MaskcryptError(f"{what}: expected at least 4x4 pixels, got {text!r}")
    return h, w


def parse_spec(text: str) -> DataSpec:
    """Parse a spec string; an unknown kind or option is an error that lists the valid ones."""
    if ":" not in text:
        raise MaskcryptError(
            f"data spec {text!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)} "
            "(e.g. imagefolder:/data/faces or synthetic:)"
        )
    kind, rest = text.split(":", 1)
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise MaskcryptError(f"data spec {text!r}: unknown kind {kind!r}, expected one of {', '.join(KINDS)}")
    body, _, frag = rest.partition("#")
    known = {**COMMON, **EXTRA.get(kind, {})}
    opts = {k: default for k, (_, default) in known.items()}
    if kind == "synthetic":
        path = ""
        opts.update(_parse_options(text, body, known))
    else:
        path = body.strip()
        if not path:
            raise MaskcryptError(f"data spec {text!r}: {kind} needs a path, e.g. {kind}:/data/set")
    opts.update(_parse_options(text, frag, known))
    _validate(text, kind, opts)
    return DataSpec(kind=kind, path=path, options=opts, text=text)


def closed_held_out(text: str) -> str:
    """The spec of a source's unseen images of its *training* identities, for closed-set figures (training's
    report): under ``split_by=identity`` its ``val`` split (its test split holds other identities); otherwise the
    text unchanged (the caller's default ``test`` split is that already). An explicit split is kept."""
    spec = parse_spec(text)
    if spec.get("split_by") != "identity" or spec.split not in ("", "train"):
        return text
    return text + ("" if text.endswith(("#", ",")) else "," if "#" in text else "#") + "split=val"


def absolute_spec(text: str) -> str:
    """The spec with its path made absolute (synthetic, URIs and "" unchanged).

    Jobs call this before any work: under ``ray job submit`` the working directory is a
    temporary copy, so a relative path would name a different (or no) directory.
    """
    if not text:
        return text
    spec = parse_spec(text)
    if not spec.path or "://" in spec.path:
        return text

    _, _, frag = text.split(":", 1)[1].partition("#")
    return f"{spec.kind}:{Path(spec.path).expanduser().resolve()}" + (f"#{frag}" if frag else "")
