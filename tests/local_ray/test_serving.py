"""The recognition service on Ray Serve, with real HTTP, on a copy of the tiny trained run."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from bombs import png_bomb
from conftest import TINY_DATA, TINY_SIZE
from PIL import Image
from ports import free_port

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data import load
from maskcrypt.serving.requests import ServiceConfig, ServiceError, decode_upload, load_targets

KEY = "test-key"


def _png(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


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
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:  # a 500 from Serve's proxy is plain text
            return e.code, {"error": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def served(determined_run, tmp_path_factory):
    from ray import serve

    from maskcrypt.serving.deployment import build_app

    src, _ = determined_run
    run = tmp_path_factory.mktemp("serving") / "run"
    shutil.copytree(src, run)
    config = ServiceConfig(run=str(run), api_key=KEY, precision="fp32", max_bytes=200_000)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config, max_batch_size=8, num_cpus=0.5), name="maskcrypt-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}", run, config
    serve.shutdown()


@pytest.fixture(scope="module")
def served_open(served, tmp_path_factory):
    """The same run served open set (E's embeddings against an enrolled gallery), beside the closed app."""
    from ray import serve

    from maskcrypt.serving.deployment import build_app

    url, src, _ = served
    run = tmp_path_factory.mktemp("serving-open") / "run"
    shutil.copytree(src, run)
    config = ServiceConfig(run=str(run), api_key=KEY, precision="fp32", scoring="open", share_masks=True)
    serve.run(build_app(config, max_batch_size=8, num_cpus=0.5), name="maskcrypt-open", route_prefix="/open")
    yield f"{url}/open", run, config
    serve.delete("maskcrypt-open")


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
    assert status == 200 and got["mask_id"] == targets.ids[0] and got["premasked"] is True
    assert got["label"] == _call(f"{url}/v1/recognize", _png(test.images[0]))[1]["label"]
    assert _call(f"{url}/v1/recognize?premasked=true&mask=random", _png(pre))[0] == 400
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


def test_decompression_bombs_get_413_and_top_k_below_one_400(served, served_open):
    """PIL refuses images over ~179 M pixels inside Image.open (DecompressionBombError): that is a 413 too."""
    url, _, config = served
    open_url, _, open_config = served_open
    status, got = _call(f"{url}/v1/recognize", png_bomb(100_000, 100_000, pixels=False))  # 45 bytes
    assert status == 413, got
    assert f"{100_000 ** 2} pixels" in got["error"] and f"limit of {config.max_pixels} pixels" in got["error"]
    real = png_bomb(20_000, 20_000)  # a valid PNG of 400 M zeros, ~390 KB (the open service takes 10 MB)
    assert len(real) < open_config.max_bytes
    status, got = _call(f"{open_url}/v1/recognize", real)
    assert status == 413, got
    assert "400000000 pixels" in got["error"] and f"limit of {open_config.max_pixels} pixels" in got["error"]
    status, got = _call(f"{url}/v1/recognize", png_bomb(6_000, 5_000, pixels=False))  # our own limit: 30 M > 25 M
    assert status == 413 and "6000x5000 = 30000000 pixels" in got["error"], got
    face = _png(np.zeros((3, TINY_SIZE, TINY_SIZE), np.uint8))
    for bad in (-1, 0):
        status, got = _call(f"{url}/v1/recognize?top_k={bad}", face)
        assert status == 400 and f"top_k={bad}" in got["error"], got
    status, got = _call(f"{url}/v1/recognize?top_k=2", face)
    assert status == 200 and len(got["top_k"]) == 2


def _image_bytes(fmt: str, mode: str = "RGB", size: tuple[int, int] = (20, 20), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt, **save)
    return buf.getvalue()


def test_no_malformed_upload_gets_a_5xx(served, served_open):
    """Every kind of bad input docs/serving.md lists, and then some, over real HTTP: a 4xx each, never a 5xx."""
    url, _, _ = served
    open_url, _, _ = served_open
    noisy = np.random.default_rng(1).integers(0, 255, (3, 300, 300), dtype=np.uint8)
    png, jpeg = _png(noisy[:, :64, :64]), _image_bytes("JPEG", size=(64, 64))
    bad_crc = bytearray(_png(noisy[:, :8, :8]))
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    face = _png(noisy[:, :TINY_SIZE, :TINY_SIZE])
    uploads = {
        "empty": (b"", 400), "text": (b"definitely not an image", 400),
        "truncated png": (png[: len(png) * 3 // 5], 400), "truncated jpeg": (jpeg[: len(jpeg) // 2], 400),
        "png header only": (png_bomb(16, 16, pixels=False), 400), "png signature only": (png[:8], 400),
        "png with a bad crc": (bytes(bad_crc), 400), "jpeg SOI only": (b"\xff\xd8\xff", 400),
        "bmp": (_image_bytes("BMP"), 400), "gif": (_image_bytes("GIF", "P"), 400),
        "tiff": (_image_bytes("TIFF"), 400), "webp": (_image_bytes("WEBP"), 400),
        "too many bytes": (_png(noisy), 413), "too many pixels": (png_bomb(6_000, 5_000, pixels=False), 413),
        "pil warns": (png_bomb(10_000, 10_000, pixels=False), 413),
        "header-only bomb": (png_bomb(100_000, 100_000, pixels=False), 413),
        "real bomb": (png_bomb(20_000, 20_000), 413),
        # Odd but valid images are answered.
        "1x1": (_image_bytes("PNG", size=(1, 1)), 200), "1x4000": (_image_bytes("PNG", size=(1, 4000)), 200),
        "mode 1": (_image_bytes("PNG", "1"), 200), "mode I;16": (_image_bytes("PNG", "I;16"), 200),
        "mode LA": (_image_bytes("PNG", "LA"), 200), "mode P": (_image_bytes("PNG", "P", transparency=0), 200),
        "cmyk jpeg": (_image_bytes("JPEG", "CMYK"), 200),
    }
    answers = {}
    for name, (body, expected) in uploads.items():
        answers[name] = (_call(f"{url}/v1/recognize", body)[0], expected)
    form, kind = _multipart([face, face])
    requests = {
        "top_k=-1": (f"{url}/v1/recognize?top_k=-1", face, "image/png", 400),
        "top_k=0": (f"{url}/v1/recognize?top_k=0", face, "image/png", 400),
        "top_k=abc": (f"{url}/v1/recognize?top_k=abc", face, "image/png", 422),
        "unknown mask": (f"{url}/v1/recognize?mask=nope", face, "image/png", 404),
        "premasked random": (f"{url}/v1/recognize?premasked=true&mask=random", face, "image/png", 400),
        "two images to recognize": (f"{url}/v1/recognize", form, kind, 413),
        "broken multipart": (f"{url}/v1/recognize", b"--x\r\nbroken", "multipart/form-data; boundary=x", 400),
        "multipart without image": (f"{url}/v1/recognize", *_multipart([], identity="a"), 400),
        "multipart without boundary": (f"{url}/v1/recognize", form, "multipart/form-data", 400),
        "enroll on closed set": (f"{url}/v1/enroll?identity=x", face, "image/png", 409),
        "bad identity": (f"{open_url}/v1/enroll?identity=%20padded", face, "image/png", 400),
        "no identity": (f"{open_url}/v1/enroll", face, "image/png", 400),
        "identity with a newline": (f"{open_url}/v1/enroll?identity=a%0Ab", face, "image/png", 400),
        "identity too long": (f"{open_url}/v1/enroll?identity={'x' * 201}", face, "image/png", 400),
        "enroll a bomb": (f"{open_url}/v1/enroll?identity=x", png_bomb(100_000, 100_000, pixels=False),
                          "image/png", 413),
        "enroll a truncated png": (f"{open_url}/v1/enroll?identity=x", png[:100], "image/png", 400),
        "enroll 17 images": (f"{open_url}/v1/enroll", *_multipart([face] * 17, identity="x"), 413),
        "enroll 40 images": (f"{open_url}/v1/enroll", *_multipart([face] * 40, identity="x"), 413),
        "real bomb, open set": (f"{open_url}/v1/recognize", png_bomb(20_000, 20_000), "image/png", 413),
    }
    for name, (where, body, content_type, expected) in requests.items():
        answers[name] = (_call(where, body, content_type=content_type)[0], expected)
    answers["no key"] = (_call(f"{url}/v1/recognize", face, key=None)[0], 401)
    answers["delete unknown"] = (_delete(f"{open_url}/v1/enroll/nobody")[0], 404)
    assert not {k: v for k, v in answers.items() if v[0] >= 500}, answers
    assert {k: got for k, (got, _) in answers.items()} == {k: want for k, (_, want) in answers.items()}


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
    # 16 clients against batches of at most 8 (max_batch_size crossed): each answer is the one-by-one answer.
    alone = {i: _call(f"{url}/v1/recognize", _png(test.images[i]))[1]["label"] for i in range(len(test))}
    assert [a["label"] for _, a in answers] == [alone[i % len(test)] for i in range(160)]
    # The batch endpoint: several images in one request, the same answer for each as one by one.
    parts = b"".join((f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
                      "Content-Type: image/png\r\n\r\n").encode() + _png(test.images[i]) + b"\r\n" for i in range(5))
    status, batch = _call(f"{url}/v1/recognize/batch?top_k=2", parts + f"--{boundary}--\r\n".encode(),
                          content_type=f"multipart/form-data; boundary={boundary}")
    singles = [_call(f"{url}/v1/recognize?top_k=2", _png(test.images[i]))[1] for i in range(5)]
    assert status == 200 and [a["label"] for a in batch["results"]] == [a["label"] for a in singles]
    assert all(len(a["top_k"]) == 2 for a in batch["results"])


def test_client_masks_locally_and_agrees_with_server_side_masking(served):
    from maskcrypt.serving.client import Client

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


def _kill_replica(app: str = "maskcrypt-test") -> None:
    """Kill one replica of ``app``'s RecognitionService as a crash would (Serve then starts a new one)."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if "SERVE_REPLICA" in a["name"] and f"{app}#RecognitionService" in a["name"]]
    assert names, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def test_requests_succeed_again_after_a_replica_is_killed(served):
    import time

    url, _, _ = served
    body = _png(np.zeros((3, TINY_SIZE, TINY_SIZE), np.uint8))
    _kill_replica()
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


def test_client_recognize_survives_a_killed_replica(served):
    """Four client threads recognize in a loop while the only replica is killed: every call returns a result.

    The requests the replica held fail (500 or a dropped connection); the client retries
    them with backoff until Serve's replacement answers.
    """
    import threading
    import time

    from maskcrypt.serving.client import Client

    url, run, _ = served
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    client = Client(url, run / "targets.parquet", api_key=KEY, timeout=60, retries=8, backoff_s=0.5, max_delay_s=8)
    results: list[tuple[float, dict]] = []
    errors: list[str] = []
    stop = threading.Event()

    def loop(start: int) -> None:
        i = start
        while not stop.is_set():
            try:
                results.append((time.monotonic(), client.recognize(test.images[i % len(test)])))
            except Exception as exc:  # any failure is what the test counts
                errors.append(repr(exc))
            i += 4

    def wait(cond, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not cond() and time.monotonic() < deadline and not errors:
            time.sleep(0.2)

    threads = [threading.Thread(target=loop, args=(j,), daemon=True) for j in range(4)]
    for t in threads:
        t.start()
    try:
        wait(lambda: len(results) >= 20, 120)
        _kill_replica()
        killed = time.monotonic()
        wait(lambda: sum(at > killed + 1 for at, _ in results) >= 20, 300)  # served again by the new replica
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    after = sum(at > killed + 1 for at, _ in results)
    print(f"killed replica: {len(results)} results, {after} after the kill, {client.retried} retries")
    assert not errors, (errors[:3], client.retried)
    assert after >= 20 and all("label" in got for _, got in results), (after, client.retried)


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


def _multipart(images: list[bytes], **fields: str) -> tuple[bytes, str]:
    boundary = "maskcryptboundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts += [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode() + body + b"\r\n" for i, body in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _delete(url: str, key: str = KEY):
    req = urllib.request.Request(url, method="DELETE", headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_open_set_enroll_then_recognize_equals_offline_centroids(served_open):
    import torch.nn.functional as F

    from maskcrypt.models import Recognizer

    url, run, _ = served_open
    targets = load_targets(run)
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    names = test.class_names
    gallery = {c: np.flatnonzero(test.labels == c)[0] for c in range(len(names))}
    probes = [i for i in range(len(test)) if i not in set(gallery.values())]
    status, health = _call(f"{url}/healthz", key=None)
    assert status == 200 and health["scoring"] == "open" and health["identities"] == 0
    status, got = _call(f"{url}/v1/recognize", _png(test.images[probes[0]]))
    assert status == 409 and "enroll" in got["error"]
    for c, i in gallery.items():  # one identity per request: the name as a form field, then as a query
        if c % 2:
            body, kind = _multipart([_png(test.images[i])], identity=names[c])
            status, got = _call(f"{url}/v1/enroll", body, content_type=kind)
        else:
            status, got = _call(f"{url}/v1/enroll?identity={names[c]}", _png(test.images[i]))
        assert status == 200 and got["masks"] == targets.ids and got["images"] == 1, got
    # Embeddings only: every stored array is float or an index; no pixels.
    files = sorted((run / "gallery").glob("*.npz"))
    assert len(files) == len(names)
    with np.load(files[0]) as z:
        assert z["embeddings"].dtype == np.float32 and not any(z[k].dtype == np.uint8 for k in z.files)
    e = Recognizer.from_checkpoint(run / "models" / "encrypted")
    for k in (0, len(targets.ids) - 1):
        mask = torch.from_numpy(targets.masks[k])
        with torch.inference_mode():
            g = F.normalize(e.embed(torch.from_numpy(test.images[list(gallery.values())]) * mask), dim=1)
            p = F.normalize(e.embed(torch.from_numpy(test.images[probes]) * mask), dim=1)
        sims = p @ g.T  # one gallery image per identity: its unit embedding is the centroid
        for j, i in enumerate(probes[:6]):
            status, got = _call(f"{url}/v1/recognize?mask={targets.ids[k]}&top_k=2", _png(test.images[i]))
            assert status == 200 and got["mask_id"] == targets.ids[k], got
            assert got["identity"] == names[int(sims[j].argmax())] and len(got["top_k"]) == 2
            assert got["score"] == pytest.approx(float(sims[j].max()), abs=1e-5)
    status, listed = _call(f"{url}/v1/gallery")
    assert status == 200 and [g["identity"] for g in listed["identities"]] == sorted(names)
    assert _delete(f"{url}/v1/enroll/{names[0]}")[0] == 200
    status, got = _delete(f"{url}/v1/enroll/{names[0]}")
    assert status == 404 and "unknown identity" in got["error"]
    assert names[0] not in [g["identity"] for g in _call(f"{url}/v1/gallery")[1]["identities"]]
    status, got = _call(f"{url}/v1/recognize?top_k=10", _png(test.images[gallery[0]]))
    assert status == 200 and names[0] not in [t["identity"] for t in got["top_k"]]
    assert got["gallery_size"] == len(names) - 1


def test_enrollment_errors_and_client_fetching_shared_masks(served, served_open):
    from maskcrypt.serving.client import Client

    closed_url, _, _ = served
    url, run, _ = served_open
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    face = _png(test.images[0])
    assert _call(f"{url}/v1/enroll?identity=%20padded", face)[0] == 400
    assert _call(f"{url}/v1/enroll", face)[0] == 400  # no identity at all
    status, got = _call(f"{closed_url}/v1/enroll?identity=x", face)
    assert status == 409 and "closed set" in got["error"]
    assert _call(f"{url}/v1/enroll?identity=x&premasked=true", face)[0] == 200  # best: the client's mask
    status, got = _call(f"{url}/v1/enroll?identity=x&premasked=true&mask=all", face)
    assert status == 400 and "name the mask" in got["error"]
    body, kind = _multipart([face] * 3, identity="x")
    assert _call(f"{url}/v1/enroll", body, content_type=kind)[1]["images"] == 4
    status, got = _call(f"{closed_url}/v1/masks?pixels=true")
    assert status == 403 and "share_masks" in got["error"]
    with pytest.raises(MaskcryptError, match="service answered 403"):
        Client(closed_url, api_key=KEY)
    # A client that fetched the shared masks enrolls and recognizes without the server seeing clean pixels.
    client = Client(url, api_key=KEY)
    assert client.ids == load_targets(run).ids
    probe = test.images[int(np.flatnonzero(test.labels == 0)[1])]  # not the one enrolled for identity 0
    enrolled = client.enroll("client-face", [probe])
    assert enrolled["images"] == 1 and enrolled["masks"] == client.ids
    for mask in ("best", client.ids[-1]):
        ours = client.recognize(probe, mask=mask)
        theirs = _call(f"{url}/v1/recognize?mask={ours['mask_id']}", _png(probe))[1]
        assert ours["premasked"] is True and ours["identity"] == theirs["identity"] == "client-face"
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)


def test_gpu_replicas_are_refused_at_once_without_gpus_and_the_config_sets_them(determined_run, capsys, monkeypatch):
    """``maskcrypt serve --gpus 1`` and the Serve config's ``num_gpus``: a named refusal here, no waiting replica."""
    import importlib.util

    from maskcrypt.cli.main import main
    from maskcrypt.serving.deployment import build_app

    spec = importlib.util.spec_from_file_location("serve_app", Path(__file__).parents[2] / "serve" / "app.py")
    serve_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_app)
    app_builder = serve_app.app_builder
    run, _ = determined_run
    assert main(["serve", str(run), "--gpus", "1"]) == 2
    assert "--gpus (per replica) 1: the Ray cluster has 0 GPU(s)" in capsys.readouterr().err
    with pytest.raises(MaskcryptError, match="the Ray cluster has 0 GPU"):
        app_builder({"run": str(run), "num_gpus": 1})
    monkeypatch.setenv("MASKCRYPT_AUTOSCALING_GPUS", "1")  # a cluster whose GPU nodes start on demand
    app = build_app({"run": str(run)}, num_gpus=1)
    options = app._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 1 and app._bound_deployment.user_config["max_batch_size"] == 128


def _deployment_details(app: str) -> dict:
    """``app``'s RecognitionService as Serve's controller reports it (what ``serve status`` and the dashboard show)."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()["applications"][app]["deployments"]["RecognitionService"]


def test_autoscaled_open_set_service_answers_and_a_scaled_up_replica_sees_the_gallery(served, tmp_path):
    """``maskcrypt serve --autoscale 1,2 --target-ongoing-requests 1 --scoring open`` over real HTTP.

    Deployed through the CLI's replica_options, with Serve's delays shortened as the load
    benchmark does. It answers, and Serve reports the range and target the flags asked for.
    Load from 2 clients then makes Serve's autoscaler start a second replica *after* a first
    enrollment (the load stops once Serve decided, leaving the CPUs to the start). Every
    answer, from either replica, sees that identity and one enrolled after the scale-up,
    wherever that enrollment landed (the replicas share ``RUN/gallery/`` and re-read it when
    it changes). 24 requests from 8 threads reach both replicas.
    """
    import threading
    import time

    from ray import serve

    from maskcrypt.serving.deployment import build_app
    from maskcrypt.serving.scaling import replica_options

    base, src, _ = served
    run = tmp_path / "run"
    shutil.copytree(src, run)
    config = ServiceConfig(run=str(run), api_key=KEY, precision="fp32", scoring="open")
    url, name = f"{base}/auto", "maskcrypt-autoscale"
    test = load(TINY_DATA, default_split="test", size=TINY_SIZE)
    wanted = replica_options(None, "1,2", 1.0)["autoscaling_config"]
    # Scale up on the first second of load (Serve waits 30 s by default), down only after the test.
    quick = {**wanted, "upscale_delay_s": 0, "metrics_interval_s": 0.5, "look_back_period_s": 1}

    def running() -> int:
        return serve.status().applications[name].deployments["RecognitionService"].replica_states.get("RUNNING", 0)

    serve.run(build_app(config, max_batch_size=8, num_cpus=0.25, autoscaling_config=quick), name=name,
              route_prefix="/auto")
    stop = threading.Event()
    try:
        reported = _deployment_details(name)["deployment_config"]["autoscaling_config"]
        assert {k: reported[k] for k in quick} == quick and running() == 1
        status, health = _call(f"{url}/healthz", key=None)
        assert status == 200 and health["scoring"] == "open" and health["identities"] == 0
        status, got = _call(f"{url}/v1/enroll?identity=before-scale-up", _png(test.images[0]))
        assert status == 200, got
        status, got = _call(f"{url}/v1/recognize", _png(test.images[2]))
        assert status == 200 and got["identity"] == "before-scale-up", got

        def load_loop() -> None:
            while not stop.is_set():
                _call(f"{url}/v1/recognize", _png(test.images[3]))

        clients = [threading.Thread(target=load_loop, daemon=True) for _ in range(2)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 120
        while _deployment_details(name)["target_num_replicas"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for t in clients:
            t.join(timeout=60)
        while running() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        replicas = [r for r in _deployment_details(name)["replicas"] if r["state"] == "RUNNING"]
        assert len({r["replica_id"] for r in replicas}) == 2, replicas
        status, got = _call(f"{url}/v1/enroll?identity=after-scale-up", _png(test.images[1]))
        assert status == 200, got
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _call(f"{url}/v1/recognize?top_k=2", _png(test.images[i % len(test)])),
                                    range(24)))
        assert all(s == 200 for s, _ in answers), answers
        assert {(a["gallery_size"], frozenset(t["identity"] for t in a["top_k"])) for _, a in answers} == {
            (2, frozenset({"before-scale-up", "after-scale-up"}))}
    finally:
        stop.set()
        serve.delete(name)
