"""The recognition service on Ray Serve, with real HTTP, on a copy of the tiny trained run."""

from __future__ import annotations

import io
import json
import shutil
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_SIZE
from PIL import Image

from maskcrypt.data import load
from maskcrypt.errors import MaskcryptError
from maskcrypt.serving import ServiceConfig, ServiceError, decode_upload, load_targets

KEY = "test-key"


def _png(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, data: bytes | None = None, key: str | None = KEY, content_type: str = "image/png"):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if key:
        req.add_header("X-API-Key", key)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    from ray import serve

    from maskcrypt.determine import determine
    from maskcrypt.evaluate import EvalSettings
    from maskcrypt.select import Thresholds
    from maskcrypt.serving import build_app

    src, _ = tiny_run
    run = tmp_path_factory.mktemp("serving") / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("per_mask.parts"))
    result = determine(run, TINY_DATA, TINY_SIZE, Thresholds(t_gap=0.0, t_drop=0.0, top_k=2, attack_top=2),
                       repeats=1, settings=EvalSettings(precision="fp32"), redo=True, report=False,
                       log=lambda *_: None)
    assert result["targets"], result["reason"]  # loose thresholds: the tiny models pass every rule
    config = ServiceConfig(run=str(run), api_key=KEY, precision="fp32", max_bytes=200_000)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config, max_batch_size=8), name="maskcrypt-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}", run, config
    serve.shutdown()


def test_predictions_equal_the_offline_model_under_the_same_mask(served):
    from maskcrypt.models import Recognizer

    url, run, config = served
    targets = load_targets(run, config.allow_candidates)
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    e = Recognizer.from_checkpoint(run / "models" / "encrypted")
    status, health = _call(f"{url}/healthz", key=None)  # no key needed for the health check
    assert status == 200 and health["status"] == "ok" and health["masks"] == len(targets.ids)
    for policy, k in (("best", 0), (targets.ids[-1], len(targets.ids) - 1)):
        for i in range(4):
            status, got = _call(f"{url}/v1/recognize?mask={policy}&top_k=3", _png(test.images[i]))
            assert status == 200, got
            masked = torch.from_numpy(test.images[i] * targets.masks[k][None])[None]
            with torch.inference_mode():
                probs = torch.softmax(e(masked), 1)[0]
            assert got["mask_id"] == targets.ids[k] and got["label"] == int(probs.argmax())
            assert got["class_name"] == test.class_names[got["label"]] and len(got["top_k"]) == 3
            assert got["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    # A client that masks on its side: the server never sees the clean pixels.
    pre = test.images[0] * targets.masks[0][None]
    status, got = _call(f"{url}/v1/recognize?premasked=true", _png(pre))
    assert status == 200 and got["mask_id"] is None and got["premasked"] is True
    status, listed = _call(f"{url}/v1/masks")
    assert status == 200 and [m["mask_id"] for m in listed["masks"]] == targets.ids


def test_bad_requests_get_clear_4xx_answers(served):
    url, _, _ = served
    good = _png(np.zeros((3, TINY_SIZE, TINY_SIZE), np.uint8))
    noisy = np.random.default_rng(0).integers(0, 255, (3, 300, 300), dtype=np.uint8)
    mid = _png(noisy[:, :64, :64])  # ~12 KB: cut after its header, PIL opens it and fails to decode
    cases = [
        (b"", 400, "empty body"),
        (b"definitely not an image", 400, "not an image"),
        (mid[: len(mid) * 3 // 5], 400, "truncated or corrupt"),
        (_png(noisy), 413, "exceeds the limit"),
    ]
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, format="BMP")
    cases.append((bmp.getvalue(), 400, "unsupported format BMP"))
    for body, status, words in cases:
        got_status, got = _call(f"{url}/v1/recognize", body)
        assert (got_status, words in got["error"]) == (status, True), (status, got)
    status, got = _call(f"{url}/v1/recognize?mask=nope", good)
    assert status == 404 and "unknown mask id" in got["error"]
    assert _call(f"{url}/v1/recognize", good, key=None)[0] == 401
    assert _call(f"{url}/v1/masks", key="wrong")[0] == 401
    status, got = _call(f"{url}/v1/recognize", b"--x\r\nbroken", content_type="multipart/form-data; boundary=x")
    assert status == 400, got


def test_multipart_upload_and_sixteen_concurrent_clients(served):
    url, _, _ = served
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    body = _png(test.images[1])
    boundary = "maskcryptboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    status, multi = _call(f"{url}/v1/recognize", form, content_type=f"multipart/form-data; boundary={boundary}")
    status_raw, raw = _call(f"{url}/v1/recognize", body)
    assert status == status_raw == 200 and multi["label"] == raw["label"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: _call(f"{url}/v1/recognize", _png(test.images[i % len(test)])),
                                range(160)))
    assert all(s == 200 for s, _ in answers)


def test_client_masks_locally_and_agrees_with_server_side_masking(served):
    from maskcrypt.client import Client

    url, run, _ = served
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    client = Client(url, run / "targets.parquet", api_key=KEY)
    for i in range(3):
        ours = client.recognize(test.images[i])
        status, theirs = _call(f"{url}/v1/recognize?mask=best", _png(test.images[i]))
        assert status == 200 and ours["premasked"] is True
        assert (ours["label"], ours["mask_id"]) == (theirs["label"], theirs["mask_id"])
    with pytest.raises(MaskcryptError, match="unknown mask id"):
        client.recognize(test.images[0], mask="nope")
    with pytest.raises(MaskcryptError, match="service answered 401"):
        Client(url, run / "targets.parquet", api_key="wrong").recognize(test.images[0])


def test_requests_succeed_again_after_a_replica_is_killed(served):
    import time

    import ray

    url, _, _ = served
    body = _png(np.zeros((3, TINY_SIZE, TINY_SIZE), np.uint8))
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if "SERVE_REPLICA" in a["name"] and "RecognitionService" in a["name"]]
    assert names, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    deadline = time.time() + 120
    while True:
        try:
            status, _ = _call(f"{url}/v1/recognize", body)
        except OSError:
            status = 0
        if status == 200 or time.time() > deadline:
            break
        time.sleep(1)
    assert status == 200  # Serve replaced the replica
    assert all(_call(f"{url}/v1/recognize", body)[0] == 200 for _ in range(5))


def test_targets_are_verified_and_uploads_decoded_without_serve(served, tmp_path):
    _, run, _ = served
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "targets.json").read_text())
    meta["targets"][0]["sha256"] = "0" * 64
    (copy / "targets.json").write_text(json.dumps(meta))
    with pytest.raises(MaskcryptError, match="does not match its sha256"):
        load_targets(copy)
    meta["targets"] = []
    meta["reason"] = {"message": "no candidate loses more than 0.07"}
    (copy / "targets.json").write_text(json.dumps(meta))
    with pytest.raises(MaskcryptError, match=r"no target mask .*--allow-candidates"):
        load_targets(copy)
    assert load_targets(copy, allow_candidates=True).source == "candidates"
    img = decode_upload(_png(np.full((3, 40, 30), 7, np.uint8)), (16, 16), 3, ServiceConfig())
    assert img.shape == (3, 16, 16) and (img == 7).all()
    with pytest.raises(ServiceError) as err:
        decode_upload(b"x" * 20, (16, 16), 3, ServiceConfig(max_bytes=10))
    assert err.value.status == 413
