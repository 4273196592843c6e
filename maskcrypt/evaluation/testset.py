"""The test set of a determination, ready for scoring: gallery, probes, selection and confirmation.

Pure (numpy only, no Ray, no model), so every rule about who is a probe and which
split an image belongs to is tested in milliseconds. Scoring (docs/determination.md, "Scoring"):

* **closed set** - the test identities are training classes: the classifier's top-1
  against the label; the score is the true class's probability;
* **open set** - they are not: per identity ``enroll`` images form a gallery of
  embedding centroids, the others are probes, identification is top-1 cosine
  similarity; the score is the cosine to the true centroid. E's gallery is masked with
  the same mask as the probes (the deployed system masks everything); O's gallery is
  clean (an outsider holding clean photos).

:func:`prepare_test` decides the scoring, picks the gallery and splits the probes into
a *selection* part (what the rules see) and a *confirmation* part (held out, to show
selection bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.stream import ImageBlocks

SPLITS = ("selection", "confirmation")
#: Models whose open-set gallery stays clean (an outsider's model: O, and the adaptive-family attacker ``F``,
#: which does not know the mask); the others see masked galleries.
CLEAN_GALLERY = frozenset({"O", "F"})
#: A rung of the attacker ladder (maskcrypt.selection.ladder): ``ladder:<photos>``, a family attacker trained on that
#: many photos; like F it is judged against a clean gallery.
LADDER = "ladder:"


def clean_gallery(name: str) -> bool:
    """Whether model ``name`` meets clean gallery photos in open-set scoring (O, F and the ladder's rungs)."""
    return name in CLEAN_GALLERY or name.startswith(LADDER)


def pixels(images: np.ndarray | ImageBlocks) -> np.ndarray:
    """The images as an array, fetching them from the object store if they are held there."""
    return images.fetch() if isinstance(images, ImageBlocks) else images


@dataclass(frozen=True)
class TestSet:
    """Test images ready for scoring, ordered gallery first, then probes by split.

    ``labels`` index ``classes``: the models' classes (closed set) or the test
    identities (open set). ``split`` is 0 (selection) or 1 (confirmation) per image;
    ``gallery`` marks enrollment images (open set only). ``order`` maps each position
    back to the index in the images the caller passed. ``images`` are an array, or
    :class:`ImageBlocks` in the object store (a determination at scale).
    """

    images: np.ndarray | ImageBlocks
    labels: np.ndarray
    split: np.ndarray
    gallery: np.ndarray
    scoring: str
    classes: list[str]
    order: np.ndarray
    n_input: int
    dropped: list[str] = field(default_factory=list)  # open set: identities with too few images

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def probes(self, split: str) -> int:
        return int(((~self.gallery) & (self.split == SPLITS.index(split))).sum())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, positions: np.ndarray) -> TestSet:
        """The gallery plus the probes at ``positions`` (indices into this set), all as selection."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.gallery[positions].any():
            raise MaskcryptError("TestSet.subset: positions must name probes, not gallery images")
        rows = np.concatenate([np.flatnonzero(self.gallery), positions])
        split = np.zeros(rows.size, np.int8)
        images = self.images[rows]
        return TestSet(images if isinstance(images, ImageBlocks) else np.ascontiguousarray(images), self.labels[rows],
                       split, self.gallery[rows], self.scoring, self.classes, self.order[rows], self.n_input,
                       self.dropped)


def choose_scoring(test_classes: Sequence[str], model_classes: Sequence[str], scoring: str = "auto") -> str:
    """Closed set when every test identity is a class the models were trained on, else open."""
    if scoring not in ("auto", "closed", "open"):
        raise MaskcryptError(f"--scoring: expected auto, closed or open, got {scoring!r}")
    missing = sorted(set(test_classes) - set(model_classes))
    if scoring == "closed" and missing:
        raise MaskcryptError(f"--scoring closed: test identities {missing[:5]} are not among the models' "
                             f"{len(model_classes)} training classes (use open-set scoring)")
    if scoring != "auto":
        return scoring
    return "open" if missing else "closed"


def prepare_test(
    images: np.ndarray | ImageBlocks,
    labels: np.ndarray,
    class_names: Sequence[str],
    model_classes: Sequence[str],
    scoring: str = "auto",
    confirm_fraction: float = 0.5,
    enroll: int = 2,
    seed: int = 0,
    trained_classes: Sequence[str] | None = None,
) -> TestSet:
    """Decide the scoring, choose the gallery (open set) and the selection/confirmation split.

    Per identity (seeded by ``seed`` and the identity): open set takes ``enroll`` images
    as the gallery (identities with fewer than ``enroll + 1`` images are dropped and
    listed); the probes are split by image, a ``confirm_fraction`` of each identity's
    going to confirmation (0 keeps everything in selection). ``model_classes`` are the
    classifier's outputs, ``trained_classes`` those it saw in training (default: all):
    the scoring is closed set when every test identity is one of the latter. Pure: no
    Ray, no model.
    """
    if len(images.shape) != 4 or images.shape[0] != len(labels):
        raise MaskcryptError(f"test images: expected N x C x H x W with one label each, got {images.shape} "
                             f"and {len(labels)} labels")
    if len(labels) == 0:
        raise MaskcryptError("evaluation: the test set is empty")
    if not 0.0 <= confirm_fraction < 1.0:
        raise MaskcryptError(f"--confirm-fraction: expected a fraction in [0, 1), got {confirm_fraction}")
    if enroll < 1:
        raise MaskcryptError(f"--enroll: expected at least 1 gallery image per identity, got {enroll}")
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    names = [str(class_names[i]) for i in present]
    mode = choose_scoring(names, model_classes if trained_classes is None else trained_classes, scoring)
    n = len(labels)
    gallery = np.zeros(n, bool)
    split = np.zeros(n, np.int8)
    keep = np.ones(n, bool)
    dropped: list[str] = []
    if mode == "closed":
        where = {c: i for i, c in enumerate(model_classes)}
        if not set(names) <= set(where):
            raise MaskcryptError("closed-set scoring: some test identities are not training classes")
        new_labels = np.asarray([where[str(class_names[i])] for i in labels], np.int64)
        classes = [str(c) for c in model_classes]
    else:
        classes = names
        new_labels = np.searchsorted(present, labels).astype(np.int64)
    for k, cls in enumerate(present):
        idx = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, 0xC0F1, int(cls)]).permutation(idx.size)
        idx = idx[order]
        if mode == "open":
            if idx.size < enroll + 1:
                keep[idx] = False
                dropped.append(names[k])
                continue
            gallery[idx[:enroll]] = True
            idx = idx[enroll:]
        n_conf = round(confirm_fraction * idx.size)
        if confirm_fraction > 0 and idx.size >= 2:
            n_conf = min(max(n_conf, 1), idx.size - 1)
        split[idx[idx.size - n_conf:]] = 1
    if mode == "open":
        if not keep.any() or len(np.unique(labels[keep])) < 2:
            raise MaskcryptError(f"open-set scoring: needs at least two identities with {enroll + 1}+ images "
                                 f"(gallery of {enroll} plus a probe); have {len(np.unique(labels[keep]))}")
        kept_ids = np.unique(labels[keep])
        classes = [str(class_names[i]) for i in kept_ids]
        new_labels = np.searchsorted(kept_ids, labels).astype(np.int64)
    pos = np.flatnonzero(keep)
    # Gallery first, then selection probes, then confirmation probes; stable, so each group keeps input order.
    rank = np.where(gallery, 0, 1 + split.astype(np.int64))[pos]
    order = pos[np.argsort(rank, kind="stable")]
    ordered = images[order]
    return TestSet(ordered if isinstance(ordered, ImageBlocks) else np.ascontiguousarray(ordered), new_labels[order],
                   split[order], gallery[order], mode, classes, order, n, dropped)

