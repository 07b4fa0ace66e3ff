"""The fill stage's result and what follows it: a restorer's output for one frame, kept only where it
changed, and the blend and colour conversion that turn it into the output frame, run only inside the
region that can change.

This is what the stage cache keeps (server and ``frdm restore``): a knob of the blend or output stage
(feather, matte grow, mask, matte channel, compression) re-blends from a ``FillResult`` without calling the
restorer. ``finish_frame`` is the one blend: a fresh restore and a cached one go through it alike, so both
give the same bits.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from frdm.engine import atomic
from frdm.engine.blend import blend, feather_mask
from frdm.engine.color import from_model, representable, to_model
from frdm.engine.errors import InputError
from frdm.engine.frames import Frame
from frdm.engine.restorer import RestoredFrame

Box = tuple[int, int, int, int]  # y0, y1, x0, x1: rows y0..y1-1, columns x0..x1-1
# Bump when the stored layout changes: old entries then read as misses. frdm-fill-2: the restored pixels are
# stored only where they changed and the matte only where it is not 0, each with its map as bits (a dust fill
# changes a percent of a box that spans most of the frame: 2K entries of 16-36 MB, serialised into fresh
# memory and written per frame, became ~1 MB).
FILL_FORMAT = "frdm-fill-2"


def nonzero_box(a: np.ndarray) -> Box | None:
    """The bounding box of the non-zero (True) entries of a 2-D array; None if there are none."""
    rows = np.flatnonzero(a.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(a[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def grow_box(box: Box, margin: int, shape: tuple[int, int]) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0 - margin), min(shape[0], y1 + margin), max(0, x0 - margin), min(shape[1], x1 + margin)


def intersect(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return None
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def feather_margin(radius: float, grow: int) -> int:
    """How far ``feather_mask`` can spread a mask: the grow disc, the 2-sigma widening and the Gaussian
    kernel (OpenCV sizes a float kernel 4 sigma each side), plus a pixel for rounding. Feathering a crop
    this much larger than the mask's box gives the full-frame values: beyond the box everything is 0."""
    return int(grow) + (2 * math.ceil(2.0 * radius) + math.ceil(4.0 * radius) + 2 if radius > 0 else 0)


def feather_in_box(
    box: Box | None, values: np.ndarray, shape: tuple[int, int], radius: float, grow: int = 0
) -> tuple[Box | None, np.ndarray]:
    """``feather_mask`` of a (H, W) mask that is ``values`` inside ``box`` and 0 elsewhere, computed only
    around the box: (the box the result lives in, the feathered mask inside it)."""
    if box is None:
        return None, np.zeros((0, 0), np.float32)
    crop = grow_box(box, feather_margin(radius, grow), shape)
    return crop, feather_mask(_laid_in(box, values, crop), radius, grow)


def _laid_in(box: Box, values: np.ndarray, crop: Box) -> np.ndarray:
    """The (h, w) mask over ``crop`` that is ``values`` inside ``box`` and 0 elsewhere."""
    raw = np.zeros((crop[1] - crop[0], crop[3] - crop[2]), np.float32)
    inside = intersect(box, crop)
    if inside is not None:
        y0, y1, x0, x1 = inside
        raw[y0 - crop[0] : y1 - crop[0], x0 - crop[2] : x1 - crop[2]] = values[
            y0 - box[0] : y1 - box[0], x0 - box[2] : x1 - box[2]
        ]
    return raw


# ``feather_at``'s tiles: rows and columns of the grid its pixels are grouped on (the columns a multiple of
# FEATHER_ALIGN), and the column alignment that keeps OpenCV's arithmetic where ``feather_in_box`` has it.
FEATHER_TILE = (64, 128)
FEATHER_ALIGN = 64


def feather_at(
    box: Box | None,
    values: np.ndarray,
    shape: tuple[int, int],
    radius: float,
    grow: int,
    ys: np.ndarray,
    xs: np.ndarray,
) -> np.ndarray:
    """``feather_in_box(box, values, shape, radius, grow)``'s mask at the pixels (``ys``, ``xs``) (frame
    coordinates; 0 outside its box), bit for bit, feathered only in tiles around those pixels: the blend
    needs the mask only where the restorer changed a pixel, and dust scattered over a 2K frame has a box of
    most of it (feathered whole: 10-45 ms a frame; a few tiles: well under 1).

    A tile's pixels are exact when its crop reaches ``feather_margin`` beyond it on every side (or the box's
    own crop edge): no mask value further away reaches them. OpenCV's Gaussian is not the same arithmetic in
    every column, though: a row's last columns (fewer than a vector's lanes) are summed by its scalar loop,
    in another order. So a tile's crop either ends where the box's crop ends, starting on a column
    ``FEATHER_ALIGN`` apart from the box crop's first (the same columns then fall to the scalar loop), or ends
    ``FEATHER_ALIGN`` columns past the tile's margin (its scalar columns lie outside the tile's reach). Where
    the tiles would feather more pixels than the box's crop holds, the crop is feathered whole."""
    weights = np.zeros(ys.shape, np.float32)
    if box is None or ys.size == 0:
        return weights
    margin = feather_margin(radius, grow)
    cy0, cy1, cx0, cx1 = grow_box(box, margin, shape)
    inside = np.flatnonzero((ys >= cy0) & (ys < cy1) & (xs >= cx0) & (xs < cx1))
    if inside.size == 0:
        return weights
    ty, tx = FEATHER_TILE
    y, x = ys[inside], xs[inside]
    tiles = ((y - cy0) // ty) * ((cx1 - cx0) // tx + 1) + (x - cx0) // tx
    order = np.argsort(tiles, kind="stable")
    firsts = np.flatnonzero(np.r_[True, tiles[order][1:] != tiles[order][:-1]])
    left = -(-margin // FEATHER_ALIGN) * FEATHER_ALIGN  # the margin, rounded up to whole alignments
    crops = []
    for i in firsts:
        n = int(order[i])
        core_y0 = cy0 + (int(y[n]) - cy0) // ty * ty
        core_x0 = cx0 + (int(x[n]) - cx0) // tx * tx
        core_y1, core_x1 = min(cy1, core_y0 + ty), min(cx1, core_x0 + tx)
        right = core_x1 + margin + FEATHER_ALIGN
        x0, x1 = max(cx0, core_x0 - left), cx1 if right >= cx1 else right
        crops.append((max(cy0, core_y0 - margin), min(cy1, core_y1 + margin), x0, x1))
    if sum((b - a) * (d - c) for a, b, c, d in crops) >= (cy1 - cy0) * (cx1 - cx0):
        mask = feather_mask(_laid_in(box, values, (cy0, cy1, cx0, cx1)), radius, grow)
        weights[inside] = mask[y - cy0, x - cx0]
        return weights
    ends = [*firsts[1:], order.size]
    for (a, b, c, d), i, j in zip(crops, firsts, ends):
        mask = feather_mask(_laid_in(box, values, (a, b, c, d)), radius, grow)
        at = order[i:j]
        weights[inside[at]] = mask[y[at] - a, x[at] - c]
    return weights


@dataclass
class FillResult:
    """What a restorer made of one frame, in model space, kept only where it differs from its input: the
    changed pixels as a list (dust changes a percent of a frame, scattered: a box around it is most of the
    frame, and a box-sized copy, map and pass cost more than the blend itself)."""

    shape: tuple[int, int]  # H, W of the frame
    box: Box | None  # the pixels the restorer changed lie inside this box
    where: np.ndarray  # (N,) int: the changed pixels as flat indices into the frame (y * W + x), ascending
    values: np.ndarray  # (N, 3) float32: the restored pixels there
    matte_box: Box | None  # the detected defects lie inside this box
    matte: np.ndarray  # (h, w) float32 in [0, 1]: the matte inside ``matte_box``
    # (H, W, 3) float32 when the engine changed every pixel on purpose (classical deflicker): the stabilised
    # frame the auto matte blends ``image`` into instead of the source (``RestoredFrame.base``).
    base: np.ndarray | None = None

    @classmethod
    def from_restored(cls, restored: RestoredFrame, model_input: np.ndarray) -> FillResult:
        """Keep the changed pixels of ``restored`` (compared with the ``model_input`` it was given)."""
        image = restored.image
        if image is None:
            return cls.as_it_came(model_input.shape[:2], restored)
        if image.shape != model_input.shape:
            raise ValueError(f"frame {restored.frame_number}: restored {image.shape} but input {model_input.shape}")
        shape = (int(image.shape[0]), int(image.shape[1]))
        # A frame the restorer left alone (often the input array itself, or a view of the very same pixels)
        # costs no pass, not a per-pixel map.
        where = (
            np.zeros(0, _index_type(shape)) if _same_pixels(image, model_input) else _changed_pixels(image, model_input)
        )
        box: Box | None = None
        values = np.zeros((0, 3), np.float32)
        if where.size:
            ys, xs = np.divmod(where, shape[1])
            box = (int(ys[0]), int(ys[-1]) + 1, int(xs.min()), int(xs.max()) + 1)
            values = np.ascontiguousarray(image[ys, xs], dtype=np.float32)
        matte_box, m = _kept_matte(restored.matte, shape, restored.frame_number)
        base = None if restored.base is None else np.ascontiguousarray(restored.base, dtype=np.float32)
        if base is not None and base.shape != image.shape:
            raise ValueError(f"frame {restored.frame_number}: base {base.shape} but the frame is {image.shape}")
        return cls(shape, box, where, values, matte_box, m, base)

    @classmethod
    def as_it_came(cls, shape: tuple[int, ...], restored: RestoredFrame) -> FillResult:
        """The result of a target the restorer left as it came (``RestoredFrame.image`` None): nothing
        changed, its matte kept. Needs no model-space pixels, so the pipeline asks it with the clip's
        ``shape`` and the frame is never converted."""
        if restored.base is not None:
            raise ValueError(f"frame {restored.frame_number}: a base to blend into, but no restored image")
        h, w = int(shape[0]), int(shape[1])
        matte_box, m = _kept_matte(restored.matte, (h, w), restored.frame_number)
        return cls((h, w), None, np.zeros(0, _index_type((h, w))), np.zeros((0, 3), np.float32), matte_box, m)

    @property
    def changed(self) -> np.ndarray:
        """(h, w) bool over ``box``: which of its pixels changed."""
        if self.box is None:
            return np.zeros((0, 0), bool)
        y0, y1, x0, x1 = self.box
        out = np.zeros((y1 - y0, x1 - x0), bool)
        ys, xs = np.divmod(self.where, self.shape[1])
        out[ys - y0, xs - x0] = True
        return out

    @property
    def image(self) -> np.ndarray:
        """(h, w, 3) float32 over ``box``: the restored pixels where they changed, 0 elsewhere."""
        if self.box is None:
            return np.zeros((0, 0, 3), np.float32)
        y0, y1, x0, x1 = self.box
        out = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        ys, xs = np.divmod(self.where, self.shape[1])
        out[ys - y0, xs - x0] = self.values
        return out

    def matte_into(self, out: np.ndarray) -> None:
        """Write the (H, W) matte into ``out`` (e.g. the matte channel of an output frame)."""
        out[...] = 0.0
        if self.matte_box is not None:
            y0, y1, x0, x1 = self.matte_box
            # Converted to ``out``'s type in one contiguous pass first (a half channel of a frame is strided).
            out[y0:y1, x0:x1] = self.matte.astype(out.dtype, copy=False)

    # --- storage (safetensors: arrays and a small text header, never pickle) ---------------------------

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = {"format": FILL_FORMAT, "shape": self.shape, "box": self.box, "matte_box": self.matte_box}
        # The changed pixels in the box's row order (the frame's) with the map of the box saying which; the
        # matte is 0 wherever it is not stored.
        defects = self.matte > 0
        arrays = {
            "values": np.ascontiguousarray(self.values, dtype=np.float32),
            "changed": np.packbits(self.changed, axis=None),
            "matte_values": np.ascontiguousarray(self.matte[defects], dtype=np.float32),
            "defects": np.packbits(defects, axis=None),
        }
        if self.base is not None:
            arrays["base"] = self.base
        return save(arrays, metadata={"fill": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> FillResult | None:
        """None for an entry of another format or a damaged one (a miss, never a wrong frame)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            data = bytes(data)
            (n,) = struct.unpack_from("<Q", data, 0)
            meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["fill"])
            if meta.get("format") != FILL_FORMAT:
                return None
            arrays = load(data)
            shape = _stored_shape(meta["shape"])
            box, matte_box = _stored_box(meta["box"], shape), _stored_box(meta["matte_box"], shape)
            changed = _bits_map(box, arrays["changed"])
            values = arrays["values"]
            _, matte = _scattered(matte_box, arrays["defects"], arrays["matte_values"], None)
            base = arrays.get("base")
            if values.shape != (int(np.count_nonzero(changed)), 3) or matte is None:
                return None  # damaged: the values do not fit their map
            if base is not None and base.shape != (*shape, 3):
                return None  # damaged: the base is not its frame's size
            where = np.zeros(0, _index_type(shape))
            if box is not None:
                ys, xs = np.divmod(np.flatnonzero(changed), box[3] - box[2])
                where = ((ys + box[0]) * shape[1] + xs + box[2]).astype(_index_type(shape))
            return cls(shape, box, where, values, matte_box, matte, base)
        except (ValueError, KeyError, TypeError, AttributeError, struct.error, UnicodeDecodeError, SafetensorError):
            return None  # SafetensorError: a torn entry; AttributeError: a header that is not a map


class FillStore(Protocol):
    """Where ``restore_frames`` keeps fill results, by frame number (the owner knows the keys)."""

    def get(self, frame: int) -> FillResult | None: ...

    def put(self, frame: int, result: FillResult) -> None: ...


class FolderFillStore:
    """``frdm restore --keep-fill``: the fill results of a shot beside its output, one file per output frame
    (``.frdm-fill/<frame>.fill``, the frame's fill-stage key inside), so the folder holds at most one entry
    per frame: a later entry replaces the frame's earlier one. A wrong key or a damaged file is a miss."""

    DIRECTORY = ".frdm-fill"

    def __init__(self, output_folder: str, keys: Mapping[int, str]):
        self.directory = os.path.join(output_folder, self.DIRECTORY)
        self.keys = dict(keys)

    def _path(self, frame: int) -> str:
        return os.path.join(self.directory, f"{frame}.fill")

    def get(self, frame: int) -> FillResult | None:
        try:
            with open(self._path(frame), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        key = self.keys[frame].encode()
        if not data.startswith(key + b"\n"):
            return None
        return FillResult.from_bytes(data[len(key) + 1 :])

    def put(self, frame: int, result: FillResult) -> None:
        atomic.write_bytes(self._path(frame), self.keys[frame].encode() + b"\n" + result.to_bytes())


def _stored_shape(value: Any) -> tuple[int, int]:
    """A stored frame size, (H, W) of positive ints, else ValueError (a damaged entry)."""
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        raise ValueError(f"stored frame size {value!r:.60}")
    return int(value[0]), int(value[1])


def _stored_box(value: Any, shape: tuple[int, int]) -> Box | None:
    """A stored box (None, or y0, y1, x0, x1 inside the frame ``shape``), else ValueError (a damaged entry)."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(_is_int(v) for v in value)):
        raise ValueError(f"stored box {value!r:.60}")
    y0, y1, x0, x1 = value
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(f"stored box {value} outside the frame {shape}")
    return y0, y1, x0, x1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bits_map(box: Any, bits: np.ndarray) -> np.ndarray:
    """A stored map (``np.packbits``) back as the (h, w) bool map over ``box``."""
    h, w = (box[1] - box[0], box[3] - box[2]) if box is not None else (0, 0)
    return np.unpackbits(bits, count=h * w).reshape(h, w).view(bool)


def _scattered(
    box: Any, bits: np.ndarray, values: np.ndarray, channels: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored (map, values) pair back as the (h, w) map over ``box`` and the (h, w[, channels]) array that
    holds ``values`` where the map is set and 0 elsewhere; None for values that do not fit the map."""
    h, w = (box[1] - box[0], box[3] - box[2]) if box is not None else (0, 0)
    where = _bits_map(box, bits)
    shape = (int(np.count_nonzero(where)),) + ((channels,) if channels else ())
    if values.shape != shape:
        return where, None
    out = np.zeros((h, w) + ((channels,) if channels else ()), np.float32)
    out[where] = values
    return where, out


def _kept_matte(matte: np.ndarray | None, shape: tuple[int, int], number: int) -> tuple[Box | None, np.ndarray]:
    """A restorer's (H, W) matte (None: no defects) as the box its defects lie in and the matte inside it;
    one of another size than its frame ``shape`` is the restorer's error (laid over the frame it would sit in
    its top-left corner)."""
    if matte is None:
        return None, np.zeros((0, 0), np.float32)
    matte = np.asarray(matte, np.float32)
    if matte.shape != tuple(shape):
        raise ValueError(f"frame {number}: matte {matte.shape} but the frame is {tuple(shape)}")
    box = nonzero_box(matte > 0)
    if box is None:
        return None, np.zeros((0, 0), np.float32)
    return box, np.ascontiguousarray(matte[box[0] : box[1], box[2] : box[3]])


def _same_pixels(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are views of the same memory laid out alike (hence equal: NaN is refused on
    input), without reading a pixel."""
    return a is b or (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


# Below this share of a frame's samples changed, its changed pixels are found from the changed samples' own
# indices; above it (a restorer that changes most pixels), from a map of the pixels (the channels OR-ed).
_FEW_CHANGED = 1 / 16


def _index_type(shape: tuple[int, ...]) -> type:
    """The integer type of a frame's flat pixel indices: 32 bits where they fit (a frame changed everywhere,
    deflicker or a diffusion engine's, lists every pixel: 13 MB at 2K, not 25)."""
    return np.int32 if int(shape[0]) * int(shape[1]) < 2**31 else np.intp


def _changed_pixels(image: np.ndarray, model_input: np.ndarray) -> np.ndarray:
    """Flat indices (ascending) of the pixels of (H, W, 3) ``image`` where any channel differs from
    ``model_input``'s (float comparison: -0.0 is 0.0). One compare of the frames and one search of its
    flags: a few milliseconds at 2K, where a per-pixel map and its box cost ~25."""
    differs = np.not_equal(image, model_input, order="C")  # C order whatever the inputs': flat = pixel * 3 + channel
    samples = np.flatnonzero(differs)
    kind = _index_type(image.shape)
    if samples.size > _FEW_CHANGED * differs.size:
        # Channels OR-ed one by one: numpy's any() over a length-3 last axis is several times slower.
        return np.flatnonzero(differs[..., 0] | differs[..., 1] | differs[..., 2]).astype(kind)
    pixels = samples // 3
    return (pixels[np.r_[True, pixels[1:] != pixels[:-1]]] if pixels.size else pixels).astype(kind)


def artist_mask(frame: Frame, mask_frame: Frame | None, channel: str, number: int) -> np.ndarray:
    """(H, W) float mask in [0, 1] from a channel of the source or a separate mask frame."""
    if mask_frame is None:
        if not channel:
            raise InputError("mask 'artist' needs a mask sequence (--mask SEQ) or a source channel (--mask-channel)")
        return np.clip(frame.samples[..., frame.channel_index(channel)], 0.0, 1.0, dtype=np.float32)
    if mask_frame.samples.shape[:2] != frame.samples.shape[:2]:
        raise InputError(
            f"{mask_frame.path}: mask for frame {number} is {mask_frame.width}x{mask_frame.height} but the "
            f"source is {frame.width}x{frame.height}; render the mask at the source's resolution"
        )
    if channel:
        idx = mask_frame.channel_index(channel)
    elif "A" in mask_frame.channels:
        idx = mask_frame.channels.index("A")
    else:
        idx = 0
    return np.clip(mask_frame.samples[..., idx], 0.0, 1.0, dtype=np.float32)


def finish_frame(
    original: Frame,
    fill: FillResult,
    params: Mapping[str, Any],
    colorspace: str,
    mask_frame: Frame | None,
    number: int,
    matte_channel: str,
    *,
    halves_out: bool = False,
) -> Frame:
    """Blend a fill result into its original: out = original + mask * (restored - original).

    Only the box where the mask, the change and the representable range overlap is converted and blended;
    every other pixel is the original's value. A frame nothing changes in shares the original's pixel
    array (no copy), which tells a caller it may send the input's own bytes back. ``colorspace`` is the
    frame's own (``color.resolve_colorspace``: 'auto' resolved).

    ``halves_out``: the caller stores half channels as half (an EXR or TIFF written with pixel type 'same' or
    'half', the wire): an original that holds half samples (``Frame.half``) then gives an output of half
    samples, its own copied as they are and the blended ones rounded to half here as the writer would round
    them (to nearest, ties to even), instead of a float32 frame converted back whole."""
    if fill.shape != (original.height, original.width):
        raise InputError(
            f"frame {number}: the cached fill result is {fill.shape[1]}x{fill.shape[0]} but the source is "
            f"{original.width}x{original.height}"
        )
    if fill.base is not None and params["mask"] == "auto":
        over = _over_base(fill, params)
        none = {**params, "mask": "none"}
        return finish_frame(original, over, none, colorspace, None, number, matte_channel, halves_out=halves_out)
    idx = original.rgb_indices()
    mask: np.ndarray | None = None  # the artist's, inside ``mask_box``
    if params["mask"] == "none":
        mask_box: Box | None = (0, fill.shape[0], 0, fill.shape[1])
    elif params["mask"] == "auto":
        # The feathered matte's box; the mask itself is feathered only around the changed pixels (feather_at).
        margin = feather_margin(params["feather"], params["matte_grow"])
        mask_box = None if fill.matte_box is None else grow_box(fill.matte_box, margin, fill.shape)
    else:
        # The artist's mask as given: its softness is the artist's, and outside it nothing may change
        # (feather and grow would spread it outwards; they belong to the auto matte).
        raw = artist_mask(original, mask_frame, params["mask_channel"], number)
        mask_box = nonzero_box(raw > 0)
        mask = raw[mask_box[0] : mask_box[1], mask_box[2] : mask_box[3]] if mask_box is not None else None
    held = original.samples  # the original's half samples or float32 pixels (both read exactly as float32)
    region = intersect(mask_box, fill.box)
    blended: tuple[Any, Any, list[int], np.ndarray] | None = None  # rows, columns (indices or slices), channels, values
    if region is not None:
        y0, y1, x0, x1 = region
        # Only the pixels that both changed and lie under the mask are converted and blended (dust covers a
        # percent of a frame whose bounding box is most of it); every other pixel keeps the original's value.
        # The fill lists the changed pixels (in the frame's order); the mask is weighed there.
        ys, xs = np.divmod(fill.where, fill.shape[1])
        restored = fill.values
        if region != fill.box:
            inside = np.flatnonzero((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))
            ys, xs, restored = ys[inside], xs[inside], restored[inside]
        if params["mask"] == "none":
            weight = np.ones(ys.size, np.float32)
        else:
            if mask is None:
                weight = feather_at(
                    fill.matte_box, fill.matte, fill.shape, params["feather"], params["matte_grow"], ys, xs
                )
            else:
                weight = mask[ys - mask_box[0], xs - mask_box[2]]  # type: ignore[index]
            under = weight > 0
            if not under.all():
                ys, xs, weight, restored = ys[under], xs[under], weight[under], restored[under]
        # Every pixel of the region (mask 'none', deflicker): slices, not gathers (the list is in its row order).
        dense = ys.size == (y1 - y0) * (x1 - x0)
        if dense:
            crop = held[y0:y1, x0:x1].reshape(-1, held.shape[-1])
        elif ys.size:
            crop = held[ys, xs]  # (N, C)
        if ys.size:
            # Values the model cannot hold (above 1, below 0 in model space) come from the original: the
            # colour round trip (OCIO: ~1e-5) never touches them.
            weight = weight * representable(to_model(crop[:, idx], colorspace, params["ocio_config"]))
            keep = weight > 0
            if keep.any():
                if not dense:
                    ys, xs, weight, crop, restored = ys[keep], xs[keep], weight[keep], crop[keep], restored[keep]
                back = from_model(restored, colorspace, params["ocio_config"])
                if len(set(idx)) == 1:  # one grey channel shown to the model as RGB
                    back, idx = back.mean(axis=-1, keepdims=True), idx[:1]
                values = blend(crop[:, idx].astype(np.float32), back, weight)
                if dense:
                    blended = (slice(y0, y1), slice(x0, x1), idx, values.reshape(y1 - y0, x1 - x0, len(idx)))
                else:
                    blended = (ys, xs, idx, values)
    channels, formats = list(original.channels), list(original.formats)
    add_matte = bool(params["write_matte"]) and matte_channel not in channels
    if blended is None and not params["write_matte"]:
        return original.with_pixels(held, channels, formats)  # shares the original's array
    # One new array for the output (the original stays as it was: it may be a source's own frame).
    h, w, c = held.shape
    as_halves = halves_out and original.half is not None  # every channel half (the matte's is too)
    dtype = np.float16 if as_halves else np.float32
    if not add_matte and held.dtype == dtype:
        pixels = held.copy()  # one contiguous copy: ~3 ms a 2K RGBA half frame, channel by channel ~13
    else:
        pixels = np.empty((h, w, c + add_matte), dtype)
        for i in range(c):  # channel by channel: numpy copies a long strided run faster than many short ones
            pixels[..., i] = held[..., i]
    if blended is not None:
        rows, cols, chans, values = blended
        if isinstance(rows, slice):
            pixels[rows, cols, chans] = values
        else:
            pixels[rows[:, None], cols[:, None], np.asarray(chans)[None, :]] = values
    if params["write_matte"]:
        if add_matte:
            channels.append(matte_channel)
            formats.append("half")
        fill.matte_into(pixels[..., channels.index(matte_channel)])
    return original.with_pixels(pixels, channels, formats)


def _over_base(fill: FillResult, params: Mapping[str, Any]) -> FillResult:
    """A deflickered frame: the fills, under the feathered auto matte, over the stabilised base; every pixel
    of the result is the restorer's (the whole frame changes on purpose, so it blends with mask 'none')."""
    h, w = fill.shape
    composed = fill.base.copy()  # type: ignore[union-attr]
    mask_box, mask = feather_in_box(fill.matte_box, fill.matte, fill.shape, params["feather"], params["matte_grow"])
    if mask_box is not None:
        # The restored frame (fills over the base) is needed only where the matte reaches.
        y0, y1, x0, x1 = mask_box
        restored = composed[y0:y1, x0:x1].copy()
        ys, xs = np.divmod(fill.where, w)
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        restored[ys[inside] - y0, xs[inside] - x0] = fill.values[inside]
        composed[y0:y1, x0:x1] = blend(composed[y0:y1, x0:x1], restored, mask)
    every = np.arange(h * w, dtype=_index_type(fill.shape))
    return FillResult(fill.shape, (0, h, 0, w), every, composed.reshape(-1, 3), fill.matte_box, fill.matte)
