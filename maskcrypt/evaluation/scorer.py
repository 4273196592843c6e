"""The evaluation actor: test images and models resident on one device, masks streaming through.

A :class:`CrossProductScorer` is a Ray Data callable class (and a plain Ray actor for
the adaptive race). It receives the test set once (an object reference, resolved in
the constructor), builds a :class:`~maskcrypt.models.predictor.Predictor` over the
recognizers (and R for the attack), and answers each input row with small rows of
counts per split: ``n``, ``correct_<model>``, ``score_<model>`` (the sum of the
per-image scores), optionally the per-image correctness bit-packed (``hits_<model>``);
and where intervals over people need them (every attack row; open set's rows) the same
counts per identity (``idc:<column>``, with ``idn`` the probes per identity:
:data:`maskcrypt.core.stats.IDC`), a few bytes per identity.
It never materializes the images x masks cross product: each mask is overlaid chunk by
chunk inside the predictor. :mod:`maskcrypt.selection.rules` turns the counts into tables.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.stats import IDC, IDN, encode_counts
from maskcrypt.evaluation.testset import LADDER, SPLITS, clean_gallery, pixels
from maskcrypt.masks.core import unpack_masks
from maskcrypt.models.predictor import Predictor
from maskcrypt.models.recognizer import Recognizer


def sampled_draw(seed: int, bucket: int, repeat: int, pool_size: int, n_input: int) -> np.ndarray:
    """Table 1's sampled mode: the bucket mask (index in library order) each input image gets in a repetition.

    Seeded by ``(seed, bucket, repeat)`` and drawn over the caller's image order, so the
    draw depends neither on how the test set is ordered inside the actor nor on where it
    runs; the driver calls it too, to ship only the masks some image will get.
    """
    return np.random.default_rng([int(seed), int(bucket), int(repeat)]).integers(0, pool_size, n_input)


def unpack_on_device(packed: Any, height: int, width: int) -> Any:
    """``np.unpackbits`` for a uint8 tensor of packed rows, on the tensor's device: ``(n, H, W)`` 0/1 masks."""
    import torch

    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :height * width].reshape(-1, height, width)


def choose_device(gpus_per_actor: float, cuda_available: bool) -> str:
    """The actor's device: CUDA when it was given a GPU, else the CPU; a GPU it cannot see is an error.

    Ray hides GPUs from actors that did not ask for one (``CUDA_VISIBLE_DEVICES``), so an
    actor without a GPU share never lands on one by accident.
    """
    if gpus_per_actor > 0:
        if not cuda_available:
            raise MaskcryptError(f"evaluation actor: given {gpus_per_actor} GPU but CUDA is not available in it "
                                 "(driver or torch build without CUDA)")
        return "cuda"
    return "cpu"


def fidelity_sums(filler: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """A fill's per-probe PSNR and SSIM (``Predictor.outputs(..., fidelity=True)``) as ``fid:<filler>:<figure>``
    vectors, which :meth:`CrossProductScorer._per_split` sums per split like the counts."""
    return {f"fid:{filler}:{k[len('fidelity:'):]}": v.double() for k, v in outputs.items()
            if k.startswith("fidelity:")}


class CentroidCache:
    """Each racing mask's masked-gallery centroids, kept between the race's rounds, least recently used out first.

    In open set, E judges a probe against the gallery embedded under the same mask, so a
    race that re-embedded the gallery every round it measures a mask would pay the gallery
    many times over (160 images a mask on the embedded default, ~3,400 on LFW) to measure
    16-100 probes. The cache makes it once per mask: the driver sends every round of a
    mask to the same actor, and releases the mask (:meth:`drop`) when the race stops
    measuring it. ``budget_bytes`` caps what one actor holds (LFW's 1,680 identities x 512
    floats are 3.4 MB a mask): past it the least recently measured masks go, and come back
    at the price of one more gallery if the race returns to them, which the counts report.
    """

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.nbytes = 0
        self.evicted = 0

    @staticmethod
    def _size(centroids: dict[str, Any]) -> int:
        return sum(int(t.numel()) * t.element_size() for t in centroids.values())

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: str, centroids: dict[str, Any]) -> None:
        self.drop([key])
        size = self._size(centroids)
        while self.entries and self.nbytes + size > self.budget:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= self._size(old)
            self.evicted += 1
        if size <= self.budget:
            self.entries[key] = centroids
            self.nbytes += size

    def drop(self, keys: Sequence[str]) -> None:
        for key in keys:
            old = self.entries.pop(key, None)
            if old is not None:
                self.nbytes -= self._size(old)

    def __len__(self) -> int:
        return len(self.entries)


class CrossProductScorer:
    """Counts per input row and split, for one of three kinds of rows (``mode``).

    ``masks``: each row is a library mask (``mask_id``, ``bucket``, ``bits``; with
    ``start``/``stop`` only those selection probes: the adaptive race); every probe of
    the requested splits is recognized under it. ``sampled``: each row is a ``(bucket,
    repeat, seed)`` task; every image gets one mask drawn at random from the bucket
    (bucket 0: no mask). ``attack``: each row is a mask; the masked probes are also
    inpainted by R, and E and O recognize both versions (paired counts); with ``attackers``
    every other attacker of :mod:`maskcrypt.determine.attackers` is counted under the same mask too
    (``atk:<name>`` columns): O on classical fills, the adaptive-family model ``F`` (among
    ``models``) on masked and R-filled probes, and the mask's own adaptive-known model
    (``known``: mask id -> checkpoint).
    """

    def __init__(self, test: Any, models: dict[str, str], splits: Sequence[str] = ("selection",),
                 precision: str = "auto", images_per_chunk: int = 0, mode: str = "masks",
                 bucket_masks: Any = None, inpainter: str | None = None, per_image: bool = False,
                 timing: bool = False, gpus: float = 0.0, attackers: Sequence[str] = (),
                 known: dict[str, str] | None = None, fidelity: bool = True, gallery_cache_mb: int = 1024):
        import ray
        import torch

        # Object refs passed as constructor arguments arrive unresolved.
        test = ray.get(test) if isinstance(test, ray.ObjectRef) else test
        if isinstance(bucket_masks, ray.ObjectRef):
            bucket_masks = ray.get(bucket_masks)
        device = choose_device(gpus, torch.cuda.is_available())
        self.predictor = Predictor.from_checkpoints(models, device, precision, images_per_chunk, inpainter)
        self.precision, self.chunk = precision, images_per_chunk
        self.attackers, self.known = tuple(attackers), dict(known or {})
        self.fidelity = fidelity  # attack mode: also each fill's PSNR and SSIM
        self.names = list(models)
        with warnings.catch_warnings():
            # Arrays from the object store are read-only and shared; we never write to them.
            warnings.simplefilter("ignore", UserWarning)
            # Test images arrive as an array or as blocks in the object store (ImageBlocks): fetched here, once.
            self.x = self.predictor.to_device(torch.from_numpy(pixels(test.images)))
            # Sampled mode: per bucket the library's mask count and, packed, only the masks some image is drawn
            # (sorted library indices): bounded by repeats x images, not by the library (100k masks at 112 px
            # would be 1.25 GB unpacked in every actor).
            self.bucket_masks = {
                int(b): (int(p["size"]), np.asarray(p["index"]), torch.from_numpy(p["packed"]).to(device))
                for b, p in (bucket_masks or {}).items()}
        self.y = torch.from_numpy(np.asarray(test.labels)).to(device)
        self.h, self.w = test.size
        self.open = test.scoring == "open"
        self.n_classes = len(test.classes)
        n_gallery = int(test.gallery.sum())
        self.gallery = slice(0, n_gallery)
        self.splits = [s for s in SPLITS if s in splits]
        # Probes are ordered by split after the gallery, so every split is one contiguous slice.
        bounds = np.cumsum([n_gallery] + [test.probes(s) for s in SPLITS])
        self.ranges = {s: (int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(SPLITS)}
        self.probes = slice(min(self.ranges[s][0] for s in self.splits), max(self.ranges[s][1] for s in self.splits))
        # Each probe's identity as a position among its split's identities (sorted labels), for per-identity counts.
        labels = np.asarray(test.labels)
        self.identity = np.zeros(self.probes.stop - self.probes.start, dtype=np.int64)
        self.identities: dict[str, int] = {}
        for s in self.splits:
            a, b = self.ranges[s]
            present = np.unique(labels[a:b])
            self.identity[a - self.probes.start:b - self.probes.start] = np.searchsorted(present, labels[a:b])
            self.identities[s] = int(present.size)
        # Per-identity counts: always for the attack (its figures are about people), and in open set (Table 1, Table
        # 2 and the per-mask figures are about people there too).
        self.by_identity = test.scoring == "open" or mode == "attack"
        self.order = np.asarray(test.order)
        self.n_input = test.n_input
        self.mode = mode
        self.per_image = per_image
        self.timing = timing
        self.node = ray.get_runtime_context().get_node_id() if timing and ray.is_initialized() else ""
        self.clean_centroids: dict[str, Any] = {}
        self.race_cache = CentroidCache(gallery_cache_mb << 20)
        #: Gallery images embedded and not yet reported (the clean galleries' once-per-actor pass, here; the race's
        #: masked galleries as they are embedded): the next result row carries them as ``gallery_passes``.
        self.unreported_gallery = 0
        if self.open:
            clean = [n for n in self.names if clean_gallery(n)]
            for name, emb in self._outputs(self.gallery, None, clean).items():
                self.clean_centroids[name] = self.predictor.centroids(emb, self.y[self.gallery], self.n_classes)
            self.unreported_gallery = n_gallery * len(clean)

    # -- building blocks -------------------------------------------------------------------------------
    def _outputs(self, rows: slice, masks_for: Callable[[int, int], Any] | None, names: Sequence[str],
                 fill: bool | str = False, fidelity: bool = False) -> dict[str, Any]:
        """Logits (closed set) or unit embeddings (open set) of images ``rows``, masked and optionally inpainted.

        ``masks_for(start, stop)`` gives the mask (H x W) or masks (n x H x W) of images
        ``start:stop`` (positions in the test set); None means clean images.
        """
        masks = None if masks_for is None else (lambda s, e: masks_for(rows.start + s, rows.start + e))
        return self.predictor.outputs(self.x[rows], masks, embed=self.open, fill=fill, names=names,
                                      fidelity=fidelity)

    def _gallery_centroids(self, masks_for: Callable[[int, int], Any] | None) -> dict[str, Any]:
        if not self.open:
            return {}
        # E-like models see the gallery under the same masks as the probes (clean when masks_for is None).
        masked = [n for n in self.names if not clean_gallery(n)]
        outs = self._outputs(self.gallery, masks_for, masked)
        labels = self.y[self.gallery]
        return {**{n: self.predictor.centroids(o, labels, self.n_classes) for n, o in outs.items()},
                **self.clean_centroids}

    def _judge(self, name: str, out: Any, centroids: dict[str, Any], rows: slice | None = None) -> tuple[Any, Any]:
        """Per-probe correctness and score from a model's outputs on the probes (or on ``rows``)."""
        return self.predictor.judge(out, self.y[self.probes if rows is None else rows], centroids.get(name))

    def _by_identity(self, a: int, b: int, split: str, counts: dict[str, Any]) -> dict[str, bytes]:
        """``idn`` and ``idc:<key>`` of probes ``a:b`` (positions among the probes) for the count vectors ``counts``."""
        where, k = self.identity[a:b], self.identities[split]
        out = {IDN: encode_counts(np.bincount(where, minlength=k))}
        for key, part in counts.items():
            out[IDC + key] = encode_counts(np.bincount(where, weights=part.cpu().numpy().astype(np.float64),
                                                       minlength=k).round())
        return out

    def _per_split(self, vectors: dict[str, Any]) -> list[dict[str, Any]]:
        """Sum per-probe vectors over each split: ``n``, and per key ``correct_``/``score_`` (and per identity)."""
        rows = []
        for s in self.splits:
            a, b = self.ranges[s]
            a, b = a - self.probes.start, b - self.probes.start
            row: dict[str, Any] = {"split": s, "n": b - a}
            counts = {}
            for key, v in vectors.items():
                part = v[a:b]
                row[key] = float(part.double().sum()) if part.is_floating_point() else int(part.sum())
                if not part.is_floating_point():
                    counts[key] = part
                if self.per_image and key.startswith("correct_"):
                    row["hits_" + key[len("correct_"):]] = np.packbits(part.cpu().numpy()).tobytes()
            if self.by_identity:
                row.update(self._by_identity(a, b, s, counts))
            rows.append(row)
        return rows

    def _counts(self, masks_for: Callable[[int, int], Any] | None) -> list[dict[str, Any]]:
        """Per split: every model's correct count and score sum under one mask assignment."""
        cents = self._gallery_centroids(masks_for)
        vectors = {}
        for name, out in self._outputs(self.probes, masks_for, self.names).items():
            vectors[f"correct_{name}"], vectors[f"score_{name}"] = self._judge(name, out, cents)
        return self._per_split(vectors)

    def _with_fill_psnr(self, found: list[dict[str, Any]],
                        masks_for: Callable[[int, int], Any]) -> list[dict[str, Any]]:
        """``found`` (counts per split) plus the sums of R's and the mean fill's hole PSNR over each split's probes."""
        psnr_r, psnr_mean = self.predictor.fill_psnr(
            self.x[self.probes], lambda s, e: masks_for(self.probes.start + s, self.probes.start + e))
        sums = self._per_split({"psnr_sum_R": psnr_r.double(), "psnr_sum_mean_fill": psnr_mean.double()})
        return [row | {k: v for k, v in extra.items() if k.startswith("psnr_")} for row, extra in zip(found, sums)]

    def _race_centroids(self, mask_id: str, masks_for: Callable[[int, int], Any]) -> dict[str, Any]:
        """Open set: the gallery centroids a racing mask is judged against, its masked ones embedded once per race."""
        if not self.open:
            return {}
        masked = self.race_cache.get(mask_id)
        if masked is None:
            names = [n for n in self.names if not clean_gallery(n)]
            masked = {n: c for n, c in self._gallery_centroids(masks_for).items() if n in names}
            self.race_cache.put(mask_id, masked)
            self.unreported_gallery += (self.gallery.stop - self.gallery.start) * len(names)
        return {**masked, **self.clean_centroids}

    def forget(self, mask_ids: Sequence[str]) -> int:
        """Drop masks the race will not measure again; returns how many masks the actor still holds."""
        self.race_cache.drop(list(mask_ids))
        return len(self.race_cache)

    def _range_counts(self, mask: Any, start: int, stop: int, mask_id: str) -> list[dict[str, Any]]:
        """Counts for one mask on probes ``start:stop`` only (positions among the probes): the adaptive race.

        ``gallery_passes``: gallery images this call embedded (open set: the mask's first
        call on this actor, and the actor's clean galleries on its very first call).
        """
        def fixed(s: int, e: int) -> Any:
            return mask

        cents = self._race_centroids(mask_id, fixed)
        rows = slice(self.probes.start + start, self.probes.start + stop)
        row: dict[str, Any] = {"split": "selection", "n": stop - start, "gallery_passes": self.unreported_gallery}
        self.unreported_gallery = 0
        counts = {}
        for name, out in self._outputs(rows, fixed, self.names).items():
            correct, score = self._judge(name, out, cents, rows)
            row[f"correct_{name}"] = int(correct.sum())
            row[f"score_{name}"] = float(score.double().sum())
            counts[f"correct_{name}"] = correct
        if self.by_identity:  # open set: the race's driver adds them up over a mask's rounds
            row.update(self._by_identity(start, stop, "selection", counts))
        return [row]

    def _attack(self, mask: Any, mask_id: str = "") -> list[dict[str, Any]]:
        """Paired counts for one mask: E on masked vs on inpainted probes, O on both, and every other attacker.

        Each attacker is judged by the determination's scoring rules: closed set, its
        top-1 against the label; open set, top-1 cosine against a gallery of centroids,
        clean for O and the family model (photos from elsewhere), and for the mask's
        known-mask model both clean and masked with the same mask. Every fill's fidelity
        (R's, Telea's, Navier-Stokes') is summed per split as ``fid:<filler>:<figure>``
        from the very images the recognizers judge. The first split's row also carries this
        mask's recognizer forward passes and fills (the stage's cost).
        """
        def fixed(s: int, e: int) -> Any:
            return mask

        n_probes = self.probes.stop - self.probes.start
        n_gallery = self.gallery.stop if self.open else 0
        passes = {"forward_passes": 0, "fills_R": 0, "fills_classical": 0}
        cents = self._gallery_centroids(fixed)
        names = [n for n in ("E", "O", "F") if n in self.names]
        rungs = [n for n in self.names if n.startswith(LADDER)]
        masked = self._outputs(self.probes, fixed, names + rungs)
        filled = self._outputs(self.probes, fixed, names, fill="R", fidelity=self.fidelity)
        passes["forward_passes"] += (2 * len(names) + len(rungs)) * n_probes + n_gallery  # E's gallery: masked
        passes["fills_R"] += n_probes
        before, _ = self._judge("E", masked["E"], cents)
        after, _ = self._judge("E", filled["E"], cents)
        vectors = {
            "both": before & after, "before_only": before & ~after, "after_only": ~before & after,
            "neither": ~before & ~after,
            "correct_O_masked": self._judge("O", masked["O"], cents)[0],
            "correct_O_inpainted": self._judge("O", filled["O"], cents)[0],
            **fidelity_sums("R", filled),
        }
        for method in ("telea", "ns"):
            if f"{method}+O" in self.attackers:
                out = self._outputs(self.probes, fixed, ["O"], fill=method, fidelity=self.fidelity)
                vectors[f"atk:{method}+O"] = self._judge("O", out["O"], cents)[0]
                vectors.update(fidelity_sums(method, out))
                passes["forward_passes"] += n_probes
                passes["fills_classical"] += n_probes
        if "F" in names:
            if "adaptive-family" in self.attackers:
                vectors["atk:adaptive-family"] = self._judge("F", masked["F"], cents)[0]
            if "adaptive-family+R" in self.attackers:
                vectors["atk:adaptive-family+R"] = self._judge("F", filled["F"], cents)[0]
        for rung in rungs:  # the attacker ladder: each rung's recognizer on the masked probes
            vectors[rung] = self._judge(rung, masked[rung], cents)[0]
        if "adaptive-known" in self.attackers and mask_id in self.known:
            vectors.update(self._known(mask_id, fixed))
            passes["forward_passes"] += n_probes + 2 * n_gallery
        rows = self._per_split(vectors)
        for i, row in enumerate(rows):
            row.update({k: (v if i == 0 else 0) for k, v in passes.items()})
        return rows

    def _known(self, mask_id: str, fixed: Callable[[int, int], Any]) -> dict[str, Any]:
        """The adaptive-known attacker of one mask: its own model (trained on that mask) on the masked probes."""
        own = Predictor({"K": Recognizer.from_checkpoint(self.known[mask_id])}, self.predictor.device,
                        self.precision, self.chunk)
        probes = own.outputs(self.x[self.probes], fixed, embed=self.open)["K"]
        if not self.open:
            return {"atk:adaptive-known": own.judge(probes, self.y[self.probes])[0]}
        labels = self.y[self.gallery]
        gallery = self.x[self.gallery]
        clean = own.centroids(own.outputs(gallery, None, embed=True)["K"], labels, self.n_classes)
        masked = own.centroids(own.outputs(gallery, fixed, embed=True)["K"], labels, self.n_classes)
        y = self.y[self.probes]
        return {"atk:adaptive-known": own.judge(probes, y, clean)[0],
                "atk:adaptive-known/masked-gallery": own.judge(probes, y, masked)[0]}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        rows: list[dict[str, Any]] = []
        device = self.predictor.device
        if self.mode in ("attack", "masks"):
            masks = torch.from_numpy(unpack_masks(list(batch["bits"]), self.h, self.w)).to(device)
            for i in range(masks.shape[0]):
                key = {"mask_id": str(batch["mask_id"][i])}
                if self.mode == "masks":
                    key["bucket"] = int(batch["bucket"][i])
                    if "start" in batch:
                        found = self._range_counts(masks[i], int(batch["start"][i]), int(batch["stop"][i]),
                                                   key["mask_id"])
                    else:
                        found = self._counts(lambda s, e, m=masks[i]: m)
                else:
                    found = self._attack(masks[i], key["mask_id"])
                if self.timing:
                    key |= {"t_done": time.time(), "worker": os.getpid(), "node": self.node}
                rows.extend(key | r for r in found)
        elif self.mode == "sampled":
            for bucket, repeat, seed in zip(batch["bucket"], batch["repeat"], batch["seed"]):
                bucket = int(bucket)
                key = {"bucket": bucket, "repeat": int(repeat)}
                if bucket == 0:
                    found = self._counts(None)
                else:
                    size, index, packed = self.bucket_masks[bucket]
                    pick = sampled_draw(int(seed), bucket, int(repeat), size, self.n_input)[self.order]
                    row_t = torch.from_numpy(np.searchsorted(index, pick)).to(device)  # rows of ``packed``

                    def drawn(s: int, e: int, p: Any = packed, k: Any = row_t) -> Any:
                        return unpack_on_device(p[k[s:e]], self.h, self.w)

                    found = self._counts(drawn)
                    if self.predictor.inpainter is not None:  # the training report: R's fidelity under the draw
                        found = self._with_fill_psnr(found, drawn)
                rows.extend(key | r for r in found)
        else:
            raise MaskcryptError(f"scorer: unknown mode {self.mode!r}")
        return {k: np.asarray([r[k] for r in rows], dtype=object if k.startswith(("hits_", IDC, IDN)) else None)
                for k in rows[0]}

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same as calling the instance: the method name a plain Ray actor is called by."""
        return self(batch)
