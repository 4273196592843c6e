"""The one mask-then-recognize step, against the obvious loop (fp32, fixed batch), and what it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.precision import cpu_supports_bf16, default_chunk, use_bf16
from maskcrypt.masks import overlay
from maskcrypt.models import Inpainter, InpainterConfig, Recognizer, RecognizerConfig
from maskcrypt.models.predictor import Predictor


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    e = Recognizer(RecognizerConfig(num_classes=5, image_size=16, width=8)).eval()
    o = Recognizer(RecognizerConfig(num_classes=5, image_size=16, width=8)).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (11, 3, 16, 16), dtype=np.uint8)
    masks = (rng.random((11, 16, 16)) > 0.4).astype(np.uint8)
    return {"E": e, "O": o}, x, masks


def test_outputs_equal_a_plain_loop_for_every_form_of_masks(models):
    nets, x, masks = models
    p = Predictor(nets, precision="fp32", chunk=4)
    xt, mt = torch.from_numpy(x), torch.from_numpy(masks)
    with torch.inference_mode():
        want_each = {k: m(overlay(xt, mt)) for k, m in nets.items()}
        want_one = {k: m(overlay(xt, mt[0])) for k, m in nets.items()}
        want_clean = {k: m(xt) for k, m in nets.items()}
    for given, want in ((masks, want_each), (masks[0], want_one), (None, want_clean),
                        (lambda s, e: mt[s:e], want_each)):
        got = p.outputs(x, given)
        for k in nets:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)
    emb = p.outputs(x, masks, embed=True, names=["E"])["E"]
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(x)), rtol=0, atol=1e-5)
    torch.testing.assert_close(p.logits(x, masks, "O"), want_each["O"], rtol=0, atol=1e-5)


def test_chunking_does_not_change_the_answer(models):
    nets, x, masks = models
    a = Predictor(nets, precision="fp32", chunk=3).outputs(x, masks)
    b = Predictor(nets, precision="fp32", chunk=64).outputs(x, masks)
    for k in nets:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_the_device_sets_the_default_chunk_and_layout(models):
    nets, x, _ = models
    p = Predictor(nets, precision="fp32")
    assert p.chunk == 64 and p.channels_last  # CPUs: batches of 64, channels_last in fp32 too (cpu_layout.py)
    assert p.to_device(x).is_contiguous(memory_format=torch.channels_last)
    assert Predictor(nets, precision="fp32", chunk=5).chunk == 5
    # A CPU pass holds about as many pixels as 64 images of 32 px (cache), never under 16 images; GPUs take 256.
    assert [default_chunk("cpu", s) for s in (16, 32, 48, 64, 112, 224)] == [64, 64, 28, 16, 16, 16]
    assert default_chunk("cuda", 112) == 256
    with pytest.raises(MaskcryptError, match="chunk must be >= 1"):
        Predictor(nets, precision="fp32", chunk=-1)


def test_judgement_closed_and_open_set():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    correct, score = Predictor.judge(logits, torch.tensor([0, 1]))
    assert correct.tolist() == [True, False]
    torch.testing.assert_close(score, torch.softmax(logits, 1)[[0, 1], [0, 1]])
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    cents = Predictor.centroids(emb, torch.tensor([0, 0, 1, 1]), 3)
    assert cents[2].abs().sum() == 0  # an identity without gallery images has no centroid
    correct, score = Predictor.judge(emb, torch.tensor([0, 1, 1, 0]), cents)
    assert correct.tolist() == [True, False, True, False]
    torch.testing.assert_close(score, (emb * cents[[0, 1, 1, 0]]).sum(1))


def test_fill_inpaints_the_holes_once_for_every_model(models):
    nets, x, masks = models
    r = Inpainter(InpainterConfig(width=4, iterations=1, image_size=16)).eval()
    p = Predictor(nets, precision="fp32", chunk=5, inpainter=r)
    with torch.inference_mode():
        filled = r.inpaint(overlay(torch.from_numpy(x), torch.from_numpy(masks)), torch.from_numpy(masks))
        want = nets["E"](filled)
    torch.testing.assert_close(p.outputs(x, masks, fill=True)["E"], want, rtol=0, atol=1e-4)
    with pytest.raises(MaskcryptError, match="fill=True needs an inpainter"):
        Predictor(nets, precision="fp32").outputs(x, masks, fill=True)


def test_bad_requests_name_the_problem(models):
    nets, x, _ = models
    p = Predictor(nets, precision="fp32")
    with pytest.raises(MaskcryptError, match="holds \\['E', 'O'\\], name the model"):
        p.logits(x)
    with pytest.raises(MaskcryptError, match="no model 'X'"):
        p.model("X")
    with pytest.raises(MaskcryptError, match="expected N x C x H x W"):
        p.outputs(x[0])
    with pytest.raises(MaskcryptError, match="--precision: expected one of auto, bf16, fp32"):
        Predictor(nets, precision="half")


def test_auto_takes_bf16_only_where_the_cpu_has_bf16_instructions():
    """oneDNN converts bf16 on plain AVX-512 and torch calls that supported; it runs at ~0.6x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_supports_bf16() is native
    assert use_bf16("auto", "cpu") is native
    if not native:
        with pytest.raises(MaskcryptError, match="no bf16 support"):
            use_bf16("bf16", "cpu")


def test_importing_the_predictor_loads_neither_pyarrow_nor_pandas_nor_ray():
    """The GPU harness runs where only torch and numpy are installed."""
    code = ("import sys, maskcrypt.models.predictor, maskcrypt.core.precision; "
            "print(sorted(m for m in ('pyarrow', 'pandas', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
