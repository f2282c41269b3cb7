"""Raw EXIF blocks with any tag type, as cameras and broken tools write them (Pillow writes each
standard tag with its standard type only)."""

from __future__ import annotations

import struct

TYPES = {"BYTE": (1, "B"), "ASCII": (2, "s"), "SHORT": (3, "H"), "LONG": (4, "I"), "RATIONAL": (5, "II"),
         "SSHORT": (8, "h"), "SLONG": (9, "i"), "SRATIONAL": (10, "ii")}  # fmt: skip


def exif_block(*entries: tuple[int, str, object]) -> bytes:
    """An `Exif\\0\\0` + little-endian TIFF block with one IFD of (tag, type name, value) entries;
    a RATIONAL value is (numerator, denominator), ASCII a str."""
    data = b""
    start = 8 + 2 + 12 * len(entries) + 4  # where values too big for an entry go
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in sorted(entries, key=lambda e: e[0]):
        code, fmt = TYPES[kind]
        if kind == "ASCII":
            raw, count = str(value).encode() + b"\0", len(str(value)) + 1
        elif kind in ("RATIONAL", "SRATIONAL"):
            raw, count = struct.pack("<" + fmt, *value), 1
        else:
            raw, count = struct.pack("<" + fmt, value), 1
        if len(raw) <= 4:
            field = raw.ljust(4, b"\0")
        else:
            field = struct.pack("<I", start + len(data))
            data += raw + (b"\0" if len(raw) % 2 else b"")
        ifd += struct.pack("<HHI", tag, code, count) + field
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data
