"""The adaptive attackers' training jobs: what each one trains on, from what, and its hash.

A job is a plain dict (name, folder, masks, K, O's TrainConfig with the attack epochs,
the photos' rows, the initial weights, and ``meta`` with a ``job_sha256`` over every
input), so :mod:`maskcrypt.determine.attackers` can train, resume or reuse it, and a test
can build the same job the determination builds.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from maskcrypt.config import config_hash
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import sha256_file
from maskcrypt.data import source_split
from maskcrypt.masks import mask_sha256
from maskcrypt.models.checkpoint import MODEL_FILE, list_checkpoints

#: The family attacker's job and folder name (``models/attackers/family/``).
FAMILY = "family"
#: The linkage embedder's job and folder name (``models/attackers/linkage/``).
LINKAGE = "linkage"


def folder_name(mask_id: str) -> str:
    """A mask's attacker folder under ``RUN/models/attackers/``: its id, made safe (never ``family``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", mask_id)
    if safe != mask_id or safe in (FAMILY, LINKAGE, "ladder", "") or safe.startswith("."):
        safe = f"{safe.strip('.') or 'mask'}-{hashlib.sha256(mask_id.encode()).hexdigest()[:8]}"
    return safe


def load_attacker_data(spec: str, o_meta: dict[str, Any], scoring: str,
                       cache: Path | None = None) -> dict[str, Any]:
    """The attacker's labelled images (train split unless the spec names one), labels in O's class space.

    Identities that are O's classes keep O's classifier (labels mapped by name); other
    identities need a new classifier and are usable only as an embedder, in open-set
    scoring: closed-set scoring judges the attacker's classifier against the test labels.
    ``digests``: a content digest per image, for :func:`~maskcrypt.determine.guards.check_attacker_overlap`.
    """
    split = source_split(spec, default_split="train", size=int(o_meta["image_size"]),
                         channels=int(o_meta.get("channels", 3)))
    images, kept = split.to_object_store()  # decoded by Ray tasks into the object store: the trials fetch them
    raw = split
    raw_labels = split.labels[kept]
    o_classes = [str(c) for c in o_meta["class_names"]]
    present = [str(raw.class_names[i]) for i in np.unique(raw_labels)]
    if set(present) <= set(o_classes):
        where = {c: i for i, c in enumerate(o_classes)}
        labels = np.asarray([where[str(raw.class_names[k])] for k in raw_labels], np.int64)
        classes = o_classes
    elif scoring == "closed":
        raise MaskcryptError(f"--attacker-data {raw.spec.text}: identities "
                             f"{sorted(set(present) - set(o_classes))[:5]} are not O's classes; closed-set scoring "
                             "needs the attacker's photos labelled with the test identities (use open-set scoring for "
                             "an attacker with other identities)")
    else:
        labels, classes = np.asarray(raw_labels, np.int64), [str(c) for c in raw.class_names]
    digest = hashlib.sha256(split.fingerprint(cache).encode() + kept.tobytes()).hexdigest()
    found = split.item_digests(cache)
    return {"images": images, "labels": labels, "class_names": classes, "spec": raw.spec.text, "sha256": digest,
            "digests": None if found is None else found[kept]}


def make_job(name: str, folder: Path, masks: np.ndarray, k: int, o_checkpoint: Path, o_meta: dict[str, Any],
             data: dict[str, Any], epochs: int, extra: dict[str, Any] | None = None,
             rows: np.ndarray | None = None, init: str | None = "O") -> dict[str, Any]:
    """One attacker's training: O's TrainConfig with ``epochs``, from O's weights, under ``masks`` (K per image).

    ``rows``: the attacker photos it trains on, as rows of ``data`` (a ladder rung's, each
    photo possibly several times); None: every photo once. ``init``: ``"O"`` (O's weights,
    the worst case), a weights file, or None (random initialisation). The job hash covers everything
    the model depends on (O's weights, the data, the rows, the masks, the settings), so a
    relaunch reuses exactly the attackers trained from the same inputs. The global batch
    is capped at the samples per epoch (a small attacker data set still trains).
    """
    samples = (len(data["labels"]) if rows is None else len(rows)) * int(k)
    tc = {**o_meta["train_config"], "epochs": int(epochs)}
    tc["batch_size"] = int(min(tc["batch_size"], samples))
    if tc["batch_size"] < 2:
        raise MaskcryptError(f"attacker {name}: {samples} training sample(s); needs at least 2 (--attacker-data)")
    model_config = {**o_meta["model_config"], "num_classes": len(data["class_names"])}
    shas = [mask_sha256(m) for m in masks]
    init_file = str(Path(o_checkpoint) / MODEL_FILE) if init == "O" else init
    key = {"attacker": name if name in (FAMILY, LINKAGE) else "known", "init": init if init != "O" else None,
           "init_sha256": sha256_file(Path(init)) if init not in ("O", None) else None,
           "o_model_sha256": o_meta.get("model_sha256"),
           "attacker_data": data["spec"], "attacker_data_sha256": data["sha256"], "train_config": tc,
           "model_config": model_config, "masks_sha256": sorted(shas), "k": int(k),
           **({} if rows is None else {"rows_sha256": hashlib.sha256(np.asarray(rows, np.int64).tobytes())
                                       .hexdigest()})}
    meta = {"kind": "recognizer", "role": "attacker", "attacker": key["attacker"], "name": name,
            "model_config": model_config, "train_config": tc, "train_config_sha256": config_hash(tc),
            "class_names": data["class_names"],
            "trained_classes": [data["class_names"][i] for i in np.unique(data["labels"])],
            "image_size": int(o_meta["image_size"]), "channels": int(o_meta.get("channels", 3)),
            "attack_epochs": int(epochs), "attacker_data": data["spec"], "attacker_data_sha256": data["sha256"],
            "init": str(o_checkpoint) if init == "O" else (init or "random"),
            "init_model_sha256": o_meta.get("model_sha256") if init == "O" else key["init_sha256"], "masks": len(shas),
            "masks_sha256": shas if len(shas) <= 16 else config_hash({"sha256": sorted(shas)}), "k": int(k),
            "job_sha256": config_hash(key), **(extra or {})}
    return {"name": name, "folder": str(folder), "masks": np.ascontiguousarray(masks, np.uint8), "k": int(k),
            "meta": meta, "init": init_file, "cpus": 1.0, "gpus": 0.0,
            "rows": None if rows is None else np.asarray(rows, np.int64)}


def masks_per_photo(e_meta: dict[str, Any]) -> int:
    """E's K (masks per photo and epoch): the family attacker's recipe, and every adaptive attacker's steps."""
    return int((e_meta.get("mask_sampling") or {}).get("k", 4))


def known_mask_job(mask_id: str, folder: Path, mask: np.ndarray, k: int, o_checkpoint: Path, o_meta: dict[str, Any],
                   data: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The known-mask attacker of one mask: K copies of that mask per photo and epoch, so it takes as many
    optimizer steps as the family attacker (K fresh masks per photo) and the two differ only in what they know."""
    return make_job(mask_id, folder, mask[None], k, o_checkpoint, o_meta, data, epochs, {"mask_id": mask_id})


def job_state(job: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``done`` (complete, same inputs), ``resume`` (an epoch or more done), ``new``, or ``stale`` (other inputs)."""
    ckpts = list_checkpoints(job["folder"]) if Path(job["folder"]).is_dir() else []
    if not ckpts:
        return "new", None
    meta = ckpts[-1][1]
    if meta.get("job_sha256") != job["meta"]["job_sha256"]:
        return "stale", meta
    return ("done" if meta.get("epoch") == meta.get("epochs") else "resume"), meta
