"""EXR files <-> raw pixel frames without OpenImageIO: what the host side (the Nuke node) needs to send the
EXRs its host renders as raw pixels and to write the raw replies back as EXRs for the host's Read node.

Torch-free and OpenImageIO-free (numpy and the standard library's zlib). It covers the files a host's
temporary Write makes: single-part scanline images, half/float channels, uncompressed, ZIPS (one line per
block, Nuke's "Zip (1 scanline)") or ZIP (16 lines). Anything else (tiles, other compressions, deep or
multi-part files, integer channels) is ``None`` from ``decode`` and is sent as EXR bytes instead.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from frdm.server.protocol import RawImage, RawSpec

_MAGIC = b"\x76\x2f\x31\x01"
_LONG_NAMES = 0x400
_NONE, _ZIPS, _ZIP = 0, 2, 3
_LINES = {_NONE: 1, _ZIPS: 1, _ZIP: 16}
COMPRESSIONS = {"none": _NONE, "zips": _ZIPS, "zip": _ZIP}
_PIXEL_TYPE = {"half": 1, "float": 2}
_TYPE_OF = {1: "half", 2: "float"}
# Attributes this module writes itself (or that OpenImageIO derives): never copied from a frame's own.
_OWN = {
    "channels",
    "compression",
    "dataWindow",
    "displayWindow",
    "lineOrder",
    "pixelAspectRatio",
    "PixelAspectRatio",
    "screenWindowCenter",
    "screenWindowWidth",
}


# --- ZIP, as OpenEXR does it: bytes split into even/odd halves, a delta predictor, then zlib -------------


def _predict(rows: np.ndarray) -> np.ndarray:
    """(blocks, n) raw bytes -> what zlib gets, every block at once."""
    shuffled = np.concatenate([rows[:, 0::2], rows[:, 1::2]], axis=1)
    delta = shuffled.copy()
    delta[:, 1:] = shuffled[:, 1:] - shuffled[:, :-1] + np.uint8(128)  # uint8 arithmetic wraps mod 256
    return delta


def _unpredict(delta: np.ndarray) -> np.ndarray:
    """Inverse of ``_predict`` for (blocks, n) bytes."""
    delta = delta.copy()
    delta[:, 1:] -= np.uint8(128)
    shuffled = np.cumsum(delta, axis=1, dtype=np.uint8)
    half = (delta.shape[1] + 1) // 2
    out = np.empty_like(shuffled)
    out[:, 0::2] = shuffled[:, :half]
    out[:, 1::2] = shuffled[:, half:]
    return out


# --- writing -------------------------------------------------------------------------------------------


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _extra_attributes(attributes: Mapping[str, tuple[str, Any]]) -> list[bytes]:
    out = []
    for name, (kind, value) in attributes.items():
        if name in _OWN or name.startswith("oiio:") or not name.isprintable():
            continue
        if kind == "string" and isinstance(value, str):
            out.append(_attr(name, "string", value.encode("utf-8")))
        elif kind == "int" and isinstance(value, int) and -(2**31) <= value < 2**31:
            out.append(_attr(name, "int", struct.pack("<i", value)))
        elif kind == "float" and isinstance(value, (int, float)):
            out.append(_attr(name, "float", struct.pack("<f", value)))
    return out


def _file_lines(a: np.ndarray, order: list[int], out: np.ndarray) -> None:
    """Write a raw frame's samples (``a``: (H, W, C) or (H, W) of records) into ``out`` ((H, line bytes)
    uint8, rows may be strided) in a scanline's file layout: each channel's samples of a line one after
    another, channels in ``order``. One copy per channel, bit for bit (a same-type copy: NaN payloads kept)."""
    at = 0
    for i in order:
        plane = a[..., i] if a.dtype.names is None else a[a.dtype.names[i]]
        n = plane.shape[1] * plane.dtype.itemsize
        out[:, at : at + n].view(plane.dtype)[...] = plane
        at += n


def encode_parts(image: RawImage, compression: str = "zips", level: int = 4) -> list[Any]:
    """``encode``'s file as parts to write one after another (``atomic.write_bytes`` takes them): an
    uncompressed frame's pixels are never joined with its header into one more copy."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: this writer knows {', '.join(COMPRESSIONS)}")
    code = COMPRESSIONS[compression]
    s = image.spec
    order = sorted(range(len(s.channels)), key=lambda i: s.channels[i].encode())
    chlist = b"".join(
        s.channels[i].encode() + b"\0" + struct.pack("<iB3xii", _PIXEL_TYPE[s.types[i]], 0, 1, 1) for i in order
    )
    x, y, w, h = s.data_window
    dx, dy, dw, dh = s.display_window
    attrs = [
        _attr("channels", "chlist", chlist + b"\0"),
        _attr("compression", "compression", bytes([code])),
        _attr("dataWindow", "box2i", struct.pack("<4i", x, y, x + w - 1, y + h - 1)),
        _attr("displayWindow", "box2i", struct.pack("<4i", dx, dy, dx + dw - 1, dy + dh - 1)),
        _attr("lineOrder", "lineOrder", b"\0"),
        _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _attr("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
        _attr("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        *_extra_attributes(s.attributes),
    ]
    long_names = any(len(n.encode()) > 31 for n in (*s.channels, *s.attributes))
    header = _MAGIC + struct.pack("<I", 2 | (_LONG_NAMES if long_names else 0)) + b"".join(attrs) + b"\0"
    a = image.array()
    line_bytes = w * sum(2 if t == "half" else 4 for t in s.types)
    lines = _LINES[code]
    if code == _NONE:
        # One line per block, all the same size: each row is the block header, then the line's planes,
        # written there at once (no planes gathered first).
        table = np.empty((h, 8 + line_bytes), np.uint8)
        table[:, :8].view("<i4")[:, 0] = np.arange(y, y + h, dtype=np.int32)
        table[:, :8].view("<i4")[:, 1] = line_bytes
        _file_lines(a, order, table[:, 8:])
        start = len(header) + 8 * h
        offsets = start + np.arange(h, dtype=np.uint64) * np.uint64(table.shape[1])
        return [header, offsets.astype("<u8").tobytes(), table.reshape(-1)]
    # The lines' data in file order: (H, line bytes), one copy per channel.
    lines_data = np.empty((h, line_bytes), np.uint8)
    _file_lines(a, order, lines_data)
    blocks = [lines_data[y0 : y0 + lines].reshape(-1) for y0 in range(0, h, lines)]
    if lines == 1:
        predicted = list(_predict(lines_data))
    else:
        full = h // lines * lines
        predicted = list(_predict(lines_data[:full].reshape(h // lines, -1))) if full else []
        if full < h:
            predicted += list(_predict(lines_data[full:].reshape(1, -1)))
    chunks = []
    for i, (raw, pred) in enumerate(zip(blocks, predicted)):
        data = zlib.compress(pred, level)
        if len(data) >= raw.size:
            data = raw.tobytes()  # OpenEXR's rule: a block that does not shrink is stored as it is
        chunks.append(struct.pack("<ii", y + i * lines, len(data)) + data)
    offsets_list, pos = [], len(header) + 8 * len(chunks)
    for c in chunks:
        offsets_list.append(pos)
        pos += len(c)
    return [header, struct.pack(f"<{len(offsets_list)}Q", *offsets_list), *chunks]


def encode(image: RawImage, compression: str = "zips", level: int = 4) -> bytes:
    """An EXR file of a raw frame: channels in EXR's (sorted) order, its windows and its string, int and
    float attributes. ``compression`` is none, zips or zip (lossless)."""
    return b"".join(encode_parts(image, compression, level))


# --- reading -------------------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> RawImage | None:
    """A raw frame of an EXR file this module can read, else None (send the file's bytes instead).
    Raises ValueError for a file that claims to be a readable EXR but is damaged."""
    mv = memoryview(data)
    if len(mv) < 8 or bytes(mv[:4]) != _MAGIC:
        return None
    (version,) = struct.unpack_from("<I", mv, 4)
    if version & 0xFF != 2 or version & ~(0xFF | _LONG_NAMES):
        return None  # tiled, deep, multi-part or a later version
    pos = 8
    attrs: dict[str, tuple[str, memoryview]] = {}
    while True:
        end = bytes(mv[pos : pos + 256]).find(b"\0")
        if end < 0:
            raise ValueError("EXR header: an attribute name is unterminated")
        name = bytes(mv[pos : pos + end]).decode("latin-1")
        pos += end + 1
        if not name:
            break
        end = bytes(mv[pos : pos + 256]).find(b"\0")
        kind = bytes(mv[pos : pos + end]).decode("latin-1")
        pos += end + 1
        (size,) = struct.unpack_from("<i", mv, pos)
        pos += 4
        if size < 0 or pos + size > len(mv):
            raise ValueError(f"EXR header: attribute '{name}' runs past the end")
        attrs[name] = (kind, mv[pos : pos + size])
        pos += size
    if "tiles" in attrs or "type" in attrs and bytes(attrs["type"][1]).rstrip(b"\0") != b"scanlineimage":
        return None
    code = attrs["compression"][1][0] if "compression" in attrs else _NONE
    if code not in _LINES:
        return None
    names, types = [], []
    cl = bytes(attrs["channels"][1])
    at = 0
    while at < len(cl) and cl[at] != 0:
        end = cl.index(b"\0", at)
        ptype, _, xs, ys = struct.unpack_from("<iB3xii", cl, end + 1)
        if ptype not in _TYPE_OF or xs != 1 or ys != 1:
            return None  # integer or subsampled channels: the file goes as it is
        names.append(cl[at:end].decode("utf-8"))
        types.append(_TYPE_OF[ptype])
        at = end + 17
    x0, y0, x1, y1 = struct.unpack("<4i", bytes(attrs["dataWindow"][1]))
    dx0, dy0, dx1, dy1 = struct.unpack("<4i", bytes(attrs["displayWindow"][1]))
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if not names or w < 1 or h < 1:
        raise ValueError("EXR header: no channels or an empty data window")
    # As OpenImageIO reports it: a writer asked for the input's own compression ('same') finds it here.
    extra: dict[str, tuple[str, Any]] = {"compression": ("string", {v: k for k, v in COMPRESSIONS.items()}[code])}
    for name, (kind, value) in attrs.items():
        if name in _OWN:
            continue
        if kind == "string":
            extra[name] = ("string", bytes(value).decode("utf-8", "replace"))
        elif kind == "int" and len(value) == 4:
            extra[name] = ("int", struct.unpack("<i", value)[0])
        elif kind == "float" and len(value) == 4:
            extra[name] = ("float", struct.unpack("<f", value)[0])
    sizes = [2 if t == "half" else 4 for t in types]
    line_bytes = w * sum(sizes)
    lines = _LINES[code]
    count = (h + lines - 1) // lines
    offsets = struct.unpack_from(f"<{count}Q", mv, pos)
    spec = RawSpec((x0, y0, w, h), (dx0, dy0, dx1 - dx0 + 1, dy1 - dy0 + 1), tuple(names), tuple(types), extra)
    pixel = sum(sizes)
    starts = np.cumsum([0, *sizes[:-1]])
    if max(offsets, default=0) + 8 > len(mv):
        raise ValueError("EXR offset table points past the end of the file")
    step = 8 + line_bytes
    first_off = offsets[0] if offsets else 0
    region = None
    if (
        code == _NONE
        and first_off + h * step <= len(mv)
        and offsets == tuple(range(first_off, first_off + h * step, step))
    ):
        # Uncompressed, one line per block, the blocks one after another (what every writer does): the
        # file's own bytes are the lines, read in place (no per-block copy) once their headers check out.
        region = np.frombuffer(mv, np.uint8, h * step, first_off).reshape(h, step)
        heads = np.ascontiguousarray(region[:, :8]).view("<i4")
        if not (np.array_equal(heads[:, 0], np.arange(y0, y0 + h)) and (heads[:, 1] == line_bytes).all()):
            region = None  # blocks out of order or of other sizes: read one by one below (and judged there)
    if region is not None:
        scan = region[:, 8:]
    else:
        scan = _read_blocks(mv, offsets, h, y0, lines, line_bytes)
    # File layout (channel planes per line) into ours (interleaved): one copy per channel.
    if len(set(sizes)) == 1:  # one sample size (all half or all float)
        sample = np.dtype(f"<u{sizes[0]}")
        out = np.empty((h, w, len(sizes)), sample)
        for c in range(len(sizes)):
            out[:, :, c] = scan[:, c * w * sizes[0] : (c + 1) * w * sizes[0]].view(sample)
        return RawImage(spec, out.reshape(-1).view(np.uint8))
    out8 = np.empty((h, w, pixel), np.uint8)
    at = 0
    for c, sz in enumerate(sizes):
        out8[:, :, starts[c] : starts[c] + sz] = scan[:, at : at + w * sz].reshape(h, w, sz)
        at += w * sz
    return RawImage(spec, out8.reshape(-1))


def _read_blocks(mv: memoryview, offsets: tuple[int, ...], h: int, y0: int, lines: int, line_bytes: int) -> np.ndarray:
    """Every block's lines in file layout (channel planes per line), (H, line bytes): any block order,
    stored or ZIP-compressed blocks."""
    scan = np.empty((h, line_bytes), np.uint8)
    packed: dict[int, tuple[int, bytes]] = {}  # zipped blocks by first line, undone together below
    for off in offsets:
        ly, n = struct.unpack_from("<ii", mv, off)
        first = ly - y0
        if first < 0 or first >= h or first % lines or n < 0 or off + 8 + n > len(mv):
            raise ValueError(f"EXR block at line {ly} is out of range")
        count_lines = min(lines, h - first)
        size = count_lines * line_bytes
        if n == size:
            scan[first : first + count_lines] = np.frombuffer(mv[off + 8 : off + 8 + n], np.uint8).reshape(
                count_lines, line_bytes
            )
        else:
            packed[first] = (count_lines, zlib.decompress(mv[off + 8 : off + 8 + n], bufsize=size))
    for count_lines in {c for c, _ in packed.values()}:
        firsts = [f for f, (c, _) in packed.items() if c == count_lines]
        size = count_lines * line_bytes
        delta = np.frombuffer(b"".join(packed[f][1] for f in firsts), np.uint8)
        if delta.size != size * len(firsts):
            raise ValueError("EXR: a ZIP block does not hold its lines")
        restored = _unpredict(delta.reshape(len(firsts), size))
        for f, block in zip(firsts, restored):
            scan[f : f + count_lines] = block.reshape(count_lines, line_bytes)
    return scan
