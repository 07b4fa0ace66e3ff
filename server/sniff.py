"""What an image file declares about itself, read from its header by content, never by its name.

The server checks a frame's memory (width x height x channels x 4 bytes: every format is decoded to float32)
against its limits *before* a decoder sees the file: a few hundred kilobytes of compressed zeros can
declare gigabytes of pixels, and an EXR named ``.png`` must be measured as the EXR it is. Pure Python
(struct) on purpose: nothing here allocates more than a header.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from frdm.server import protocol
from frdm.server.protocol import Limits, ProtocolError

#: Bytes per decoded channel value: the engine reads every format as float32.
DECODED_BYTES = 4

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes from offset


@dataclass(frozen=True)
class ImageHeader:
    format: str  # exr | dpx | tiff | png | jpeg
    width: int
    height: int
    channels: int

    @property
    def extension(self) -> str:
        """The file extension the decoder is told (from the content, whatever the file is called)."""
        return {"jpeg": ".jpg", "tiff": ".tif"}.get(self.format, "." + self.format)

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.channels * DECODED_BYTES


FORMATS = "EXR, DPX, TIFF, PNG, JPEG"


def reader_of(data: bytes | bytearray | memoryview) -> ReadAt:
    mv = memoryview(data)
    return lambda offset, size: bytes(mv[offset : offset + size])


def sniff(read_at: ReadAt, name: str) -> ImageHeader:
    """The format and declared size of an image; ProtocolError(bad_input) naming ``name`` if unreadable."""
    magic = read_at(0, 8)
    if magic.startswith(b"\x76\x2f\x31\x01"):
        # An EXR header is attributes only; 1 MiB holds any real one (exr_info says so if it does not).
        info = protocol.exr_info(read_at(0, 1 << 20), name)
        return ImageHeader("exr", info.width, info.height, info.channels)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(read_at, name)
    if magic[:4] in (b"SDPX", b"XPDS"):
        return _dpx(read_at, name, ">" if magic[:4] == b"SDPX" else "<")
    if magic[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(read_at, name, "<" if magic[:2] == b"II" else ">")
    if magic[:4] in (b"II+\x00", b"MM\x00+"):
        raise _bad(name, "BigTIFF is not supported; write a classic TIFF or an EXR")
    if magic.startswith(b"\xff\xd8"):
        return _jpeg(read_at, name)
    raise _bad(name, f"not an image format the server reads ({FORMATS}), whatever its name says")


def max_file_bytes(limits: Limits) -> int:
    """The largest file (inline part or path-mode file) one frame may be: an uncompressed EXR is its decoded
    size plus a small offset table and header, and a sixteenth plus 1 MiB covers both."""
    return min(limits.max_message_bytes, limits.max_frame_bytes + limits.max_frame_bytes // 16 + (1 << 20))


def check_frame_size(header: ImageHeader, limits: Limits, name: str) -> None:
    """Pixels, channels and decoded bytes against the server's per-frame limits: too_large naming ``name``."""
    protocol.check_frame_size(header.width, header.height, header.channels, limits, name, header.decoded_bytes)


def _bad(name: str, why: str) -> ProtocolError:
    return ProtocolError("bad_input", f"{name}: {why}")


def _unpack(fmt: str, read_at: ReadAt, offset: int, name: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    data = read_at(offset, size)
    if len(data) < size:
        raise _bad(name, "the image header is truncated")
    return struct.unpack(fmt, data)


def _positive(name: str, width: int, height: int, channels: int, fmt: str) -> ImageHeader:
    if width <= 0 or height <= 0 or channels <= 0:
        raise _bad(name, f"the {fmt.upper()} header declares an empty image ({width}x{height}, {channels} channels)")
    return ImageHeader(fmt, width, height, channels)


def _png(read_at: ReadAt, name: str) -> ImageHeader:
    length, kind, width, height, _depth, colour = _unpack(">I4sIIBB", read_at, 8, name)
    if kind != b"IHDR" or length != 13:
        raise _bad(name, "a PNG without its IHDR header")
    # colour type -> channels once decoded (a palette may carry transparency: count it as RGBA)
    channels = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour)
    if channels is None:
        raise _bad(name, f"PNG colour type {colour} does not exist")
    return _positive(name, width, height, channels, "png")


def _dpx(read_at: ReadAt, name: str, endian: str) -> ImageHeader:
    # SMPTE 268M: the image information header starts at byte 768; each of up to 8 elements is 72 bytes.
    _orientation, elements, width, height = _unpack(endian + "HHII", read_at, 768, name)
    if not 1 <= elements <= 8:
        raise _bad(name, f"a DPX header with {elements} image elements (1 to 8 exist)")
    channels = 0
    for e in range(elements):
        (descriptor,) = _unpack("B", read_at, 780 + 72 * e + 20, name)
        # 50 RGB, 51 RGBA, 52 ABGR, 100-103 CbYCr(A) variants; single components are 1; anything else: RGBA
        channels += {50: 3, 51: 4, 52: 4, 100: 2, 101: 3, 102: 3, 103: 4}.get(descriptor, 1 if descriptor < 50 else 4)
    return _positive(name, width, height, channels, "dpx")


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG: the only types the size tags use


def _tiff(read_at: ReadAt, name: str, endian: str) -> ImageHeader:
    (ifd,) = _unpack(endian + "I", read_at, 4, name)
    (count,) = _unpack(endian + "H", read_at, ifd, name)  # the first image file directory, wherever it lies
    tags: dict[int, int] = {}
    entries = read_at(ifd + 2, 12 * count)
    if len(entries) < 12 * count:
        raise _bad(name, "the TIFF directory is truncated")
    for i in range(count):
        tag, kind, n = struct.unpack_from(endian + "HHI", entries, 12 * i)
        if tag in (256, 257, 277) and kind in _TIFF_TYPES and n >= 1:
            code, _ = _TIFF_TYPES[kind]
            (tags[tag],) = struct.unpack_from(endian + code, entries, 12 * i + 8)
    if 256 not in tags or 257 not in tags:
        raise _bad(name, "a TIFF without ImageWidth/ImageLength")
    return _positive(name, tags[256], tags[257], tags.get(277, 1), "tiff")


def _jpeg(read_at: ReadAt, name: str) -> ImageHeader:
    pos = 2
    for _ in range(1000):  # markers up to the frame header; a real file has a handful
        marker, kind, length = _unpack(">BBH", read_at, pos, name)
        if marker != 0xFF:
            raise _bad(name, "a JPEG whose markers are corrupt")
        if kind in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            _precision, height, width, components = _unpack(">BHHB", read_at, pos + 4, name)
            return _positive(name, width, height, components, "jpeg")
        if length < 2:
            raise _bad(name, "a JPEG whose markers are corrupt")
        pos += 2 + length
    raise _bad(name, "a JPEG without a frame header")
