"""Frame I/O: EXR (half/float, any channels, data windows, metadata), DPX, TIFF, PNG through OpenImageIO;
image sequences (``name.%04d.exr``, ``name.####.exr``) with gaps; movie files through PyAV.

Pixels are float32 (H, W, C) over the *data window*. Every native type round-trips exactly through
float32 (half, float, 8/10/12/16-bit integers), so a frame read and written back with the same per-channel
formats is bit-identical: that is what makes "outside the mask nothing changes" hold in the file.

A frame whose channels are all half (most EXR renders and scans) holds the file's own half samples instead,
half the memory, and decodes them to float32 (exactly) only when its ``pixels`` are asked for. The file path
(``engine/pipeline.py``) does not ask when the output is half EXR or TIFF: it converts the halves into model
space by table (``engine/color.py``), blends only the pixels that change, and writes the halves back as they came
(``Frame.samples``). An output of another type (DPX, PNG, float EXR) decodes on writing.

Every write is atomic (``engine/atomic.py``): the file is written beside its destination under a temporary
name with the same extension (OpenImageIO picks the format by extension), synced and renamed over it.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from frdm.engine.atomic import atomic_path
from frdm.engine.errors import InputError
from frdm.engine.halves import half_to_float32

IMAGE_EXTENSIONS = (".exr", ".dpx", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".cin", ".sxr")
MOVIE_EXTENSIONS = (".mov", ".mp4", ".mkv", ".avi", ".mxf", ".webm", ".m4v")

# Attributes OpenImageIO computes itself on write; copying them would be wrong or pointless.
_DERIVED_ATTRIBUTES = {"oiio:subimages", "oiio:RowsPerChunk", "oiio:ColorSpace"}

# The zlib level of EXR zip/zips: the writer's default (4) costs ~1.6x the CPU of level 1 for files ~2% smaller
# (720p half RGB: 75-90 ms against 47 ms a frame, 2982 against 3045 KB); the pixels are the same either way and
# the file still says 'zip'. An explicit level ('zip:6') is obeyed.
EXR_ZIP_LEVEL = 1

# EXR compressions that lose information: re-encoding with them would change pixels outside the mask, so
# "same as the input" writes these as zip (lossless) instead. An explicit --compression is obeyed.
LOSSY_EXR_COMPRESSIONS = ("dwaa", "dwab", "b44", "b44a", "pxr24")


def _oiio():
    import OpenImageIO as oiio  # deferred: the host side never imports this module

    return oiio


@dataclass
class Frame:
    """One image: float32 pixels over the data window plus everything needed to write it back as it was.

    ``pixels`` may be given as float16 (a file's half samples): the frame holds those, and ``pixels`` decodes
    them on first use (see the module docstring; ``samples`` is what is held, without decoding)."""

    pixels: np.ndarray = field(repr=False)  # (H, W, C) float32, the data window (a property: see below)
    channels: tuple[str, ...]
    formats: tuple[str, ...]  # per-channel native type: "half", "float", "uint8", "uint16", "uint32"
    data_window: tuple[int, int, int, int]  # x, y, width, height
    display_window: tuple[int, int, int, int]
    attributes: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (oiio type, value)
    bits_per_sample: int = 0  # e.g. 10 for DPX scans stored as uint16; 0 = the format's own
    path: str | None = None
    # The colour space the file declares (OpenImageIO's oiio:ColorSpace), for colorspace 'auto'; not
    # written back (the writer derives its own).
    file_colorspace: str = ""

    @property
    def samples(self) -> np.ndarray:
        """What the frame holds, not decoded: the file's half samples (float16) or the float32 pixels. Read it;
        to change pixels, change ``pixels``."""
        return self._half if self._half is not None else self._float

    @property
    def half(self) -> np.ndarray | None:
        """The half samples (float16) the frame holds, or None (float32 pixels: another type, or decoded)."""
        return self._half

    @property
    def height(self) -> int:
        return int(self.samples.shape[0])

    @property
    def width(self) -> int:
        return int(self.samples.shape[1])

    @property
    def compression(self) -> str | None:
        item = self.attributes.get("compression")
        return str(item[1]) if item else None

    def channel_index(self, name: str) -> int:
        """Index of a channel by exact name, or by its last component ('mask' finds 'other.mask')."""
        if name in self.channels:
            return self.channels.index(name)
        for i, ch in enumerate(self.channels):
            if ch.split(".")[-1] == name:
                return i
        raise InputError(f"{self.path or 'frame'}: no channel '{name}' (channels are {', '.join(self.channels)})")

    def rgb_indices(self) -> list[int]:
        """Channels the restorer works on: R, G, B (first layer found), or one grey channel used three times."""
        names = [c.upper() for c in self.channels]
        for r, g, b in (("R", "G", "B"), ("RED", "GREEN", "BLUE")):
            if r in names and g in names and b in names:
                return [names.index(r), names.index(g), names.index(b)]
        for grey in ("Y", "L", "I", "GRAY", "GREY"):
            if grey in names:
                return [names.index(grey)] * 3
        if len(self.channels) in (1, 2):
            return [0, 0, 0]
        raise InputError(
            f"{self.path or 'frame'}: cannot find colour channels (R, G, B or Y) among {', '.join(self.channels)}"
        )

    def with_pixels(
        self, pixels: np.ndarray, channels: Sequence[str] | None = None, formats: Sequence[str] | None = None
    ) -> Frame:
        """A copy of the frame's description with ``pixels`` (float32, or float16 half samples: kept as they are)."""
        keep = getattr(pixels, "dtype", None) == np.float16 and pixels.flags.c_contiguous
        return replace(
            self,
            pixels=pixels if keep else np.ascontiguousarray(pixels, dtype=np.float32),
            channels=tuple(channels) if channels is not None else self.channels,
            formats=tuple(formats) if formats is not None else self.formats,
            attributes=dict(self.attributes),
        )


_DECODE_LOCK = threading.Lock()  # decoding is rare (not on the half-to-half file path): one lock for all


def _get_pixels(frame: Frame) -> np.ndarray:
    if frame._half is not None:
        # Decoded once; the halves go, since the caller may now change the float32 pixels (which are then
        # the frame's only truth) and holding both would cost half again the memory. Under a lock: two threads
        # asking at once would each decode, and what one wrote into its copy would be lost.
        with _DECODE_LOCK:
            if frame._half is not None:
                frame._float, frame._half = half_to_float32(frame._half), None
    return frame._float


def _set_pixels(frame: Frame, pixels: np.ndarray) -> None:
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.float16:
        frame._half, frame._float = pixels, None
    else:
        frame._half, frame._float = None, pixels


# ``pixels`` is a dataclass field (constructor, ``replace``) held through this property: float16 samples are
# kept as they are and decoded on first use.
Frame.pixels = property(_get_pixels, _set_pixels, doc="(H, W, C) float32 pixels over the data window.")  # type: ignore[assignment]


def _type_name(typedesc: Any) -> str:
    name = str(typedesc)
    return {
        "half": "half",
        "float": "float",
        "uint8": "uint8",
        "uint16": "uint16",
        "uint": "uint32",
        "uint32": "uint32",
        "int8": "uint8",
        "int16": "uint16",
        "double": "float",
    }.get(name, "float")


def read_frame(path: str | os.PathLike[str], *, check_finite: bool = True) -> Frame:
    """Read one image file. Errors name the file and say what is wrong; nothing is returned half-read."""
    oiio = _oiio()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file does not exist")
    # Keep unassociated alpha (PNG, TIFF) as stored: premultiplying on read would change colour values.
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)
    inp = oiio.ImageInput.open(path, config)
    if inp is None:
        raise InputError(f"{path}: not a readable image ({oiio.geterror() or 'unknown format'})")
    try:
        spec = inp.spec()
        if inp.seek_subimage(1, 0):
            raise InputError(
                f"{path}: a multi-part EXR; FRDM reads single-part files only (merge the parts into one, e.g. "
                "Nuke's Shuffle/Copy into one layer set, or oiiotool --siappendall)"
            )
        inp.seek_subimage(0, 0)
        if spec.channelformats:
            formats = tuple(_type_name(t) for t in spec.channelformats)
        else:
            formats = (_type_name(spec.format),) * spec.nchannels
        # All-half data is kept as the file's halves (the module docstring): no conversion, half the memory.
        kind = "half" if set(formats) == {"half"} else "float"
        pixels = inp.read_image(0, 0, 0, spec.nchannels, kind)
        if pixels is None:
            raise InputError(
                f"{path}: the file is truncated or corrupted ({inp.geterror() or 'read failed'}); "
                "re-render or re-scan this frame"
            )
        dtype = np.float16 if kind == "half" else np.float32
        pixels = np.asarray(pixels, dtype=dtype).reshape(spec.height, spec.width, spec.nchannels)
        attributes = {}
        for attr in spec.extra_attribs:
            if attr.name in _DERIVED_ATTRIBUTES:
                continue
            attributes[attr.name] = (str(attr.type), attr.value)
        bits = int(spec.get_int_attribute("oiio:BitsPerSample", 0))
        frame = Frame(
            pixels=np.ascontiguousarray(pixels),
            channels=tuple(spec.channelnames),
            formats=formats,
            data_window=(spec.x, spec.y, spec.width, spec.height),
            display_window=(spec.full_x, spec.full_y, spec.full_width, spec.full_height),
            attributes=attributes,
            bits_per_sample=bits,
            path=path,
            file_colorspace=spec.get_string_attribute("oiio:ColorSpace", ""),
        )
    finally:
        inp.close()
    if check_finite:
        refuse_not_finite(frame.samples, frame.channels, frame.data_window, path)
    return frame


def refuse_not_finite(samples: np.ndarray, channels: Sequence[str], data_window: Sequence[int], name: str) -> None:
    """InputError naming the first NaN or Inf in ``samples`` (H, W, C: float32 pixels or half samples), if any.

    The whole frame is tested cheaply first; only a bad frame pays for the per-pixel search the message needs.
    Halves by their bits (exponent all ones), floats by their sum (a NaN or an Inf makes it non-finite; floats
    near 3e38 can overflow it, and then the exact search finds nothing to refuse)."""
    if samples.dtype == np.float16:
        if not _any_half_not_finite(samples):
            return
        bad = (samples.view(np.uint16) & 0x7C00) == 0x7C00
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(samples.sum())
        if np.isfinite(total):
            return
        bad = ~np.isfinite(samples)
    ys, xs, cs = np.nonzero(bad)
    if ys.size:
        raise InputError(
            f"{name}: {int(bad.sum())} NaN/Inf values (first at x={xs[0] + data_window[0]}, "
            f"y={ys[0] + data_window[1]}, channel {channels[cs[0]]}); clamp or fix them upstream "
            "(e.g. Nuke's Expression or Clamp node) before restoring"
        )


_HALF_BAND = 1 << 18  # samples tested at a time (512 KB: the band and its masked copy stay in the cache)


def _any_half_not_finite(samples: np.ndarray) -> bool:
    """Whether any half is NaN or Inf: its exponent bits all ones, i.e. its bits without the sign at least
    0x7C00. A test of the bits, no float arithmetic, in bands: ~2 ms a 2K RGBA frame, against ~6 for one
    mask of the whole frame and ~20 for ``np.isfinite`` of halves."""
    flat = np.ravel(samples).view(np.uint16)
    masked = np.empty(min(flat.size, _HALF_BAND), np.uint16)
    for i in range(0, flat.size, _HALF_BAND):
        band = masked[: min(_HALF_BAND, flat.size - i)]
        np.bitwise_and(flat[i : i + _HALF_BAND], 0x7FFF, out=band)
        if band.size and int(band.max()) >= 0x7C00:
            return True
    return False


def _format_for_extension(ext: str, fmt: str) -> str:
    """The pixel type a format can hold: PNG has no half/float, DPX no float, EXR no 8/16-bit integer."""
    ext = ext.lower()
    if ext == ".exr":
        # float holds every 8/16-bit code value exactly; half does not (k/255 moves by up to 2.4e-4).
        return fmt if fmt in ("half", "float") else "float"
    if ext == ".png":
        return fmt if fmt in ("uint8", "uint16") else "uint16"
    if ext == ".dpx":
        return fmt if fmt in ("uint8", "uint16") else "uint16"
    return fmt


_HALF_FILES = (".exr", ".tif", ".tiff")  # formats known to store half samples as they are


def halves_written(ext: str, pixel_type: str | None) -> bool:
    """Whether ``write_frame`` writes a half channel as half to a file of extension ``ext`` with ``pixel_type``
    (None or 'same': the frame's own). Only for formats known to hold half: for any other, OpenImageIO picks
    the file's type, and blended pixels rounded to half first could land a code value off the float path."""
    if ext.lower() not in _HALF_FILES:
        return False
    return _format_for_extension(ext, "half" if pixel_type in (None, "same") else pixel_type) == "half"


def write_frame(
    path: str | os.PathLike[str],
    frame: Frame,
    *,
    compression: str | None = None,
    pixel_type: str | None = None,
    extra_attributes: dict[str, Any] | None = None,
) -> None:
    """Write atomically. ``compression``/``pixel_type`` None keep the frame's own (the input's)."""
    oiio = _oiio()
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    formats = [pixel_type if pixel_type not in (None, "same") else f for f in frame.formats]
    formats = [_format_for_extension(ext, f) for f in formats]
    h, w, c = frame.samples.shape
    if c != len(frame.channels):
        raise ValueError(f"{path}: {c} pixel channels but {len(frame.channels)} channel names")
    spec = oiio.ImageSpec(w, h, c, formats[0])
    if len(set(formats)) > 1:
        spec.channelformats = tuple(oiio.TypeDesc(f) for f in formats)
    spec.channelnames = tuple(frame.channels)
    spec.x, spec.y = frame.data_window[0], frame.data_window[1]
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = frame.display_window
    for name, (typename, value) in frame.attributes.items():
        if name == "compression" and ext.lower() != ".exr":
            continue
        try:
            spec.attribute(name, oiio.TypeDesc(typename), value)
        except (TypeError, RuntimeError, ValueError):
            continue  # an attribute this format cannot carry; the pixels matter more
    if frame.bits_per_sample and formats[0] in ("uint16", "uint32"):
        spec.attribute("oiio:BitsPerSample", frame.bits_per_sample)
    if ext.lower() == ".exr":
        if compression not in (None, "same"):
            spec.attribute("compression", compression)
        elif (frame.compression or "").lower() in LOSSY_EXR_COMPRESSIONS:
            spec.attribute("compression", "zip")
        if spec.get_string_attribute("compression").lower() in ("zip", "zips"):
            spec.attribute("compression", f"{spec.get_string_attribute('compression')}:{EXR_ZIP_LEVEL}")
    for name, value in (extra_attributes or {}).items():
        spec.attribute(name, value)
    # Halves written as halves go as they are held (no decode, no conversion); any other type from float32.
    halves = frame.half is not None and set(formats) == {"half"}
    try:
        _write_image(oiio, path, spec, frame.half if halves else frame.pixels)
    except OSError as exc:  # a folder that cannot be made or written: one clear line, not a traceback
        raise InputError(f"{path}: cannot write here ({exc.strerror or exc})") from None


def _write_image(oiio: Any, path: str, spec: Any, pixels: np.ndarray) -> None:
    # The temporary keeps the extension (OpenImageIO picks the format by it) and is made by OpenImageIO
    # itself, so it has the user's normal permissions: other artists, farm nodes and Nuke can read it.
    with atomic_path(path) as tmp:
        out = oiio.ImageOutput.create(tmp)
        if out is None:
            raise InputError(f"{path}: cannot write this format ({oiio.geterror()})")
        if not out.open(tmp, spec):
            err = out.geterror()
            raise InputError(f"{path}: cannot open for writing ({err})")
        try:
            kind = np.float16 if pixels.dtype == np.float16 else np.float32
            ok = out.write_image(np.ascontiguousarray(pixels, dtype=kind))
            err = out.geterror()
        finally:
            out.close()
        if not ok:
            raise InputError(f"{path}: write failed ({err})")


def read_attributes(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The header attributes of an image, or None if it is missing or unreadable (cheap: no pixels)."""
    oiio = _oiio()
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    inp = oiio.ImageInput.open(path)
    if inp is None:
        oiio.geterror()
        return None
    try:
        return {a.name: a.value for a in inp.spec().extra_attribs}
    finally:
        inp.close()


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image's data window, from its header alone."""
    oiio = _oiio()
    path = os.fspath(path)
    inp = oiio.ImageInput.open(path)
    if inp is None:
        raise InputError(f"{path}: not a readable image ({oiio.geterror() or 'unknown format'})")
    try:
        spec = inp.spec()
        return int(spec.width), int(spec.height)
    finally:
        inp.close()


# --- sequences -----------------------------------------------------------------------------------------

_PRINTF = re.compile(r"%0?(\d*)d")
_HASHES = re.compile(r"#+|@+")


@dataclass(frozen=True)
class SequencePattern:
    """``name.%04d.exr`` / ``name.####.exr`` / ``name.@@@@.exr``; a plain path is a one-frame "sequence"."""

    pattern: str
    prefix: str
    suffix: str
    padding: int  # 0 = no frame number in the name

    @classmethod
    def parse(cls, pattern: str) -> SequencePattern:
        pattern = os.fspath(pattern)
        head, tail = os.path.split(pattern)
        m = _PRINTF.search(tail)
        if m:
            pad = int(m.group(1) or 0)
            return cls(pattern, os.path.join(head, tail[: m.start()]), tail[m.end() :], max(pad, 1))
        hashes = list(_HASHES.finditer(tail))
        m = hashes[-1] if hashes else None  # the last run of # or @ is the frame number
        if m:
            pad = len(m.group(0))
            if m.group(0) == "#" and pad == 1:
                pad = 4  # Nuke: a single '#' means four digits
            return cls(pattern, os.path.join(head, tail[: m.start()]), tail[m.end() :], pad)
        return cls(pattern, pattern, "", 0)

    @property
    def is_sequence(self) -> bool:
        return self.padding > 0

    @property
    def extension(self) -> str:
        # "x" + suffix: os.path.splitext(".exr") sees a hidden file with no extension.
        return os.path.splitext("x" + self.suffix if self.is_sequence else self.prefix)[1].lower()

    def path(self, frame: int) -> str:
        if not self.is_sequence:
            return self.prefix
        sign = "-" if frame < 0 else ""
        return f"{self.prefix}{sign}{abs(frame):0{self.padding}d}{self.suffix}"

    def existing(self) -> list[int]:
        """Frame numbers on disk (any padding at least ours, as Nuke reads them)."""
        if not self.is_sequence:
            return [1] if os.path.exists(self.prefix) else []
        rx = re.compile(re.escape(os.path.basename(self.prefix)) + r"(-?\d+)" + re.escape(self.suffix) + "$")
        found = []
        for p in glob.glob(glob.escape(self.prefix) + "*" + glob.escape(self.suffix)):
            m = rx.match(os.path.basename(p))
            if m and len(m.group(1).lstrip("-")) >= self.padding:
                found.append(int(m.group(1)))
        return sorted(set(found))


def parse_frame_range(text: str) -> list[int]:
    """'1-10', '1-10x2', '1,3,5-8', '12' -> sorted unique frame numbers. Errors say what was not understood."""
    text = (text or "").strip()
    if not text:
        raise InputError("empty frame range; give frames like 1-48, 1-48x2 or 1,5,9-12")
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?", part)
        if not m:
            raise InputError(f"frame range '{text}': cannot read '{part}' (use 1-48, 1-48x2 or 1,5,9-12)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3) or 1)
        if last < first:
            raise InputError(f"frame range '{text}': '{part}' ends before it starts")
        if step < 1:
            raise InputError(f"frame range '{text}': step must be at least 1")
        out.update(range(first, last + 1, step))
    return sorted(out)


def format_frame_range(frames: Sequence[int]) -> str:
    """[1,2,3,5] -> '1-3,5' (for messages and metadata)."""
    frames = sorted(set(frames))
    parts: list[str] = []
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        parts.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(parts)


# --- sources -------------------------------------------------------------------------------------------


class Source:
    """Frames by number, from an image sequence or a movie."""

    description: str
    frame_numbers: list[int]

    def read(self, frame: int) -> Frame:  # pragma: no cover - interface
        raise NotImplementedError

    def path(self, frame: int) -> str | None:
        return None

    def close(self) -> None:
        """Release open files (a movie's decoder); reading again re-opens."""

    def check_frames(self, frames: Sequence[int]) -> None:
        if not frames:
            raise InputError(f"{self.description}: the frame range is empty")
        have = set(self.frame_numbers)
        missing = [f for f in frames if f not in have]
        if missing:
            avail = format_frame_range(self.frame_numbers) or "none"
            raise InputError(
                f"{self.description}: frame(s) {format_frame_range(missing)} missing "
                f"(frames on disk: {avail}); render them or narrow --frames"
            )


class ImageSequenceSource(Source):
    def __init__(self, pattern: str):
        self.pattern = SequencePattern.parse(pattern)
        self.description = pattern
        self.frame_numbers = self.pattern.existing()
        if not self.frame_numbers:
            raise InputError(f"{pattern}: no frames found (expected files like {self.pattern.path(1)})")

    def path(self, frame: int) -> str:
        return self.pattern.path(frame)

    def read(self, frame: int) -> Frame:
        return read_frame(self.pattern.path(frame))


class MovieSource(Source):
    """A movie file read through PyAV; frames are numbered from 1 (as Nuke's Read numbers a movie).

    Decoding is sequential, so reads in increasing order are cheap; a backwards read re-opens the file."""

    def __init__(self, path: str):
        import av

        self.description = path
        self._path = path
        if not os.path.exists(path):
            raise InputError(f"{path}: file does not exist")
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                count = stream.frames
                if not count:
                    count = sum(1 for _ in container.decode(video=0))
                self._deep = stream.codec_context.format is not None and "10" in (
                    stream.codec_context.format.name or ""
                )
        except (av.error.FFmpegError, IndexError) as exc:
            raise InputError(f"{path}: not a readable movie ({exc})") from None
        self.frame_numbers = list(range(1, count + 1))
        self._container = None
        self._iter: Iterator[Any] | None = None
        self._next = 1

    def read(self, frame: int) -> Frame:
        import av

        if frame not in range(1, len(self.frame_numbers) + 1):
            raise InputError(f"{self._path}: no frame {frame} (the movie has frames 1-{len(self.frame_numbers)})")
        if self._iter is None or frame < self._next:
            if self._container is not None:
                self._container.close()
            self._container = av.open(self._path)
            self._iter = iter(self._container.decode(video=0))
            self._next = 1
        image = None
        while self._next <= frame:
            try:
                decoded = next(self._iter)
            except (StopIteration, av.error.FFmpegError) as exc:
                raise InputError(f"{self._path}: frame {self._next} could not be decoded ({exc})") from None
            self._next += 1
            if self._next - 1 == frame:
                fmt = "rgb48le" if self._deep else "rgb24"
                image = decoded.to_ndarray(format=fmt)
        assert image is not None
        scale = 65535.0 if image.dtype == np.uint16 else 255.0
        pixels = image.astype(np.float32) / scale
        h, w = pixels.shape[:2]
        fmt_name = "uint16" if image.dtype == np.uint16 else "uint8"
        return Frame(
            pixels,
            ("R", "G", "B"),
            (fmt_name,) * 3,
            (0, 0, w, h),
            (0, 0, w, h),
            {},
            0,
            f"{self._path}@{frame}",
        )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._iter = None


def open_source(spec: str) -> Source:
    """A sequence pattern, a single image, or a movie file."""
    ext = os.path.splitext(spec)[1].lower()
    if ext in MOVIE_EXTENSIONS:
        return MovieSource(spec)
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(
            f"{spec}: unknown image type '{ext}' (supported: {', '.join(IMAGE_EXTENSIONS + MOVIE_EXTENSIONS)})"
        )
    return ImageSequenceSource(spec)


class MemorySource(Source):
    """Frames already in memory (the server's inline requests)."""

    def __init__(self, frames: dict[int, Frame], description: str = "<memory>"):
        self._frames = dict(frames)
        self.description = description
        self.frame_numbers = sorted(self._frames)

    def read(self, frame: int) -> Frame:
        if frame not in self._frames:
            raise InputError(f"{self.description}: no frame {frame}")
        return self._frames[frame]


def encode_image(frame: Frame, ext: str = ".exr", **write_kw: Any) -> bytes:
    """The bytes of a whole image file (EXR by default), written through ``write_frame``."""
    with tempfile.TemporaryDirectory(prefix="frdm-enc-") as tmp:
        path = os.path.join(tmp, "frame" + ext)
        write_frame(path, frame, **write_kw)
        with open(path, "rb") as fh:
            return fh.read()


def decode_image(data: bytes, ext: str = ".exr", name: str = "<bytes>", *, check_finite: bool = True) -> Frame:
    """Read an image file's bytes. Errors name ``name`` (e.g. 'frame 12 of job 3')."""
    with tempfile.TemporaryDirectory(prefix="frdm-dec-") as tmp:
        path = os.path.join(tmp, "frame" + ext)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            frame = read_frame(path, check_finite=check_finite)
        except InputError as exc:
            raise InputError(str(exc).replace(path, name)) from None
    frame.path = name
    return frame
