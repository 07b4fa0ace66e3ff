"""The FRDM wire protocol: ZeroMQ multipart messages ``[msgpack header, blob, blob, ...]``.

Pure Python on purpose (msgpack and the parameter schema only): the Nuke side imports it, and the server
validates every request with it before anything touches OpenImageIO. docs/protocol.md is the written form;
keep the two in step and bump ``PROTOCOL_VERSION`` for any change an old peer would misread.

Nothing here ever unpickles: msgpack with extension types refused, and every length bounded before it is
allocated.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import msgpack
import numpy as np

from frdm.engine import depends
from frdm.engine.errors import FrdmError, InputError
from frdm.engine.halves import half_to_float32
from frdm.engine.params import SCHEMA

# 2: raw pixel frames (``image`` on a source, mask or frame reply), ``reply``; 3: context frames named by
# content id (``id`` on a source) and the ``need_sources`` error; 4: a target may be named by id too (a
# version-3 server refuses that request)
PROTOCOL_VERSION = 4

#: Requests a client sends.
REQUEST_TYPES = ("hello", "restore", "cancel", "status")
#: Replies the server sends. ``hello``/``status``/``cancel`` answer their request; a restore request is
#: answered by ``accepted``, then ``progress`` (heartbeat) and ``frame`` replies, then ``done`` or ``error``.
REPLY_TYPES = ("hello", "status", "cancel", "accepted", "progress", "frame", "done", "error")

#: Stable error codes (they travel on the wire and a client may branch on them) -> what they mean.
ERROR_CODES: dict[str, str] = {
    "bad_request": "the message is not a valid FRDM request (not msgpack, wrong field type, missing field)",
    "protocol_mismatch": "the peer speaks another protocol version; update the older side",
    "bad_input": "a source or mask frame is missing, unreadable or inconsistent",
    "bad_param": "a parameter is unknown or outside its range",
    "too_large": "the request exceeds a server limit (message size, frames per job, pixels per frame)",
    "forbidden_path": "a path is outside the server's allowed roots, or path mode is off",
    "unknown_job": "no queued or running job has that id",
    "not_owner": "only the client that sent a job may cancel it",
    "busy": "the server's queue is full; try again later",
    "need_sources": "frames named only by content id must be read after all and the server no longer holds their "
    "pixels; send the request again with their pixels (the error lists them in 'frames')",
    "cancelled": "the job was cancelled; nothing partial was written",
    "shutting_down": "the server is stopping; restart it and send the request again",
    "bad_weights": "the server's model weights are missing or wrong",
    "internal": "an unexpected failure inside the server (its log has the traceback); the server goes on",
    # Raised by the client itself, never sent by the server:
    "timeout": "the server answered nothing within the client's timeout",
    "server_unreachable": "no server answers at that address (not started, wrong address, or it died)",
}

MAX_ID_LEN = 64
MAX_PATH_LEN = 4096
MAX_HEADER_BYTES = 1 << 20  # a header is parameters and frame lists, never pixels


@dataclass(frozen=True)
class Limits:
    """What a server accepts. Sent to clients in the ``hello`` reply so a host can check before sending."""

    max_message_bytes: int = 4 << 30  # one whole request, header and blobs
    max_frames_per_job: int = 2000  # frames to restore in one request
    max_sources_per_job: int = 2100  # sources including context frames outside ``frames``
    max_pixels_per_frame: int = 8192 * 8192
    max_channels: int = 64
    # width x height x channels x 4 (float32, what every frame is decoded to), checked from the file's header
    # before decoding: 8K RGB fits; a 2K frame declaring 64 channels (a decompression bomb) does not
    max_frame_bytes: int = 512 << 20
    max_queued_jobs: int = 64
    max_queued_bytes: int = 8 << 30  # inline data all live jobs together hold, server-wide

    def to_wire(self) -> dict[str, int]:
        return asdict(self)


class ProtocolError(FrdmError):
    """A request or reply that breaks the protocol. ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # instance attribute shadows the class default on purpose


# --- encoding -----------------------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    # msgpack extension types could carry anything; the protocol uses none, so none are accepted.
    raise ValueError(f"msgpack extension type {code} is not allowed")


def pack(header: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(header), use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    """Decode one msgpack header with every length bounded by its size; raises ProtocolError(bad_request)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_request", "the header must be bytes")
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            timestamp=0,
        )  # every max_*_len is derived from len(data): a declared length past the end is refused
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError, ...)
        raise ProtocolError("bad_request", f"the header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", f"the header must be a msgpack map, got {type(obj).__name__}")
    _refuse_timestamps(obj)
    return obj


_PLAIN = (type(None), bool, int, float, str, bytes)


def _refuse_timestamps(obj: Any) -> None:
    # msgpack decodes its one predefined extension (-1, timestamps) itself, without asking ext_hook; the
    # protocol has no extension types, so a Timestamp anywhere is refused. Iterative: nesting is deep enough.
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif not isinstance(value, _PLAIN):
            raise ProtocolError(
                "bad_request",
                f"the header holds a msgpack {type(value).__name__}; extension "
                "types (timestamps included) are not part of the protocol",
            )


def encode(header: Mapping[str, Any], blobs: Sequence[bytes] = ()) -> list[bytes]:
    """A message as ZeroMQ frames. Blobs are referred to by their 1-based position in the message."""
    return [pack(header), *blobs]


def make_header(kind: str, request_id: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": kind, "id": request_id, **fields}


def error_header(
    request_id: str, code: str, message: str, *, job: str | None = None, frames: Sequence[int] | None = None
) -> dict[str, Any]:
    if code not in ERROR_CODES:
        code = "internal"
    h = make_header("error", request_id, code=code, message=message)
    if job is not None:
        h["job"] = job
    if frames is not None:  # need_sources: the frames to send with pixels
        h["frames"] = [int(f) for f in frames]
    return h


# --- field validation ---------------------------------------------------------------------------------


def _field(h: Mapping[str, Any], name: str, types: type | tuple[type, ...], *, required: bool = True) -> Any:
    if name not in h:
        if required:
            raise ProtocolError("bad_request", f"field '{name}' is missing")
        return None
    value = h[name]
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError("bad_request", f"field '{name}' has the wrong type (bool)")
    if not isinstance(value, types):
        raise ProtocolError("bad_request", f"field '{name}' has the wrong type ({type(value).__name__})")
    return value


def _ident(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN or not value.isprintable():
        raise ProtocolError("bad_request", f"field '{name}' must be 1-{MAX_ID_LEN} printable characters")
    return value


def _frame_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(10**8) <= value <= 10**8:
        raise ProtocolError("bad_request", f"{where}: frame numbers must be integers within +-1e8, got {value!r}")
    return value


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_LEN or "\x00" in value:
        raise ProtocolError("bad_request", f"{where}: a path must be non-empty text without NUL bytes")
    if not os.path.isabs(value):
        raise ProtocolError("forbidden_path", f"{where}: path '{value}' must be absolute")
    return value


def check_version(h: Mapping[str, Any]) -> None:
    v = h.get("v")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("bad_request", "field 'v' (protocol version) is missing or not an integer")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol_mismatch",
            f"client speaks protocol {v}, this server speaks {PROTOCOL_VERSION}; install matching FRDM versions",
        )


# --- raw pixel frames ----------------------------------------------------------------------------------
#
# An inline frame travels as one buffer of pixels plus a small description (``image``) in the header: no
# file codec on either side and no copy (the buffer is the message part; numpy views it in place).
# Layout: the data window's pixels row by row from the top, each pixel's samples in channel order, every
# sample in its channel's type, little-endian, nothing between them (a packed numpy record per pixel).

#: Sample types of a raw frame -> little-endian numpy type codes. EXR's half and float; an image read from
#: an integer file (DPX, PNG, TIFF) travels as float, which holds every 8- and 16-bit code value exactly.
RAW_TYPES: dict[str, str] = {"half": "<f2", "float": "<f4"}
#: What a restore request may ask inline results to come back as (field ``reply``).
REPLY_FORMATS = ("exr", "raw")
MAX_NAME_LEN = 255  # channel and attribute names (EXR's long-name limit)
MAX_ATTRIBUTES = 512
MAX_ATTRIBUTE_LEN = 1 << 16  # characters of a string value, items of a list value
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class RawSpec:
    """What a raw pixel buffer holds: windows ``(x, y, width, height)``, channels and their sample types,
    and the image's attributes (name -> (OpenImageIO type name, value))."""

    data_window: tuple[int, int, int, int]
    display_window: tuple[int, int, int, int]
    channels: tuple[str, ...]
    types: tuple[str, ...]
    attributes: Mapping[str, tuple[str, Any]] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.data_window[2]

    @property
    def height(self) -> int:
        return self.data_window[3]

    @property
    def dtype(self) -> np.dtype:
        """One pixel: a plain type when every channel shares it (then the buffer is (H, W, C)), else a
        packed record with one field per channel."""
        if len(set(self.types)) == 1:
            return np.dtype(RAW_TYPES[self.types[0]])
        return np.dtype([(f"c{i}", RAW_TYPES[t]) for i, t in enumerate(self.types)])

    @property
    def nbytes(self) -> int:
        return self.width * self.height * sum(np.dtype(RAW_TYPES[t]).itemsize for t in self.types)

    def check_channels(self, count: int) -> None:
        """Pixels of ``count`` samples a pixel fit this description (one name and one type each). A
        ValueError otherwise: the caller's mistake (a restorer's frame), never the client's input, which the
        buffer size check would have blamed (``bad_input``)."""
        if count != len(self.channels) or len(self.types) != count:
            raise ValueError(f"{count} pixel channels but {len(self.channels)} names and {len(self.types)} types")

    def to_wire(self) -> dict[str, Any]:
        return {
            "data_window": list(self.data_window),
            "display_window": list(self.display_window),
            "channels": list(self.channels),
            "types": list(self.types),
            "attributes": {k: [t, list(v) if isinstance(v, tuple) else v] for k, (t, v) in self.attributes.items()},
        }


def _window(value: Any, where: str) -> tuple[int, int, int, int]:
    if not isinstance(value, list) or len(value) != 4:
        raise ProtocolError("bad_request", f"{where} must be [x, y, width, height], got {value!r:.80}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not _INT32[0] <= v <= _INT32[1]:
            raise ProtocolError("bad_request", f"{where} must hold four 32-bit integers, got {value!r:.80}")
    x, y, w, h = value
    if w < 1 or h < 1:
        raise ProtocolError("bad_request", f"{where} is empty ({w}x{h}); width and height must be at least 1")
    if x + w - 1 > _INT32[1] or y + h - 1 > _INT32[1]:
        raise ProtocolError("bad_request", f"{where} ends past the 32-bit coordinate range")
    return x, y, w, h


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN or not value.isprintable():
        raise ProtocolError("bad_request", f"{where} must be 1-{MAX_NAME_LEN} printable characters, got {value!r:.80}")
    return value


def _attribute(value: Any, where: str) -> tuple[str, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise ProtocolError("bad_request", f"{where} must be [type, value], got {value!r:.80}")
    kind, v = value
    kind = _name(kind, f"{where} type")
    if isinstance(v, str):
        if len(v) > MAX_ATTRIBUTE_LEN:
            raise ProtocolError("too_large", f"{where}: a string of {len(v)} characters (at most {MAX_ATTRIBUTE_LEN})")
        return kind, v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return kind, v
    if isinstance(v, list):
        if len(v) > MAX_ATTRIBUTE_LEN:
            raise ProtocolError("too_large", f"{where}: a list of {len(v)} items (at most {MAX_ATTRIBUTE_LEN})")
        if all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v) or all(
            isinstance(i, str) and len(i) <= MAX_ATTRIBUTE_LEN for i in v
        ):
            return kind, tuple(v)
    raise ProtocolError(
        "bad_request", f"{where}: a value is a string, a number or a list of either, got {type(v).__name__}"
    )


def parse_raw_spec(value: Any, where: str = "image") -> RawSpec:
    """Validate a raw frame's description; every error names the field."""
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", f"{where} must be a map (data_window, display_window, channels, types)")
    unknown = set(value) - {"data_window", "display_window", "channels", "types", "attributes"}
    if unknown:
        raise ProtocolError("bad_request", f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for name in ("data_window", "display_window", "channels", "types"):
        if name not in value:
            raise ProtocolError("bad_request", f"{where}.{name} is missing")
    data_window = _window(value["data_window"], f"{where}.data_window")
    display_window = _window(value["display_window"], f"{where}.display_window")
    channels, types = value["channels"], value["types"]
    if not isinstance(channels, list) or not channels:
        raise ProtocolError("bad_request", f"{where}.channels must be a non-empty list of channel names")
    if not isinstance(types, list) or len(types) != len(channels):
        raise ProtocolError(
            "bad_request",
            f"{where}.types must list one sample type per channel ({len(channels)} channels, got "
            f"{len(types) if isinstance(types, list) else type(types).__name__})",
        )
    names = tuple(_name(c, f"{where}.channels[{i}]") for i, c in enumerate(channels))
    if len(set(names)) != len(names):
        raise ProtocolError("bad_request", f"{where}.channels names a channel twice")
    for i, t in enumerate(types):
        if t not in RAW_TYPES:
            raise ProtocolError(
                "bad_request", f"{where}.types[{i}] ({names[i]}) is {t!r:.40}; sample types are {', '.join(RAW_TYPES)}"
            )
    attrs = value.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ProtocolError("bad_request", f"{where}.attributes must be a map of name -> [type, value]")
    if len(attrs) > MAX_ATTRIBUTES:
        raise ProtocolError("too_large", f"{where}.attributes: {len(attrs)} attributes (at most {MAX_ATTRIBUTES})")
    attributes = {
        _name(k, f"{where}.attributes key"): _attribute(v, f"{where}.attributes[{k!r}]") for k, v in attrs.items()
    }
    return RawSpec(data_window, display_window, names, tuple(types), attributes)


def check_frame_size(width: int, height: int, channels: int, limits: Limits, name: str, decoded_bytes: int) -> None:
    """The server's per-frame limits (pixels, channels, decoded bytes), before any pixel is decoded or viewed:
    the one check every way a frame arrives goes through (raw description, EXR header, sniffed file)."""
    pixels = width * height
    if pixels > limits.max_pixels_per_frame:
        raise ProtocolError(
            "too_large",
            f"{name}: {width}x{height} = {pixels} pixels exceeds this server's limit of "
            f"{limits.max_pixels_per_frame} per frame",
        )
    if channels > limits.max_channels:
        raise ProtocolError(
            "too_large", f"{name}: {channels} channels exceeds this server's limit of {limits.max_channels}"
        )
    if decoded_bytes > limits.max_frame_bytes:
        raise ProtocolError(
            "too_large",
            f"{name}: {width}x{height} with {channels} channels decodes to {decoded_bytes} bytes, "
            f"over this server's limit of {limits.max_frame_bytes} per frame",
        )


def check_raw_size(spec: RawSpec, limits: Limits, name: str) -> None:
    """The limits from a raw frame's description alone (float32: what the engine holds a frame as)."""
    n = len(spec.channels)
    check_frame_size(spec.width, spec.height, n, limits, name, spec.width * spec.height * n * 4)


class RawImage:
    """Raw pixels and their description. ``buffer`` is any bytes-like object (a received ZeroMQ frame, a
    numpy array, bytes) and is never copied: ``array()`` is a read-only view of it."""

    __slots__ = ("spec", "buffer")

    def __init__(self, spec: RawSpec, buffer: Any, name: str = "raw frame"):
        size = memoryview(buffer).nbytes
        if size != spec.nbytes:
            per = spec.nbytes // (spec.width * spec.height)
            raise ProtocolError(
                "bad_input",
                f"{name}: the pixel buffer holds {size} bytes but {spec.width}x{spec.height} pixels of "
                f"{len(spec.channels)} channels ({', '.join(spec.types)}) need {spec.nbytes} ({per} per pixel)",
            )
        self.spec = spec
        self.buffer = buffer

    def array(self) -> np.ndarray:
        """(H, W, C) when every channel has one type, else (H, W) records with fields c0, c1, ..."""
        s = self.spec
        flat = np.frombuffer(memoryview(self.buffer).cast("B"), dtype=s.dtype)
        if flat.dtype.names is None:
            return flat.reshape(s.height, s.width, len(s.channels))
        return flat.reshape(s.height, s.width)

    def to_float32(self) -> np.ndarray:
        """(H, W, C) float32: the one conversion pass a reader needs (half and float are exact in it)."""
        a = self.array()
        if a.dtype.names is None:
            return half_to_float32(a) if a.dtype == np.float16 else a.astype(np.float32)
        out = np.empty((self.spec.height, self.spec.width, len(self.spec.channels)), np.float32)
        for i, field_name in enumerate(a.dtype.names):
            column = a[field_name]
            out[..., i] = half_to_float32(column) if column.dtype == np.float16 else column
        return out

    def content_id(self) -> str:
        """This frame's content id (``frdm.engine.depends.raw_content_id``): what the server keys it by."""
        return depends.raw_content_id(pack(self.spec.to_wire()), memoryview(self.buffer).cast("B"))

    @classmethod
    def from_float32(
        cls,
        pixels: np.ndarray,
        channels: Sequence[str],
        types: Sequence[str],
        data_window: Sequence[int],
        display_window: Sequence[int],
        attributes: Mapping[str, tuple[str, Any]] | None = None,
    ) -> RawImage:
        """Pixels (H, W, C) in the given sample types: one conversion pass into a fresh buffer."""
        h, w, c = pixels.shape
        x, y = int(data_window[0]), int(data_window[1])
        spec = RawSpec(
            (x, y, w, h), tuple(int(v) for v in display_window), tuple(channels), tuple(types), dict(attributes or {})
        )  # type: ignore[arg-type]
        spec.check_channels(c)
        dtype = spec.dtype
        if dtype.names is None:
            buf = pixels.astype(dtype, order="C")
        else:
            buf = np.empty((h, w), dtype)
            for i, field_name in enumerate(dtype.names):
                buf[field_name] = pixels[..., i]
        return cls(spec, buf)


@dataclass(frozen=True)
class ContentRef:
    """A source frame named by its content id alone (no pixels): a frame the client sent this server
    lately (a context frame, or a target previewed again), which the server is expected to hold (its
    restorer outputs, its recent sources). If it lacks the frame after all, the job ends with
    ``need_sources`` and the client sends it again with pixels."""

    id: str


Inline = Union[RawImage, bytes, bytearray, memoryview, str, ContentRef]  # Union: the host side runs Python 3.9


def raw_image(value: Any, blob: Any, where: str) -> RawImage:
    """A received raw frame: its description from the header (validated) and its message part."""
    return RawImage(parse_raw_spec(value, where), blob, where)


@dataclass
class ImageRef:
    """One source or mask frame: inline (``blob`` is the message part index), a path, or (sources only) a
    content id. An inline frame is raw pixels when ``image`` describes them, else EXR file bytes."""

    frame: int
    blob: int | None = None
    path: str | None = None
    image: RawSpec | None = None
    id: str | None = None  # named by content id only (sources only): no pixels travel


@dataclass
class RestoreRequest:
    request_id: str
    job_id: str
    params: dict[str, Any]  # validated, defaults filled
    frames: list[int]
    sources: dict[int, ImageRef]
    masks: dict[int, ImageRef]
    output_dir: str | None
    output_pattern: str | None
    reply: str = "exr"  # how inline results come back: "exr" (file bytes) or "raw" (pixels + header)


MAX_CONTENT_ID_LEN = 128  # ``depends.content_id``: 64 hex digits; ``depends.raw_content_id``: 128
_HEX = frozenset("0123456789abcdef")


def _content_id(value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) not in (MAX_CONTENT_ID_LEN // 2, MAX_CONTENT_ID_LEN)
        or not _HEX.issuperset(value)
    ):
        raise ProtocolError(
            "bad_request",
            f"{where}: 'id' must be a content id (64 or 128 lowercase hex digits), got {value!r:.80}",
        )
    return value


def _image_refs(
    value: Any, name: str, n_blobs: int, used: set[int], limit: int, ids: bool = False
) -> dict[int, ImageRef]:
    if not isinstance(value, list):
        raise ProtocolError("bad_request", f"field '{name}' must be a list of {{frame, blob|path}} maps")
    if len(value) > limit:
        raise ProtocolError("too_large", f"field '{name}' lists {len(value)} frames; this server accepts {limit}")
    out: dict[int, ImageRef] = {}
    for i, entry in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            raise ProtocolError("bad_request", f"{where} must be a map with 'frame' and 'blob' or 'path'")
        frame = _frame_number(entry.get("frame"), where)
        if frame in out:
            raise ProtocolError("bad_request", f"{where}: frame {frame} is listed twice")
        given = [k for k in ("blob", "path", "id") if k in entry]
        if "id" in entry and not ids:
            raise ProtocolError("bad_request", f"{where}: only a source frame may be named by content id ('id')")
        if len(given) != 1:
            raise ProtocolError(
                "bad_request",
                f"{where}: give exactly one of 'blob' (inline) or 'path'" + (" or 'id'" if ids else ""),
            )
        if "id" in entry:
            if "image" in entry:
                raise ProtocolError("bad_request", f"{where}: 'image' describes inline pixels; an 'id' has none")
            out[frame] = ImageRef(frame, id=_content_id(entry["id"], where))
        elif "blob" in entry:
            blob = entry["blob"]
            if isinstance(blob, bool) or not isinstance(blob, int) or not 1 <= blob <= n_blobs:
                raise ProtocolError(
                    "bad_request", f"{where}: 'blob' must index a message part 1..{n_blobs}, got {blob!r}"
                )
            if blob in used:
                raise ProtocolError("bad_request", f"{where}: message part {blob} is used twice")
            used.add(blob)
            image = parse_raw_spec(entry["image"], f"{where}.image") if "image" in entry else None
            out[frame] = ImageRef(frame, blob=blob, image=image)
        else:
            if "image" in entry:
                raise ProtocolError("bad_request", f"{where}: 'image' describes inline pixels; a path has none")
            out[frame] = ImageRef(frame, path=_path(entry["path"], where))
    return out


def parse_restore(h: Mapping[str, Any], n_blobs: int, limits: Limits) -> RestoreRequest:
    """Validate a restore header (types, sizes, parameter schema). Pixel checks happen on the blobs."""
    request_id = _ident(h.get("id"), "id")
    job_id = _ident(h.get("job", request_id), "job")
    params = _field(h, "params", dict, required=False) or {}
    try:
        params = SCHEMA.validate(params)
    except InputError as exc:  # ParamError is an InputError; the code travels
        raise ProtocolError(exc.code, str(exc)) from None
    frames = _field(h, "frames", list)
    if not frames:
        raise ProtocolError("bad_input", "field 'frames' is empty: nothing to restore")
    if len(frames) > limits.max_frames_per_job:
        raise ProtocolError(
            "too_large",
            f"{len(frames)} frames in one job; this server accepts {limits.max_frames_per_job} (split the range)",
        )
    frames = [_frame_number(f, "frames") for f in frames]
    if len(set(frames)) != len(frames):
        raise ProtocolError("bad_request", "field 'frames' lists a frame twice")
    used: set[int] = set()
    sources = _image_refs(_field(h, "sources", list), "sources", n_blobs, used, limits.max_sources_per_job, True)
    masks = _image_refs(
        _field(h, "masks", list, required=False) or [], "masks", n_blobs, used, limits.max_sources_per_job
    )
    missing = [f for f in frames if f not in sources]
    if missing:
        raise ProtocolError("bad_input", f"frames {missing[:10]} have no source (send one per frame to restore)")
    if params["mask"] == "artist" and not params["mask_channel"]:
        no_mask = [f for f in frames if f not in masks]
        if no_mask:
            raise ProtocolError(
                "bad_input",
                f"mask 'artist' without 'mask_channel' needs a mask per frame; frames {no_mask[:10]} have none",
            )
    if len(used) != n_blobs:
        raise ProtocolError("bad_request", f"{n_blobs} blobs sent but {len(used)} referenced")
    output_dir = _field(h, "output_dir", str, required=False)
    output_pattern = _field(h, "output_pattern", str, required=False)
    if output_dir is not None:
        output_dir = _path(output_dir, "output_dir")
    if output_pattern is not None:
        output_pattern = _path(output_pattern, "output_pattern")
        if output_pattern.count("%") != 1 and "#" not in output_pattern:
            raise ProtocolError("bad_request", "output_pattern needs one frame number field (%04d or ####)")
    if output_dir is not None and output_pattern is not None:
        raise ProtocolError("bad_request", "give output_dir or output_pattern, not both")
    reply = _field(h, "reply", str, required=False) or "exr"
    if reply not in REPLY_FORMATS:
        raise ProtocolError("bad_request", f"field 'reply' must be one of {', '.join(REPLY_FORMATS)}, got {reply!r}")
    return RestoreRequest(request_id, job_id, params, frames, sources, masks, output_dir, output_pattern, reply)


def restore_header(
    request_id: str,
    job_id: str,
    params: Mapping[str, Any],
    frames: Sequence[int],
    sources: Mapping[int, Inline],
    masks: Mapping[int, Inline] | None = None,
    *,
    output_dir: str | None = None,
    output_pattern: str | None = None,
    reply: str = "exr",
) -> tuple[dict[str, Any], list[Any]]:
    """Build a restore request: the header and its blobs (inline frames become numbered message parts:
    EXR bytes as they are, a RawImage as its pixel buffer, never copied)."""
    blobs: list[Any] = []

    def refs(items: Mapping[int, Inline]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for frame, value in sorted(items.items()):
            if isinstance(value, ContentRef):
                out.append({"frame": int(frame), "id": value.id})
            elif isinstance(value, RawImage):
                blobs.append(value.buffer)
                out.append({"frame": int(frame), "blob": len(blobs), "image": value.spec.to_wire()})
            elif isinstance(value, (bytes, bytearray, memoryview)):
                blobs.append(bytes(value) if not isinstance(value, bytes) else value)
                out.append({"frame": int(frame), "blob": len(blobs)})
            elif isinstance(value, (str, os.PathLike)):
                out.append({"frame": int(frame), "path": os.fspath(value)})
            else:
                raise TypeError(
                    f"frame {frame}: a source is a RawImage, EXR bytes, a path or a ContentRef, not "
                    f"{type(value).__name__}"
                )
        return out

    h = make_header("restore", request_id, job=job_id, params=dict(params), frames=[int(f) for f in frames])
    h["sources"] = refs(sources)
    if masks:
        h["masks"] = refs(masks)
    if output_dir is not None:
        h["output_dir"] = output_dir
    if output_pattern is not None:
        h["output_pattern"] = output_pattern
    if reply != "exr":
        h["reply"] = reply
    return h, blobs


# --- EXR headers, without OpenImageIO ------------------------------------------------------------------

_EXR_MAGIC = b"\x76\x2f\x31\x01"
_EXR_TILED, _EXR_LONG_NAMES, _EXR_DEEP, _EXR_MULTIPART = 0x200, 0x400, 0x800, 0x1000


@dataclass(frozen=True)
class ExrInfo:
    width: int
    height: int
    channels: int
    parts: int


def exr_info(data: bytes, name: str = "<bytes>") -> ExrInfo:
    """Size and channel count of an OpenEXR file from its header alone.

    The server checks declared sizes with this *before* any decoder sees the bytes: a few kilobytes of
    compressed zeros can declare a 100000x100000 image. For multi-part files the largest part counts.
    Raises ProtocolError(bad_input) if the header cannot be read."""

    def bad(why: str) -> ProtocolError:
        return ProtocolError("bad_input", f"{name}: not a readable OpenEXR file ({why}); send EXR bytes")

    mv = memoryview(data)
    if len(mv) < 8 or bytes(mv[:4]) != _EXR_MAGIC:
        raise bad("no EXR magic number")
    (version,) = struct.unpack_from("<I", mv, 4)
    if version & 0xFF != 2:
        raise bad(f"EXR version {version & 0xFF}")
    if version & _EXR_DEEP:
        raise bad("deep data is not supported")
    multipart = bool(version & _EXR_MULTIPART)
    max_name = 255 if version & _EXR_LONG_NAMES else 31
    pos = 8
    parts: list[tuple[int, int, int]] = []

    def cstring(at: int) -> tuple[str, int]:
        end = bytes(mv[at : at + max_name + 1]).find(b"\x00")
        if end < 0:
            raise bad("an attribute name is unterminated or too long")
        return bytes(mv[at : at + end]).decode("latin-1"), at + end + 1

    while True:  # one header per part; a multi-part file ends its header list with an empty header
        window: tuple[int, int] | None = None
        channels = 0
        first = True
        while True:
            if pos >= len(mv):
                raise bad("the header is truncated")
            attr, pos = cstring(pos)
            if not attr:
                break
            first = False
            kind, pos = cstring(pos)
            if pos + 4 > len(mv):
                raise bad("the header is truncated")
            (size,) = struct.unpack_from("<i", mv, pos)
            pos += 4
            if size < 0 or pos + size > len(mv):
                raise bad(f"attribute '{attr}' declares {size} bytes past the end")
            if attr == "dataWindow" and kind == "box2i" and size == 16:
                x0, y0, x1, y1 = struct.unpack_from("<4i", mv, pos)
                window = (x1 - x0 + 1, y1 - y0 + 1)
            elif attr == "channels" and kind == "chlist":
                at, end = pos, pos + size
                while at < end and mv[at] != 0:
                    nul = bytes(mv[at:end]).find(b"\x00")
                    if nul < 0:
                        raise bad("the channel list is malformed")
                    at += nul + 1 + 16
                    channels += 1
            pos += size
        if first and multipart and parts:
            break  # the empty header that closes a multi-part header list
        if window is None or channels == 0:
            raise bad("no dataWindow or no channels")
        if window[0] <= 0 or window[1] <= 0:
            raise bad(f"empty data window {window[0]}x{window[1]}")
        parts.append((window[0], window[1], channels))
        if not multipart:
            break
    # The limits hold for every part: the largest width x height and the most channels of any part (a part
    # chosen by its product could hide a larger one behind fewer channels).
    w, h = max(((p[0], p[1]) for p in parts), key=lambda wh: wh[0] * wh[1])
    return ExrInfo(w, h, max(p[2] for p in parts), len(parts))


def check_exr_size(info: ExrInfo, limits: Limits, name: str) -> None:
    """Pixels and channels of an EXR header (its decoded size is checked where the file is sniffed)."""
    check_frame_size(info.width, info.height, info.channels, limits, name, 0)


def progress_fraction(done: float, total: float) -> float:
    """done/total clamped to [0, 1] (0 for an empty total): what a progress bar shows."""
    if not total or not math.isfinite(done) or not math.isfinite(total):
        return 0.0
    return min(1.0, max(0.0, done / total))
