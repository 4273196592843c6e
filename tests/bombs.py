"""Decompression bombs: PNGs that declare far more pixels than they carry bytes, built by hand."""

from __future__ import annotations

import functools
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=4)
def png_bomb(width: int, height: int, pixels: bool = True) -> bytes:
    """An 8-bit greyscale PNG of ``width x height`` zeros; ``pixels=False``: the header only.

    20,000 x 20,000 is a real, valid image of 400 M pixels in ~390 KB (deflate on zeros),
    built in a few seconds; the header-only one is 45 bytes whatever it declares.
    """
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if pixels:
        deflate = zlib.compressobj(9)
        rows = bytes((1 + width) * 1000)  # filter byte 0 + a row of zeros, 1,000 rows at a time
        body = [deflate.compress(rows) for _ in range(height // 1000)]
        body.append(deflate.compress(bytes((1 + width) * (height % 1000))))
        out += _chunk(b"IDAT", b"".join(body) + deflate.flush())
    return out + _chunk(b"IEND", b"")
