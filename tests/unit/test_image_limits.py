"""Decompression bombs and unreadable images outside the service: data sets, mask import, the client."""

from __future__ import annotations

import io

import numpy as np
import pytest
from bombs import png_bomb
from PIL import Image

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.data.images import MAX_PIXELS, ImageTooLarge, UnreadableImage, decode_file, decode_many, probe_file

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (9, 9, 9)).save(good)
    header_bomb = tmp_path / "header.png"  # 10 G pixels declared: PIL's own check fires inside open
    header_bomb.write_bytes(png_bomb(100_000, 100_000, pixels=False))
    ours = tmp_path / "ours.png"  # 100 M: over our MAX_PIXELS, under PIL's error threshold
    ours.write_bytes(png_bomb(10_000, 10_000, pixels=False))
    return good, header_bomb, ours


def test_bombs_in_a_data_set_are_named_errors_not_crashes(files):
    good, header_bomb, ours = files
    for path, declared in ((header_bomb, "10000000000 pixels"), (ours, "10000x10000 = 100000000 pixels")):
        for read in (lambda p: decode_file(p, (16, 16), 3, "center"), probe_file):
            with pytest.raises(ImageTooLarge, match=declared) as err:
                read(path)
            assert str(path) in str(err.value) and isinstance(err.value, UnreadableImage)
            assert err.value.limit == MAX_PIXELS
    assert probe_file(good) == (30, 20, "RGB")
    images, ok, bad = decode_many([str(good), str(header_bomb), str(ours)], (16, 16), 3, "center", threads=2)
    assert ok == [0] and images.shape == (1, 3, 16, 16) and [p for p, _ in bad] == [str(header_bomb), str(ours)]


def test_a_bomb_among_mask_files_is_skipped_by_name(files, tmp_path):
    from maskcrypt.masks import MaskLibrary, import_masks

    _, header_bomb, _ = files
    src = tmp_path / "masks"
    src.mkdir()
    (src / "bomb.png").write_bytes(header_bomb.read_bytes())
    Image.fromarray(np.where(np.arange(256).reshape(16, 16) < 40, 255, 0).astype(np.uint8)).save(src / "m.png")
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    report = import_masks(src, lib)
    assert report.added == 1 and [name for name, _ in report.unreadable] == ["bomb.png"], report
    assert "exceeds limit" in report.unreadable[0][1]


def test_client_refuses_a_bomb_or_a_broken_image_by_name(tmp_path):
    from maskcrypt.masks import MaskLibrary, generate
    from maskcrypt.serving.client import Client

    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    lib.append([(generate(2, 16, seed=0), ["a", "b"], ["x", "x"])])
    client = Client("http://127.0.0.1:9", targets=lib.part_paths()[0])  # never reached: refused before sending
    with pytest.raises(ImageTooLarge, match="10000000000 pixels"):
        client.recognize(png_bomb(100_000, 100_000, pixels=False))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(10_000, 10_000, pixels=False))
    with pytest.raises(ImageTooLarge, match=str(bomb)):
        client.recognize(bomb)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG")
    with pytest.raises(UnreadableImage, match="client image: unreadable image"):
        client.recognize(buf.getvalue()[:200])
    with pytest.raises(MaskcryptError, match="unreadable image"):
        client.recognize(b"not an image")
