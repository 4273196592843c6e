"""A run directory with untrained models, a small library and target masks, built without Ray (both tiers)."""

from __future__ import annotations

import torch

from maskcrypt.masks import MaskLibrary
from maskcrypt.masks.generate import generate_into
from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
from maskcrypt.models.checkpoint import save_checkpoint

SIZE = 16


DATA = f"synthetic:identities=20,per_identity=15,size={SIZE}"


def _fake_run(root, targets: int = 2):
    """A run directory with untrained (but distinct) models, a small library and target masks: no Ray, seconds."""
    torch.manual_seed(0)
    lib = MaskLibrary.open_or_create(str(root / "masks"), SIZE, SIZE)
    generate_into(lib, 12, seed=0)
    train = {"train_config_sha256": "same", "train_config": {}}
    for role in ("original", "encrypted"):
        cfg = RecognizerConfig(num_classes=20, image_size=SIZE, width=8)
        model = Recognizer(cfg)
        model.train()
        model(torch.randint(0, 256, (16, 3, SIZE, SIZE), dtype=torch.uint8))  # BatchNorm statistics off defaults
        save_checkpoint(root / "models" / role / "checkpoint_epoch_0001", model.eval(),
                        {"kind": "recognizer", "role": role, "model_config": cfg.to_dict(), "epoch": 1, "epochs": 1,
                         "image_size": SIZE, "channels": 3, "class_names": [f"id{i:03d}" for i in range(20)],
                         **train})
    r = Inpainter(InpainterConfig(width=4, iterations=1, image_size=SIZE)).eval()
    save_checkpoint(root / "models" / "inpainter" / "checkpoint_epoch_0001", r,
                    {"kind": "inpainter", "model_config": r.config.to_dict(), "epoch": 1, "epochs": 1})
    table = lib.table()
    ids = table.column("mask_id").to_pylist()[:targets]
    keep = table.slice(0, targets)
    from maskcrypt.core.fileio import write_json, write_parquet

    write_parquet(keep, root / "targets.parquet")
    write_json(root / "targets.json", {"targets": [{"mask_id": m, "sha256": s} for m, s in
                                                   zip(ids, keep.column("sha256").to_pylist())], "scoring": "closed"})
    write_json(root / "run.json", {"prepare": {"data": DATA}})
    return root, ids
