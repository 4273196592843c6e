"""The Ray Data evaluator against a plain in-process loop, on the tiny trained run (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_SIZE

from maskcrypt.data import load
from maskcrypt.errors import MaskcryptError
from maskcrypt.evaluate import EvalSettings, evaluate_masks, evaluate_sampled
from maskcrypt.masks import MaskLibrary, overlay
from maskcrypt.masks.generate import generate_into
from maskcrypt.models import Recognizer

FP32 = EvalSettings(actors=2, masks_per_batch=3, images_per_chunk=16, precision="fp32")


def _reference(models: dict[str, Recognizer], x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None,
               chunk: int = 16) -> dict[str, int]:
    """What the evaluator must count, done the obvious way."""
    out = {}
    with torch.inference_mode():
        for name, model in models.items():
            correct = 0
            for s in range(0, len(x), chunk):
                xb = x[s:s + chunk] if masks is None else overlay(x[s:s + chunk], masks[s:s + chunk])
                correct += int((model(xb).argmax(1) == y[s:s + chunk]).sum())
            out[name] = correct
    return out


@pytest.fixture(scope="module")
def setting(tiny_run):
    run, _ = tiny_run
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    paths = {"E": run / "models" / "encrypted", "O": run / "models" / "original"}
    models = {k: Recognizer.from_checkpoint(p) for k, p in paths.items()}
    return run, test, paths, models


def test_per_mask_counts_equal_a_plain_loop(setting):
    run, test, paths, models = setting
    lib = MaskLibrary.open(str(run / "masks"))
    got = evaluate_masks(lib, test.images, test.labels, test.class_names, paths, buckets=[4, 5, 6], settings=FP32)
    batch = lib.load([4, 5, 6])
    assert sorted(got["mask_id"]) == sorted(batch.mask_ids) and (got["n"] == len(test)).all()
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    by_id = got.set_index("mask_id")
    for mid, bucket, mask in zip(batch.mask_ids, batch.buckets, batch.masks):
        m = torch.from_numpy(np.broadcast_to(mask, (len(x), *mask.shape)).copy())
        want = _reference(models, x, y, m)
        row = by_id.loc[mid]
        assert (row["correct_E"], row["correct_O"], row["bucket"]) == (want["E"], want["O"], bucket), mid
        assert 0 <= row["score_E"] <= len(test)


def test_sampled_table1_counts_equal_a_plain_loop(setting):
    run, test, paths, models = setting
    lib = MaskLibrary.open(str(run / "masks"))
    got = evaluate_sampled(lib, test.images, test.labels, test.class_names, paths, repeats=2, seed=3,
                           buckets=[1, 6], settings=FP32)
    assert list(zip(got["bucket"], got["repeat"])) == [(0, 0), (0, 1), (1, 0), (1, 1), (6, 0), (6, 1)]
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    for row in got.itertuples():
        if row.bucket == 0:
            want = _reference(models, x, y, None)
        else:
            pool = lib.load([row.bucket]).masks
            pick = np.random.default_rng([3, row.bucket, row.repeat]).integers(0, len(pool), len(y))
            want = _reference(models, x, y, torch.from_numpy(pool[pick]))
        assert (row.correct_E, row.correct_O) == (want["E"], want["O"]), row
    # Different repetitions draw different masks (the 5 repetitions of the source vary something).
    assert got.loc[got.bucket == 0, "correct_E"].nunique() == 1


def test_size_mismatch_missing_model_and_empty_bucket(setting, tmp_path):
    run, test, paths, _ = setting
    other = MaskLibrary.create(str(tmp_path / "big"), 32, 32)
    generate_into(other, 6, seed=0)
    with pytest.raises(MaskcryptError, match="masks are 32x32, test images 16x16"):
        evaluate_masks(other, test.images, test.labels, test.class_names, paths, settings=FP32)
    with pytest.raises(MaskcryptError, match="does not exist"):
        evaluate_masks(MaskLibrary.open(str(run / "masks")), test.images, test.labels, test.class_names,
                       {"E": tmp_path / "nope"}, settings=FP32)
    sparse = MaskLibrary.create(str(tmp_path / "sparse"), TINY_SIZE, TINY_SIZE)
    generate_into(sparse, 2, seed=0, buckets=[6])
    with pytest.raises(MaskcryptError, match="bucket 5 holds no mask"):
        evaluate_sampled(sparse, test.images, test.labels, test.class_names, paths, buckets=[5, 6], settings=FP32)
    with pytest.raises(MaskcryptError, match="other classes"):
        evaluate_masks(MaskLibrary.open(str(run / "masks")), test.images, test.labels,
                       [f"x{i}" for i in range(6)], paths, settings=FP32)


def test_attack_counts_equal_a_plain_loop(setting):
    run, test, paths, models = setting
    from maskcrypt.evaluate import evaluate_attack
    from maskcrypt.models import Inpainter

    lib = MaskLibrary.open(str(run / "masks"))
    ids = lib.load([6]).mask_ids[:2]
    got = evaluate_attack(lib, ids, test.images, test.labels, test.class_names, paths,
                          run / "models" / "inpainter", settings=FP32).set_index("mask_id")
    r = Inpainter.from_checkpoint(run / "models" / "inpainter")
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    for mid, mask in zip(ids, lib.get(ids).masks):
        m = torch.from_numpy(mask)
        masked = overlay(x, m)
        filled = torch.cat([r.inpaint(masked[s:s + 16], m[None].expand(len(masked[s:s + 16]), -1, -1))
                            for s in range(0, len(x), 16)])
        with torch.inference_mode():
            before = models["E"](masked).argmax(1) == y
            after = models["E"](filled).argmax(1) == y
            o_after = int((models["O"](filled).argmax(1) == y).sum())
        row = got.loc[mid]
        assert row["both"] == int((before & after).sum()) and row["before_only"] == int((before & ~after).sum())
        assert row["after_only"] == int((~before & after).sum()) and row["correct_O_inpainted"] == o_after
        assert row["both"] + row["before_only"] + row["after_only"] + row["neither"] == row["n"] == len(test)
