"""Engine frames <-> raw pixel frames (``protocol.RawImage``), and the server's stored form of a finished
frame. Server side only (it builds ``engine.frames.Frame``s); the wire format itself is in protocol.py.

A stored frame is the wire's own form: a length-prefixed msgpack header (the frame's description) and its
pixel buffer, or, for a frame the restorer left unchanged, the header alone with ``pixels: "source"``:
its pixels are the bytes of the request's own source buffer (whose hash is part of the key). A changed frame
laid out as its source (same window, channels and types) keeps only its changed pixels (``pixels:
"changes"``: their flat indices as little-endian uint32, then their samples), over the source's bytes,
where those are the smaller.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from frdm.engine.frames import refuse_not_finite
from frdm.server import protocol
from frdm.server.protocol import ProtocolError, RawImage, RawSpec

_ENTRY_HEAD = struct.Struct("<I")
# 2: a changed frame laid out as its source stores only the pixels that differ (a 2K frame of dust fills was
# 25 MB written per frame; now a few hundred KB). Entries of format 1 read as misses.
ENTRY_FORMAT = 2


def wire_types(formats: Sequence[str], pixel_type: str = "same") -> tuple[str, ...]:
    """The raw sample type of each channel: ``pixel_type`` if given, else half stays half and everything
    else travels as float (exact for float and for 8/16-bit integer code values, as in an EXR)."""
    if pixel_type in protocol.RAW_TYPES:
        return (pixel_type,) * len(formats)
    return tuple("half" if f == "half" else "float" for f in formats)


def _wire_attributes(attributes: dict[str, tuple[str, Any]]) -> dict[str, tuple[str, Any]]:
    """The attributes the wire can carry (as a file format drops what it cannot hold: pixels matter more)."""
    out = {}
    for name, item in attributes.items():
        try:
            kind, value = item
            value = list(value) if isinstance(value, tuple) else value
            out[protocol._name(name, "attribute")] = protocol._attribute([str(kind), value], name)
        except (ProtocolError, TypeError, ValueError):
            continue
    return out


def raw_from_frame(frame: Any, pixel_type: str = "same") -> RawImage:
    """A Frame's pixels in its wire types: one conversion pass into a fresh buffer, or none at all for a frame
    that holds half samples (``Frame.half``) sent as half: those samples are the buffer."""
    types = wire_types(frame.formats, pixel_type)
    attributes = _wire_attributes(frame.attributes)
    if frame.half is not None and set(types) == {"half"}:
        h, w, c = frame.half.shape
        x, y = int(frame.data_window[0]), int(frame.data_window[1])
        spec = RawSpec((x, y, w, h), tuple(frame.display_window), tuple(frame.channels), types, attributes)
        spec.check_channels(c)
        return RawImage(spec, np.ascontiguousarray(frame.half))
    return RawImage.from_float32(
        frame.pixels, frame.channels, types, frame.data_window, frame.display_window, attributes
    )


def frame_from_raw(raw: RawImage, name: str, pixels: np.ndarray | None = None, *, checked: bool = False) -> Any:
    """The engine's Frame of a raw frame. NaN/Inf are refused as a file's would be. A frame whose channels are
    all half holds the received halves as they are (a read-only view of the buffer, not copied: the engine
    converts them into model space by table and decodes a float32 copy only if something asks for
    ``pixels``, as it holds a half EXR's); any other frame is converted to float32 in one pass.
    ``pixels``: the frame's float32 pixels already converted (and checked) earlier; ``checked``: these very
    samples were found finite earlier (the server's recent sources remember it by content id)."""
    from frdm.engine.frames import Frame

    if pixels is None:
        held = raw.array()
        if held.dtype == np.float16:
            if not held.flags.aligned:
                # A cache entry's pixels follow its header at any offset; OpenImageIO refuses to write
                # unaligned samples (and numpy reads them slowly): those few are copied.
                held = held.copy()
            # The received buffer may be writable; it is also the reply of an unchanged frame and a recent
            # source: nothing may write into it through the frame.
            held.flags.writeable = False
            pixels = held
        else:
            pixels = raw.to_float32()
        if not checked:
            check_finite(pixels, raw, name)
    s = raw.spec
    attributes = {k: (t, v) for k, (t, v) in s.attributes.items() if k != DECLARED_COLORSPACE[0]}
    return Frame(
        pixels,
        s.channels,
        s.types,
        s.data_window,
        s.display_window,
        attributes,
        0,
        name,
        file_colorspace=declared_colorspace(s.attributes),
    )


def check_finite(samples: np.ndarray, raw: RawImage, name: str) -> None:
    """Refuse NaN and Inf in a frame's float32 pixels or half samples, naming the first (frames' one test)."""
    refuse_not_finite(samples, raw.spec.channels, raw.spec.data_window, name)


#: Where a frame declares its colour space, first wins: OpenImageIO's own attribute (a host may send it),
#: then the EXR header's ``colorInteropID``, from which OpenImageIO derives it when it reads the file: so a
#: frame sent as raw pixels resolves colorspace 'auto' as the same frame read from its file does.
DECLARED_COLORSPACE = ("oiio:ColorSpace", "colorInteropID")


def declared_colorspace(attributes: Mapping[str, tuple[str, Any]]) -> str:
    for name in DECLARED_COLORSPACE:
        kind, value = attributes.get(name, ("", ""))
        if kind == "string" and isinstance(value, str) and value.strip():
            return value
    return ""


def changed_from_raw(raw: RawImage, original: np.ndarray, frame: Any) -> RawImage:
    """``frame`` (float32 pixels) in ``raw``'s sample types when it differs from ``raw`` (whose float32
    pixels are ``original``) in some pixels: the source's own samples, with only the pixels whose bits
    changed converted. The same bytes as ``raw_from_frame`` (a half read as float and back is itself), for a
    compare and a copy instead of converting every sample (restorers change few pixels). A frame of mixed
    types comes this way; an all-half one holds halves and needs neither (``raw_from_frame``)."""
    pixels = frame.pixels
    h, w, c = pixels.shape
    where = _changed_pixels(_pixel_rows(pixels), _pixel_rows(original))  # bits: -0.0 is not 0.0
    values = np.take(pixels.reshape(h * w, c), where, axis=0)
    out = np.array(raw.array())  # a writable copy of the samples as they came
    if out.dtype.names is None:
        out.reshape(h * w, c)[where] = values.astype(out.dtype)
    else:
        flat = out.reshape(h * w)
        for i, field_name in enumerate(out.dtype.names):
            flat[field_name][where] = values[:, i]
    s = raw.spec
    spec = RawSpec(s.data_window, s.display_window, s.channels, s.types, _wire_attributes(frame.attributes))
    return RawImage(spec, out)


def with_attributes(raw: RawImage, frame: Any) -> RawImage:
    """``raw``'s pixels (the same buffer, not copied) described with ``frame``'s attributes."""
    s = raw.spec
    spec = RawSpec(s.data_window, s.display_window, s.channels, s.types, _wire_attributes(frame.attributes))
    return RawImage(spec, raw.buffer)


# --- stored frames -----------------------------------------------------------------------------------


def _same_layout(a: RawSpec, b: RawSpec) -> bool:
    return (a.data_window, a.channels, a.types) == (b.data_window, b.channels, b.types)


def _pixel_bytes(raw: RawImage) -> np.ndarray:
    """(pixels, bytes per pixel) uint8 view of a raw frame's buffer."""
    flat = np.frombuffer(memoryview(raw.buffer).cast("B"), np.uint8)
    return flat.reshape(raw.spec.width * raw.spec.height, -1)


def _pixel_rows(pixels: np.ndarray) -> np.ndarray:
    """(pixels, bytes per pixel) uint8 view of an (H, W, C) array (copied only if it is not contiguous)."""
    h, w = pixels.shape[:2]
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(h * w, -1)


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels whose bytes differ, of two (pixels, bytes per pixel) uint8 arrays: the one
    test of which pixels changed, on the raw samples (a cache entry's changes) and on float32 pixels
    (``changed_from_raw``) alike. A pixel is compared as few wide integers as divide its size (one for 1, 2,
    4 or 8 bytes), their results OR-ed column by column: any() over a short last axis is several times
    slower."""
    size = a.shape[1]
    word = np.dtype(f"<u{next(n for n in (8, 4, 2, 1) if size % n == 0)}")
    differs = np.ascontiguousarray(a).view(word) != np.ascontiguousarray(b).view(word)
    changed = differs[:, 0].copy() if differs.shape[1] > 1 else differs[:, 0]
    for i in range(1, differs.shape[1]):
        changed |= differs[:, i]
    return np.flatnonzero(changed)


def entry_bytes(raw: RawImage, source: RawImage | None = None, *, same_as_source: bool) -> list[Any]:
    """A finished frame as the parts of one cache file: the header, then nothing (the source's pixels), the
    changed pixels (laid out as ``source``: indices, then samples) or the whole buffer. Changes only where
    they are the smaller: a deflickered frame changes every pixel, and with an index beside each its changes
    were half again to twice the frame."""
    form, parts = "source", []
    if not same_as_source:
        form, parts = "inline", [raw.buffer]
        if source is not None and _same_layout(raw.spec, source.spec):
            mine = _pixel_bytes(raw)
            where = _changed_pixels(mine, _pixel_bytes(source))
            if where.size * (4 + mine.shape[1]) < mine.nbytes:
                form, parts = "changes", [where.astype("<u4"), np.ascontiguousarray(mine[where])]
    head = {"format": ENTRY_FORMAT, "image": raw.spec.to_wire(), "pixels": form}
    if form == "changes":
        head["changed"] = int(parts[0].size)
    packed = msgpack.packb(head, use_bin_type=True)
    return [_ENTRY_HEAD.pack(len(packed)), packed, *parts]


def entry_image(data: bytes, source: RawImage | None) -> RawImage | None:
    """A stored frame back as a RawImage; None for an entry this version cannot use (a miss)."""
    try:
        mv = memoryview(data)
        (n,) = _ENTRY_HEAD.unpack_from(mv, 0)
        head = protocol.unpack(mv[4 : 4 + n])
        if head.get("format") != ENTRY_FORMAT:
            return None
        spec = protocol.parse_raw_spec(head.get("image"), "cached frame")
        form = head.get("pixels")
        if form in ("source", "changes") and (source is None or not _same_layout(spec, source.spec)):
            return None
        if form == "source":
            return RawImage(spec, source.buffer)  # type: ignore[union-attr]
        if form == "changes":
            count, start = head.get("changed"), 4 + n
            pixels = _pixel_bytes(source)  # type: ignore[arg-type]
            size = pixels.shape[1]
            if not isinstance(count, int) or count < 0 or mv.nbytes != start + count * (4 + size):
                return None  # torn or damaged: a miss
            where = np.frombuffer(mv, "<u4", count, start)
            if count and int(where.max()) >= pixels.shape[0]:
                return None
            out = pixels.copy()  # the source's samples, then the changes over them
            out[where] = np.frombuffer(mv, np.uint8, count * size, start + 4 * count).reshape(count, size)
            return RawImage(spec, out.reshape(-1))
        return RawImage(spec, mv[4 + n :])
    except (ProtocolError, struct.error, ValueError):
        return None
