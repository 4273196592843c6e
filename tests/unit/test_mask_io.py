from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskcrypt.core.errors import MaskcryptError
from maskcrypt.masks import MaskLibrary, export_masks, import_masks, mask_sha256, read_mask_file
from maskcrypt.masks.generate import generate_into


def _nvidia_png(path, hole_box=(100, 150, 300, 400), size=512):
    """An NVIDIA-style mask file: 8-bit, 512 x 512, white (255) = hole."""
    arr = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = hole_box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)
    return arr


def test_nvidia_polarity_holes_become_zero(tmp_path):
    src = tmp_path / "nvidia"
    src.mkdir()
    _nvidia_png(src / "00000.png", (0, 0, 256, 512))  # top half is the hole
    _nvidia_png(src / "00001.png", (128, 128, 384, 384))
    lib = MaskLibrary.create(str(tmp_path / "lib"), 64, 64)
    report = import_masks(src, lib)
    assert (report.added, report.duplicates, report.skipped) == (2, 0, [])
    batch = lib.get(["00000", "00001"])
    np.testing.assert_array_equal(batch.masks[0][:32], 0)  # hole -> 0
    np.testing.assert_array_equal(batch.masks[0][32:], 1)
    assert batch.masks[1][16:48, 16:48].max() == 0 and batch.masks[1][0, 0] == 1
    assert batch.ratios.tolist() == [0.5, 0.25]
    assert batch.sources == ["00000.png", "00001.png"]


def test_export_png_and_reimport_roundtrip(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 40, 40)
    generate_into(lib, 12, seed=3)
    written = export_masks(lib, tmp_path / "out")
    assert len(written) == 12
    png = np.asarray(Image.open(written[0]))
    assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
    first = lib.load()
    first_by_id = dict(zip(first.mask_ids, first.masks))
    np.testing.assert_array_equal(png == 255, first_by_id[written[0].stem] == 0)  # white = hole
    # Re-importing the exported files gives the very same masks (same sha256): all duplicates.
    report = import_masks(tmp_path / "out", lib)
    assert (report.added, report.duplicates) == (0, 12)
    other = MaskLibrary.create(str(tmp_path / "other"), 40, 40)
    import_masks(tmp_path / "out", other)
    assert sorted(other.column("sha256")) == sorted(lib.column("sha256"))


def test_export_npy_keeps_our_polarity(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    generate_into(lib, 6, seed=1)
    ids = lib.column("mask_id")[:2]
    written = export_masks(lib, tmp_path / "npy", ids, fmt="npy")
    arr = np.load(written[0])
    np.testing.assert_array_equal(arr, lib.get([ids[0]]).masks[0])
    with pytest.raises(MaskcryptError, match="png or npy"):
        export_masks(lib, tmp_path / "x", fmt="gif")


def test_hole_value_zero_and_jpeg(tmp_path):
    arr = np.full((32, 32), 255, np.uint8)
    arr[:8] = 0  # black = hole in this source
    Image.fromarray(arr).save(tmp_path / "m.jpg", quality=95)
    mask = read_mask_file(tmp_path / "m.jpg", (32, 32), hole_value=0)
    assert mask[:8].max() == 0 and mask[8:].min() == 1


def test_grey_images_and_corrupt_files_are_skipped_and_listed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _nvidia_png(src / "good.png", size=64)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(src / "photo.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lib = MaskLibrary.create(str(tmp_path / "lib"), 32, 32)
    with pytest.warns(UserWarning, match="skipped 2"):
        report = import_masks(src, lib)
    assert report.added == 1
    assert [n for n, _ in report.not_masks] == ["photo.png"]
    assert [n for n, _ in report.unreadable] == ["broken.png"]
    assert "mid-grey" in report.not_masks[0][1]
    lib2 = MaskLibrary.create(str(tmp_path / "lib2"), 32, 32)
    with pytest.raises(MaskcryptError, match=r"broken\.png"):
        import_masks(src, lib2, strict=True)
    assert len(MaskLibrary.open(str(tmp_path / "lib2"))) == 0  # nothing committed by the failed import


def test_import_errors_name_the_directory(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 16, 16)
    with pytest.raises(MaskcryptError, match="not a directory"):
        import_masks(tmp_path / "missing", lib)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskcryptError, match=r"no \.png"):
        import_masks(tmp_path / "empty", lib)


def test_same_mask_from_png_and_generator_has_one_identity(tmp_path):
    lib = MaskLibrary.create(str(tmp_path / "lib"), 24, 24)
    generate_into(lib, 3, seed=2)
    gen = lib.load()
    Image.fromarray(np.where(gen.masks[0] == 0, 255, 0).astype(np.uint8)).save(tmp_path / "same.png")
    from_png = read_mask_file(tmp_path / "same.png", (24, 24))
    assert mask_sha256(from_png) == gen.sha256[0]
