"""Raw pixels on the wire and the stage cache.

The protocol's raw frames round-trip bit-exactly and refuse malformed descriptions by field name; a server
(in-process, with a restorer that counts its calls) re-blends from the fill stage when only a blend- or
output-stage knob changes, restores again when a detection knob changes, and sends a frame the restorer
left unchanged back as the source's own bytes."""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress
from frdm.server import protocol
from frdm.server.client import FrdmClient
from frdm.server.protocol import Limits, ProtocolError, RawImage, RawSpec

W, H = 48, 32
BOX = (slice(10, 14), slice(20, 26))  # the defect the counting restorer finds (its matte)
AROUND = (slice(6, 18), slice(16, 30))  # the pixels it repaints: how far the feather reaches into them shows


def raw_frame(seed: int, types: tuple[str, ...] = ("half",) * 4, channels: tuple[str, ...] | None = None):
    rng = np.random.default_rng(seed)
    channels = channels or ("R", "G", "B", "A", "Z", "mask", "depth.Z")[: len(types)]
    px = (0.2 + 0.6 * rng.random((H, W, len(types)))).astype(np.float32)
    attrs = {"timecode": ("timecode", (1, 2)), "owner": ("string", "shot 10"), "frdm:n": ("int", seed)}
    return RawImage.from_float32(px, channels, types, (0, 0, W, H), (0, 0, W, H), attrs)


# --- the format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "types",
    [("half",) * 4, ("float",) * 3, ("half", "half", "half", "float", "half"), ("float", "half")],
    ids=["half", "float", "mixed+extra", "float+half"],
)
def test_raw_frames_round_trip_bit_exactly(types):
    rng = np.random.default_rng(1)
    px = rng.standard_normal((7, 9, len(types))).astype(np.float32) * 1000  # beyond half's precision
    names = tuple(f"layer.c{i}" for i in range(len(types)))
    attrs = {
        "comment": ("string", "é ünïcode"),
        "matrix": ("matrix", tuple(float(i) for i in range(16))),
        "n": ("int", -3),
    }
    sent = RawImage.from_float32(px, names, types, (-5, 12, 9, 7), (0, 0, 2048, 1556), attrs)
    # Through the header's bytes, as on the wire: the same description and the same bits.
    header, blobs = protocol.restore_header("r", "j", {}, [1], {1: sent}, reply="raw")
    back = protocol.unpack(protocol.encode(header, blobs)[0])
    got = protocol.raw_image(back["sources"][0]["image"], memoryview(blobs[0]), "source")
    assert got.spec == sent.spec and got.spec.data_window == (-5, 12, 9, 7)
    assert bytes(memoryview(got.buffer)) == bytes(memoryview(sent.buffer))
    expect = np.stack([px[..., i].astype(np.float16 if t == "half" else np.float32) for i, t in enumerate(types)], -1)
    np.testing.assert_array_equal(got.to_float32(), expect.astype(np.float32))
    assert blobs[0] is sent.buffer  # the request refers to the pixels; it does not copy them


GOOD = {"data_window": [0, 0, 4, 2], "display_window": [0, 0, 4, 2], "channels": ["R", "G"], "types": ["half", "half"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"data_window": [0, 0, 0, 2]}, "data_window"),
        ({"data_window": [0, 0, 4]}, "data_window"),
        ({"data_window": [0, 0, 4.0, 2]}, "data_window"),
        ({"display_window": [0, 0, 4, -1]}, "display_window"),
        ({"data_window": [2**31 - 2, 0, 4, 2]}, "data_window"),
        ({"types": ["half"]}, "types"),
        ({"types": ["half", "uint8"]}, "types[1]"),
        ({"channels": []}, "channels"),
        ({"channels": ["R", "R"]}, "channels"),
        ({"channels": ["R", ""]}, "channels[1]"),
        ({"attributes": {"x": ["string"]}}, "attributes['x']"),
        ({"attributes": {"x": ["string", {"a": 1}]}}, "attributes['x']"),
        ({"width": 4}, "unknown field"),
    ],
)
def test_malformed_raw_descriptions_name_the_field(change, field):
    with pytest.raises(ProtocolError) as err:
        protocol.parse_raw_spec(dict(GOOD, **change), "sources[0].image")
    assert "sources[0].image" in str(err.value) and field in str(err.value)


def test_raw_buffer_size_and_limits_are_checked():
    spec = protocol.parse_raw_spec(GOOD)
    with pytest.raises(ProtocolError, match=r"holds 15 bytes but 4x2 pixels of 2 channels \(half, half\) need 32"):
        RawImage(spec, b"\0" * 15, "source frame 3")
    with pytest.raises(ProtocolError, match="source frame 3: 4x2 = 8 pixels exceeds"):
        protocol.check_raw_size(spec, Limits(max_pixels_per_frame=7), "source frame 3")
    h = protocol.restore_header("r", "j", {}, [1], {1: RawImage(spec, b"\0" * 32)})[0]
    h["sources"][0]["path"] = "/x.exr"
    with pytest.raises(ProtocolError, match="exactly one of 'blob'"):
        protocol.parse_restore(h, 1, Limits())
    h = protocol.restore_header("r", "j", {}, [1], {1: b"exr"})[0]
    with pytest.raises(ProtocolError, match="field 'reply'"):
        protocol.parse_restore(dict(h, reply="png"), 1, Limits())


# --- the stage cache, through a server ------------------------------------------------------------------


class CountingRestorer:
    """Repaints a box of every target with 0.5, finds a smaller defect inside it (the matte) and counts the
    frames it restored; frames whose first pixel is above 0.7 it leaves exactly as they were (matte 0)."""

    engine_version = "test-count-1"

    def __init__(self) -> None:
        self.restored: list[int] = []

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return (1, 1)

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        for t in clip.targets:
            self.restored.append(t)
            image = clip.frames[clip.index(t)].copy()
            matte = np.zeros(image.shape[:2], np.float32)
            if image[0, 0, 0] <= 0.7:
                image[AROUND] = 0.5
                matte[BOX] = 1.0
            yield RestoredFrame(t, image, matte)


@contextlib.contextmanager
def counting_server(cache: Path, **config: Any) -> Iterator[tuple[Any, CountingRestorer]]:
    from frdm.server.server import Server, ServerConfig

    restorer = CountingRestorer()
    srv = Server(ServerConfig(bind="tcp://127.0.0.1:*", cache_dir=str(cache), **config), restorer=restorer)
    ready = threading.Event()
    thread = threading.Thread(target=srv.serve, kwargs={"ready": lambda _: ready.set()}, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield srv, restorer
    finally:
        srv.request_stop()
        thread.join(30)


@pytest.fixture
def server(tmp_path):
    with counting_server(tmp_path / "cache") as running:
        yield running


def run(address: str, params: dict[str, Any], sources: dict[int, Any], frames=(2, 3), reply="raw") -> dict[int, Any]:
    with FrdmClient(address, timeout=30) as client:
        out = {}
        for event in client.restore(dict(params, colorspace="raw"), list(frames), sources=sources, reply=reply):
            assert event.kind != "error", event.message
            if event.kind == "frame":
                out[event.frame] = (event.image if reply == "raw" else event.data, event.cached)
        return out


def pixels(result) -> np.ndarray:
    return result[0].to_float32()


def test_blend_stage_change_re_blends_without_the_restorer_detection_change_restores(server):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    first = run(srv.endpoint, {"feather": 1.0}, sources)
    assert sorted(restorer.restored) == [2, 3]
    for change in (
        {"feather": 3.0},
        {"matte_grow": 0},
        {"mask": "none"},
        {"write_matte": False},
        {"pixel_type": "float"},
    ):
        again = run(srv.endpoint, dict({"feather": 1.0}, **change), sources)
        assert sorted(restorer.restored) == [2, 3], f"{change} called the restorer again"
        assert not any(cached for _, cached in again.values())  # a new final frame, made from the fill stage
    wider = run(srv.endpoint, {"feather": 3.0}, sources)
    assert all(cached for _, cached in wider.values())  # the same knobs again: the finished frames
    assert not np.array_equal(pixels(wider[2]), pixels(first[2]))  # the feather did change the result
    run(srv.endpoint, {"feather": 1.0, "dust_threshold": 0.2}, sources)
    assert sorted(restorer.restored) == [2, 2, 3, 3]  # a detection knob: the restorer runs again
    # A changed context frame changes the fill key of its neighbour only.
    run(srv.endpoint, {"feather": 1.0}, {**sources, 4: raw_frame(40)})
    assert sorted(restorer.restored) == [2, 2, 3, 3, 3]


def test_re_blended_frames_equal_a_fresh_restore(server, tmp_path):
    from frdm.server.server import Server, ServerConfig

    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3)}
    run(srv.endpoint, {"feather": 1.0}, sources)
    reblended = run(srv.endpoint, {"feather": 4.0, "matte_grow": 3}, sources)
    assert sorted(restorer.restored) == [2, 3]
    fresh_srv = Server(ServerConfig(bind="tcp://127.0.0.1:*", cache_dir=str(tmp_path / "fresh")), CountingRestorer())
    ready = threading.Event()
    thread = threading.Thread(target=fresh_srv.serve, kwargs={"ready": lambda _: ready.set()}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        fresh = run(fresh_srv.endpoint, {"feather": 4.0, "matte_grow": 3}, sources)
    finally:
        fresh_srv.request_stop()
        thread.join(30)
    for n in (2, 3):
        assert reblended[n][0].spec == fresh[n][0].spec
        assert bytes(memoryview(reblended[n][0].buffer)) == bytes(memoryview(fresh[n][0].buffer))


def test_raw_frames_through_the_server_keep_bits_channels_windows_attributes(server):
    srv, _ = server
    types = ("half", "half", "half", "half", "float")
    src = {n: raw_frame(n, types) for n in (1, 2, 3)}
    # Move the data window off the origin: it must come back where it was.
    for n, r in src.items():
        s = r.spec
        src[n] = RawImage(RawSpec((7, -3, W, H), (0, 0, 64, 40), s.channels, s.types, s.attributes), r.buffer)
    out = run(srv.endpoint, {"write_matte": False, "mask": "auto", "feather": 0.0, "matte_grow": 0}, src, frames=(2,))
    got = out[2][0]
    assert got.spec.channels == src[2].spec.channels and got.spec.types == types
    assert got.spec.data_window == (7, -3, W, H) and got.spec.display_window == (0, 0, 64, 40)
    assert got.spec.attributes["owner"] == ("string", "shot 10") and got.spec.attributes["timecode"][1] == (1, 2)
    assert "frdm:params_hash" in got.spec.attributes
    a, b = got.to_float32(), src[2].to_float32()
    inside = np.zeros((H, W), bool)
    inside[BOX] = True
    np.testing.assert_array_equal(a[~inside], b[~inside])  # every pixel outside the repair: the same bits
    np.testing.assert_array_equal(a[inside][:, :3], np.float16(0.5))  # the repair, in the source's half
    np.testing.assert_array_equal(a[..., 4], b[..., 4])  # the extra float channel untouched
    srv.cache.flush()
    again = run(srv.endpoint, {"write_matte": False, "mask": "auto", "feather": 0.0, "matte_grow": 0}, src, frames=(2,))
    cached = again[2][0]  # from the cache entry, which holds only the changed pixels: the very same bytes
    assert again[2][1] and cached.spec == got.spec
    assert bytes(memoryview(cached.buffer).cast("B")) == bytes(memoryview(got.buffer).cast("B"))


def test_unchanged_frame_goes_back_as_the_source_bytes(server):
    srv, _ = server
    src = {n: raw_frame(n) for n in (1, 2, 3)}
    buf = np.frombuffer(memoryview(src[2].buffer).cast("B"), np.float16).reshape(H, W, 4).copy()
    buf[0, 0, 0] = 0.75  # the counting restorer leaves this frame alone
    src[2] = RawImage(src[2].spec, buf)
    for _ in range(2):  # restored, then from the cache (which stores no pixels for it)
        out = run(srv.endpoint, {"write_matte": False}, src, frames=(2,))
        assert bytes(memoryview(out[2][0].buffer)) == buf.tobytes()
    srv.cache.flush()
    cached = [e for e in os.scandir(srv.cache.directory) if e.name.endswith(".frame")]
    assert cached and all(p.stat().st_size < 4096 for p in cached)


def test_exr_sources_and_replies_still_work(server):
    from frdm.engine.frames import Frame, decode_image, encode_image

    srv, restorer = server
    px = np.full((H, W, 3), 0.25, np.float32)
    exr = {
        n: encode_image(Frame(px + n / 100, ("R", "G", "B"), ("half",) * 3, (0, 0, W, H), (0, 0, W, H)))
        for n in (1, 2, 3)
    }
    out = run(srv.endpoint, {"mask": "none", "write_matte": False}, exr, frames=(2,), reply="exr")
    got = decode_image(out[2][0]).pixels
    assert np.allclose(got[BOX], 0.5, atol=1e-3) and np.allclose(got[0, 0], np.float16(0.27), atol=1e-3)


@pytest.mark.parametrize(("radius", "grow"), [(0.0, 0), (0.7, 0), (2.0, 2), (5.5, 3), (12.0, 0)])
def test_feathering_inside_the_box_equals_the_full_frame(radius, grow):
    from frdm.engine.blend import feather_mask
    from frdm.engine.fill import feather_in_box, nonzero_box

    rng = np.random.default_rng(int(radius * 10) + grow)
    matte = np.zeros((120, 160), np.float32)
    matte[40:44, 70:75] = 1.0
    matte[50, 90] = rng.random()
    matte[0:3, 150:160] = 0.6  # touching the frame's edge: the crop's border is the frame's there
    box = nonzero_box(matte > 0)
    crop, inside = feather_in_box(box, matte[box[0] : box[1], box[2] : box[3]], matte.shape, radius, grow)
    full = np.zeros_like(matte)
    full[crop[0] : crop[1], crop[2] : crop[3]] = inside
    expect = feather_mask(matte, radius, grow)
    # OpenCV's vector code may round a blur sum differently by position (an ulp, 3e-8): the same pixels are
    # zero (untouched) either way, and every fresh or cached blend goes through the box path alike.
    np.testing.assert_array_equal(full > 0, expect > 0)
    np.testing.assert_allclose(full, expect, rtol=0, atol=1e-6)


# --- EXR files without OpenImageIO (the node's side) ---------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zips", "zip"])
def test_host_exr_codec_reads_and_writes_what_openimageio_does(compression):
    from frdm.engine.frames import Frame, decode_image, encode_image
    from frdm.server import exrfile

    rng = np.random.default_rng(3)
    h, w = 37, 53  # 37 lines: ZIP's 16-line blocks end with a short one
    px = rng.random((h, w, 5)).astype(np.float32)
    names, types = ("R", "G", "B", "A", "depth.Z"), ("half", "half", "half", "half", "float")
    ours = RawImage.from_float32(px, names, types, (3, -2, w, h), (0, 0, 60, 40), {"frdm:n": ("string", "x")})
    expect = ours.to_float32()
    back = decode_image(exrfile.encode(ours, compression))  # ours -> OpenImageIO
    assert back.data_window == (3, -2, w, h) and back.display_window == (0, 0, 60, 40)
    assert back.attributes["frdm:n"] == ("string", "x") and back.attributes["compression"][1] == compression
    np.testing.assert_array_equal(back.pixels[..., [back.channels.index(c) for c in names]], expect)
    frame = Frame(expect, names, types, (3, -2, w, h), (0, 0, 60, 40), {"compression": ("string", compression)})
    raw = exrfile.decode(encode_image(frame))  # OpenImageIO -> ours
    assert raw is not None and raw.spec.data_window == (3, -2, w, h) and set(raw.spec.channels) == set(names)
    got = raw.to_float32()
    np.testing.assert_array_equal(got[..., [raw.spec.channels.index(c) for c in names]], expect)


def test_host_exr_codec_leaves_other_files_to_the_server():
    from frdm.engine.frames import Frame, encode_image
    from frdm.server import exrfile

    px = np.zeros((8, 8, 3), np.float32)
    piz = encode_image(
        Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, 8, 8), (0, 0, 8, 8), {"compression": ("string", "piz")})
    )
    assert exrfile.decode(piz) is None and exrfile.decode(b"not an exr") is None


def test_raw_source_with_nan_is_refused_by_frame(server):
    srv, restorer = server
    src = {n: raw_frame(n) for n in (1, 2, 3)}
    bad = src[1].to_float32()
    bad[5, 7, 2] = np.nan
    src[1] = RawImage.from_float32(bad, src[1].spec.channels, src[1].spec.types, (0, 0, W, H), (0, 0, W, H))
    with FrdmClient(srv.endpoint, timeout=30) as client:
        events = list(client.restore({"colorspace": "raw"}, [2], sources=src, reply="raw"))
    assert events[-1].kind == "error" and events[-1].code == "bad_input"
    assert "source frame 1" in events[-1].message and "x=7, y=5, channel B" in events[-1].message
    assert restorer.restored == []


def test_cli_keep_fill_re_blends_a_feather_change_without_the_restorer(tmp_path):
    from frdm.engine.frames import Frame, read_frame, write_frame
    from frdm.engine.pipeline import restore_sequence

    for n in (1, 2, 3, 4):
        px = raw_frame(n).to_float32()
        write_frame(
            tmp_path / "in" / f"s.{n:04d}.exr",
            Frame(px, ("R", "G", "B", "A"), ("half",) * 4, (0, 0, W, H), (0, 0, W, H)),
        )
    src, out = str(tmp_path / "in" / "s.####.exr"), str(tmp_path / "out" / "r.####.exr")
    base = {"colorspace": "raw", "feather": 1.0}
    restorer = CountingRestorer()
    restore_sequence(src, out, frames=[2, 3], params=base, restorer=restorer, keep_fill=True)
    assert restorer.restored == [2, 3]
    report = restore_sequence(
        src, out, frames=[2, 3], params=dict(base, feather=3.0), restorer=restorer, keep_fill=True
    )
    assert report.written == [2, 3] and restorer.restored == [2, 3]  # re-blended, not restored
    again = {n: read_frame(report.outputs[n]).pixels for n in (2, 3)}
    fresh = restore_sequence(
        src,
        str(tmp_path / "fresh" / "r.####.exr"),
        frames=[2, 3],
        params=dict(base, feather=3.0),
        restorer=CountingRestorer(),
    )
    for n in (2, 3):
        np.testing.assert_array_equal(again[n], read_frame(fresh.outputs[n]).pixels)
    restore_sequence(src, out, frames=[2, 3], params=dict(base, dust_threshold=0.2), restorer=restorer, keep_fill=True)
    assert restorer.restored == [2, 3, 2, 3]  # a detection knob restores again
    assert len(os.listdir(tmp_path / "out" / ".frdm-fill")) == 2  # one entry per frame, replaced


def test_server_refuses_malformed_raw_frames_by_field_and_goes_on(server):
    srv, restorer = server
    good = {n: raw_frame(n) for n in (1, 2, 3)}
    header, blobs = protocol.restore_header("bad1", "bad1", {"colorspace": "raw"}, [2], good, reply="raw")
    cases = [
        (lambda h, b: b.__setitem__(0, b"\0" * 10), "bad_input", "source frame 1: the pixel buffer holds 10 bytes"),
        (
            lambda h, b: h["sources"][1]["image"].__setitem__("types", ["half"] * 3),
            "bad_request",
            "sources[1].image.types",
        ),
        (
            lambda h, b: h["sources"][2]["image"].__setitem__("data_window", [0, 0, -4, 2]),
            "bad_request",
            "sources[2].image.data_window",
        ),
        (
            lambda h, b: h["sources"][0]["image"].__setitem__("data_window", [0, 0, 9000, 9000]),
            "too_large",
            "source frame 1: 9000x9000",
        ),
    ]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(srv.endpoint)
    try:
        for i, (spoil, code, text) in enumerate(cases):
            h = copy.deepcopy(header)
            h["id"] = h["job"] = f"bad{i}"
            b = [bytes(memoryview(x).cast("B")) for x in blobs]
            spoil(h, b)
            sock.send_multipart(protocol.encode(h, b))
            assert sock.poll(10000)
            reply = protocol.unpack(sock.recv_multipart()[0])
            assert reply["type"] == "error" and reply["code"] == code and text in reply["message"], reply
    finally:
        sock.close(0)
    assert restorer.restored == []
    assert run(srv.endpoint, {}, good, frames=(2,))  # the server goes on serving


# --- context frames by content id (the preview after a blend-stage change) ----------------------------


def events(address: str, params: dict[str, Any], sources: dict[int, Any], frames=(2, 3)) -> list[Any]:
    with FrdmClient(address, timeout=30) as client:
        return list(client.restore(dict(params, colorspace="raw"), list(frames), sources=sources, reply="raw"))


def test_context_frames_by_content_id_re_blend_without_their_pixels(server):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    run(srv.endpoint, {"feather": 1.0}, sources)
    assert sorted(restorer.restored) == [2, 3]
    by_id = {1: protocol.ContentRef(sources[1].content_id()), 4: protocol.ContentRef(sources[4].content_id())}
    light = run(srv.endpoint, {"feather": 3.0}, {**by_id, 2: sources[2], 3: sources[3]})
    assert sorted(restorer.restored) == [2, 3]  # re-blended from the kept restorer outputs
    assert not any(cached for _, cached in light.values())
    full = run(srv.endpoint, {"feather": 3.0}, sources)  # the same request with every frame's pixels
    assert all(cached for _, cached in full.values())  # ... keys the frames alike: the ids are the server's
    for n in (2, 3):
        assert light[n][0].spec == full[n][0].spec
        assert bytes(memoryview(light[n][0].buffer)) == bytes(memoryview(full[n][0].buffer))


def test_a_detection_change_reads_frames_sent_by_id_from_the_recent_sources(server, monkeypatch):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    run(srv.endpoint, {"feather": 1.0}, sources)
    converted: list[Any] = []
    to_float32 = RawImage.to_float32
    monkeypatch.setattr(RawImage, "to_float32", lambda raw: (converted.append(raw), to_float32(raw))[1])
    by_id = {n: protocol.ContentRef(sources[n].content_id()) for n in (1, 4)}
    light = run(srv.endpoint, {"dust_threshold": 0.2}, {**by_id, 2: sources[2], 3: sources[3]})
    assert sorted(restorer.restored) == [2, 2, 3, 3]  # restored again, its context from memory ...
    assert converted == []  # ... and every frame's float pixels too (converted by the first request)
    full = run(srv.endpoint, {"dust_threshold": 0.2}, sources)
    assert all(cached for _, cached in full.values())
    for n in (2, 3):
        assert bytes(memoryview(light[n][0].buffer)) == bytes(memoryview(full[n][0].buffer))


def test_half_frames_from_the_recent_sources_are_checked_for_nan_once(server, monkeypatch):
    from frdm.server import pixels as server_pixels

    srv, restorer = server
    sources = {n: raw_frame(100 + n) for n in (1, 2, 3, 4)}  # all half: held as received, never converted
    checked: list[int] = []
    check = server_pixels.check_finite
    monkeypatch.setattr(
        server_pixels, "check_finite", lambda px, raw, name: (checked.append(id(raw.buffer)), check(px, raw, name))
    )
    run(srv.endpoint, {"feather": 1.0}, sources)
    assert len(checked) == 4  # each frame read once
    checked.clear()
    by_id = {n: protocol.ContentRef(sources[n].content_id()) for n in sources}
    light = run(srv.endpoint, {"dust_threshold": 0.2}, by_id)  # restored again, every frame from memory
    assert checked == [] and sorted(restorer.restored) == [2, 2, 3, 3]
    full = run(srv.endpoint, {"dust_threshold": 0.2}, sources)
    for n in (2, 3):
        assert bytes(memoryview(light[n][0].buffer)) == bytes(memoryview(full[n][0].buffer))


def test_frames_listed_out_of_order_find_their_context_by_id(server):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    run(srv.endpoint, {"feather": 1.0}, sources)
    by_id = {n: protocol.ContentRef(sources[n].content_id()) for n in (1, 4)}
    got = events(srv.endpoint, {"dust_threshold": 0.2}, {**by_id, 2: sources[2], 3: sources[3]}, frames=(3, 2))
    assert got[-1].kind == "done", got[-1].message
    assert [e.frame for e in got if e.kind == "frame"] == [2, 3]  # in increasing order, as always


def test_a_frame_by_id_between_two_targets_is_read_from_the_recent_sources(server):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 5, 9, 10, 11)}
    run(srv.endpoint, {"feather": 1.0}, {n: sources[n] for n in (3, 5, 9)}, frames=(5,))  # 5 now in memory
    # Outside both targets' windows, yet inside the block the engine reads (targets 2 and 10 are one block).
    light = {**sources, 5: protocol.ContentRef(sources[5].content_id())}
    got = events(srv.endpoint, {"feather": 1.0}, light, frames=(2, 10))
    assert got[-1].kind == "done", got[-1].message
    assert [e.frame for e in got if e.kind == "frame"] == [2, 10]


def test_frames_sent_by_id_the_server_lacks_are_asked_for(tmp_path):
    with counting_server(tmp_path / "cache", source_memory_bytes=0) as (srv, restorer):
        sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
        run(srv.endpoint, {"feather": 1.0}, sources)
        by_id = {n: protocol.ContentRef(sources[n].content_id()) for n in (1, 4)}
        got = events(srv.endpoint, {"dust_threshold": 0.2}, {**by_id, 2: sources[2], 3: sources[3]})
        assert got[-1].kind == "error" and got[-1].code == "need_sources", got[-1].message
        assert got[-1].frames == [1, 4]
        assert not [e for e in got if e.kind == "frame"]  # nothing delivered, nothing restored
        assert sorted(restorer.restored) == [2, 3]
        # A wrong id is a miss, never another frame's result: the server asks for the pixels.
        wrong = {1: protocol.ContentRef("0" * 128), 4: by_id[4]}
        got = events(srv.endpoint, {"feather": 2.0}, {**wrong, 2: sources[2], 3: sources[3]})
        assert got[-1].code == "need_sources" and got[-1].frames == [1]
        assert run(srv.endpoint, {"dust_threshold": 0.2}, sources)  # with pixels the server goes on
        assert sorted(restorer.restored) == [2, 2, 3, 3]


def test_targets_by_content_id_are_restored_and_re_blended_from_the_recent_sources(tmp_path):
    with counting_server(tmp_path / "cache") as (srv, restorer):
        sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
        run(srv.endpoint, {"feather": 1.0}, sources)
        by_id = {n: protocol.ContentRef(sources[n].content_id()) for n in sources}  # no pixels at all
        for change, restored in (({"feather": 3.0}, [2, 3]), ({"dust_threshold": 0.2}, [2, 2, 3, 3])):
            light = run(srv.endpoint, change, by_id)
            assert sorted(restorer.restored) == restored, change  # re-blended, then restored again
            full = run(srv.endpoint, change, sources)  # with every frame's pixels: the same keys, the same bytes
            assert all(cached for _, cached in full.values())
            for n in (2, 3):
                assert light[n][0].spec == full[n][0].spec
                assert bytes(memoryview(light[n][0].buffer)) == bytes(memoryview(full[n][0].buffer))
    with counting_server(tmp_path / "cache2", source_memory_bytes=0) as (srv, restorer):
        run(srv.endpoint, {"feather": 1.0}, sources)
        # Even with the restorer outputs kept (a blend change), a target's own pixels must be there.
        got = events(srv.endpoint, {"feather": 3.0}, {**sources, 3: by_id[3]})
        assert got[-1].kind == "error" and got[-1].code == "need_sources", got[-1].message
        assert got[-1].frames == [3] and not [e for e in got if e.kind == "frame"]
        assert sorted(restorer.restored) == [2, 3]


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"frame": 1, "id": "A" * 64}, "64 or 128 lowercase hex"),
        ({"frame": 1, "id": "a" * 63}, "64 or 128 lowercase hex"),
        ({"frame": 1, "id": 7}, "64 or 128 lowercase hex"),
        ({"frame": 1, "id": "a" * 64, "path": "/x.exr"}, "exactly one of"),
        ({"frame": 1, "id": "a" * 64, "image": {}}, "'image' describes inline pixels"),
    ],
)
def test_malformed_content_id_sources_are_refused_by_field(entry, why):
    h, blobs = protocol.restore_header("r", "j", {}, [2], {3: b"exr"})
    h["sources"] = [entry, *([] if entry["frame"] == 2 else [{"frame": 2, "blob": 1}])]
    with pytest.raises(ProtocolError, match=why) as err:
        protocol.parse_restore(h, 1 if entry["frame"] != 2 else 0, Limits())
    assert err.value.code == "bad_request"


def test_a_mask_cannot_be_named_by_content_id():
    h, _ = protocol.restore_header("r", "j", {}, [2], {2: b"exr"})
    h["masks"] = [{"frame": 2, "id": "a" * 64}]
    with pytest.raises(ProtocolError, match=r"masks\[0\]: only a source frame"):
        protocol.parse_restore(h, 1, Limits())


def test_half_to_float_table_is_astype_for_every_half():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    got = protocol.half_to_float32(every.reshape(256, 256))
    assert got.dtype == np.float32 and got.shape == (256, 256)
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint32), every.astype(np.float32).view(np.uint32))


def test_cache_entries_are_not_synced_and_a_torn_entry_is_a_miss(server, monkeypatch):
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    first = run(srv.endpoint, {"feather": 1.0}, sources)
    srv.cache.flush()
    assert synced == []  # the cache does not wait for the disk ...
    for entry in os.scandir(srv.cache.directory):  # ... because what a power cut may leave is a miss
        if entry.name.endswith((".frame", ".fill")):
            with open(entry.path, "r+b") as fh:
                fh.truncate(entry.stat().st_size // 2)
    again = run(srv.endpoint, {"feather": 1.0}, sources)
    assert sorted(restorer.restored) == [2, 2, 3, 3] and not any(cached for _, cached in again.values())
    for n in (2, 3):
        assert bytes(memoryview(again[n][0].buffer)) == bytes(memoryview(first[n][0].buffer))


def _damaged(data: bytes, damage: str) -> bytes:
    from frdm.server.storage import ResultCache

    if damage == "zeroed":  # what a power cut can leave of an unsynced file: its length, all zeros
        return bytes(len(data))
    if damage == "tail-zeroed":  # the header's page reached the disk, the pixels' did not
        return data[: len(data) // 2] + bytes(len(data) - len(data) // 2)
    assert damage == "unsealed"  # an entry as the version before the seal wrote it
    return data[: -ResultCache.SEAL.size]


@pytest.mark.parametrize("damage", ["zeroed", "tail-zeroed", "unsealed"])
def test_a_zeroed_cache_entry_of_the_right_length_is_a_logged_miss_never_a_wrong_frame(server, caplog, damage):
    """Entries are not synced: a power cut can leave a file of the right length full of zeros (in part:
    the header intact, a changed frame's indices and samples or a fill's arrays zeros, which read as a
    valid entry and were served as the cached frame). Each entry's seal (a crc32) makes it a miss, logged
    with the file's name; an entry without a seal (the version before it) is a miss too."""
    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    first = run(srv.endpoint, {"feather": 1.0}, sources)
    srv.cache.flush()
    damaged = []
    for entry in os.scandir(srv.cache.directory):
        if entry.name.endswith((".frame", ".fill")):
            data = Path(entry.path).read_bytes()
            Path(entry.path).write_bytes(_damaged(data, damage))
            damaged.append(entry.path)
    assert len(damaged) == 4  # a finished frame and a fill result for each of the two targets
    with caplog.at_level("WARNING", logger="frdm.server"):
        again = run(srv.endpoint, {"feather": 1.0}, sources)
    assert sorted(restorer.restored) == [2, 2, 3, 3] and not any(cached for _, cached in again.values())
    for n in (2, 3):
        assert bytes(memoryview(again[n][0].buffer)) == bytes(memoryview(first[n][0].buffer))
    assert all(any(path in r.getMessage() for r in caplog.records) for path in damaged), caplog.text


def test_a_fill_entry_with_a_malformed_header_is_a_miss_not_a_failed_job(server):
    """A fill entry whose checksum holds but whose header is not what this version writes (a header that is
    no map, a box of one number, a frame size of letters) raised AttributeError or IndexError out of the
    cache read, or was taken as a fill of that 'size': the job failed. It is a miss: the frame is restored."""
    import json
    import zlib

    from safetensors.numpy import save

    from frdm.engine.fill import FILL_FORMAT
    from frdm.server.storage import ResultCache

    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    first = run(srv.endpoint, {"feather": 1.0}, sources)
    srv.cache.flush()
    arrays = {n: np.zeros(0, np.uint8) for n in ("values", "changed", "matte_values", "defects")}
    metas = [[1], {"format": FILL_FORMAT, "shape": [H, W], "box": [0], "matte_box": None}]
    metas.append({"format": FILL_FORMAT, "shape": "ab", "box": None, "matte_box": None})
    for meta in metas:
        bad = save(arrays, metadata={"fill": json.dumps(meta)})
        for entry in os.scandir(srv.cache.directory):
            if entry.name.endswith(".frame"):
                os.unlink(entry.path)  # the finished frames go: the fill entries are read
            elif entry.name.endswith(".fill"):
                Path(entry.path).write_bytes(bad + ResultCache.SEAL.pack(ResultCache.SEAL_MAGIC, zlib.crc32(bad)))
        restored = len(restorer.restored)
        again = run(srv.endpoint, {"feather": 1.0}, sources)
        assert len(restorer.restored) == restored + 2, meta  # both targets restored again
        for n in (2, 3):
            assert bytes(memoryview(again[n][0].buffer)) == bytes(memoryview(first[n][0].buffer))
        srv.cache.flush()


def test_a_cache_entry_its_reader_fails_on_is_a_logged_miss(tmp_path, caplog):
    """Whatever a reader raises on an entry (a bug, or a file not to be trusted) costs that entry, named in
    the log, never the job that asked for it; what the reader returns is what ``get`` returns."""
    from frdm.engine.fill import FillResult
    from frdm.server.storage import ResultCache

    cache = ResultCache(str(tmp_path / "c"), 1 << 30)
    cache.put("a" * 64, [b"head", b"er"], "fill")

    def failing(data: Any) -> Any:
        raise IndexError("tuple index out of range")

    assert cache.get("a" * 64, "fill", lambda data: bytes(data).upper()) == b"HEADER"
    with caplog.at_level("WARNING", logger="frdm.server"):
        assert cache.get("a" * 64, "fill", failing) is None
    assert os.path.join(cache.directory, "a" * 64 + ".fill") in caplog.text and "IndexError" in caplog.text
    # An entry still waiting for the writer is serialised when read: what fails there is a miss too.
    waiting = ResultCache(str(tmp_path / "w"), 1 << 30, background=True)
    disk = threading.Event()
    waiting.put("s" * 64, lambda: (disk.wait(30), b"slow")[1], "fill")  # holds the writer
    waiting.put("b" * 64, lambda: failing(None), "fill")
    caplog.clear()
    with caplog.at_level("WARNING", logger="frdm.server"):
        assert waiting.get("b" * 64, "fill", FillResult.from_bytes) is None
    assert "b" * 64 + ".fill" in caplog.text
    disk.set()
    waiting.close()


def test_a_raw_frame_declares_its_colour_space_as_its_file_does(server, tmp_path):
    import OpenImageIO as oiio

    from frdm.server import exrfile

    srv, _ = server
    files = {}
    for n in (1, 2, 3):
        spec = oiio.ImageSpec(W, H, 3, "half")
        spec.attribute("oiio:ColorSpace", "sRGB")  # OpenImageIO writes it as the header's colorInteropID
        path = str(tmp_path / f"s.{n}.exr")
        out = oiio.ImageOutput.create(path)
        assert out.open(path, spec)
        out.write_image(np.full((H, W, 3), 0.2 + 0.1 * n, np.float32))
        out.close()
        files[n] = Path(path).read_bytes()
    spaces = {}
    for form, sources in (("exr", files), ("raw", {n: exrfile.decode(b) for n, b in files.items()})):
        with FrdmClient(srv.endpoint, timeout=30) as client:
            for event in client.restore({"colorspace": "auto"}, [2], sources=sources, reply="raw"):
                assert event.kind != "error", event.message
                if event.kind == "frame":
                    spaces[form] = event.image.spec.attributes["frdm:colorspace"][1]
    assert spaces["raw"] == spaces["exr"] != "linear"  # not guessed from the half type


def test_the_cache_writer_serves_waiting_entries_and_writes_them_on_close(tmp_path):
    from frdm.server.storage import ResultCache

    cache = ResultCache(str(tmp_path / "c"), 1 << 30, background=True)
    disk = threading.Event()

    def slow() -> bytes:  # an entry the writer serialises on a disk that is slow to answer
        disk.wait(30)
        return b"slow"

    cache.put("s" * 64, slow, "fill")
    cache.put("k" * 64, lambda: b"entry", "fill")  # waiting behind it, serialised when written or read
    cache.put("f" * 64, [b"par", b"ts"], "frame")
    assert not os.path.exists(os.path.join(cache.directory, "f" * 64 + ".frame"))
    assert cache.get("k" * 64, "fill") == b"entry" and cache.get("f" * 64) == b"parts"  # served while waiting
    disk.set()
    cache.close()
    assert sorted(os.listdir(cache.directory)) == ["f" * 64 + ".frame", "k" * 64 + ".fill", "s" * 64 + ".fill"]
    cache.put("a" * 64, b"now")  # after close: written at once
    assert os.path.exists(os.path.join(cache.directory, "a" * 64 + ".frame")) and cache.get("a" * 64) == b"now"


@pytest.mark.parametrize("types", [("half",) * 4, ("half", "half", "half", "float")], ids=["half", "mixed"])
def test_converting_only_the_changed_pixels_gives_the_full_conversion(types):
    from frdm.server.pixels import changed_from_raw, frame_from_raw, raw_from_frame

    raw = raw_frame(5, types)
    frame = frame_from_raw(raw, "f")
    rng = np.random.default_rng(1)
    pixels = frame.pixels.copy()
    pixels[rng.random((H, W)) < 0.1, :3] = rng.random((3,), dtype=np.float32)  # scattered repairs
    pixels[0, 0, 0], pixels[0, 1, 1] = -0.0, 1e-9  # a sign-only change and one half cannot hold
    out = frame.with_pixels(pixels)
    out.attributes["frdm:x"] = ("string", "y")
    got, full = changed_from_raw(raw, frame.pixels, out), raw_from_frame(out)
    assert got.spec == full.spec
    assert bytes(memoryview(got.buffer).cast("B")) == bytes(memoryview(full.buffer).cast("B"))
    assert bytes(memoryview(raw.buffer).cast("B")) == bytes(memoryview(raw_frame(5, types).buffer).cast("B"))


def test_huge_finite_float_pixels_are_not_taken_for_inf():
    from frdm.engine.errors import InputError
    from frdm.server.pixels import frame_from_raw

    px = np.full((H, W, 3), 3e38, np.float32)  # their sum overflows float32: the exact check decides
    raw = RawImage.from_float32(px, "RGB", ("float",) * 3, (0, 0, W, H), (0, 0, W, H))
    np.testing.assert_array_equal(frame_from_raw(raw, "f").pixels, px)
    px[5, 7, 1] = np.inf
    raw = RawImage.from_float32(px, "RGB", ("float",) * 3, (0, 0, W, H), (0, 0, W, H))
    with pytest.raises(InputError, match=r"f: 1 NaN/Inf values \(first at x=7, y=5, channel G\)"):
        frame_from_raw(raw, "f")


def test_recent_sources_keep_to_their_budget_least_recent_first():
    from frdm.server.storage import SourceMemory

    frames = {n: raw_frame(n) for n in range(4)}
    size = frames[0].spec.nbytes
    memory = SourceMemory(3 * size)
    for n in (0, 1, 2):
        memory.put(f"{n}", frames[n])
    assert memory.get("0") is frames[0]  # now the most recent
    memory.put("3", frames[3])  # over budget: the least recently used goes
    assert memory.get("1") is None and all(memory.get(f"{n}") is frames[n] for n in (0, 2, 3))
    pixels = np.zeros((H, W, 4), np.float32)
    memory.put_pixels("p", pixels)  # counted in the same budget (4 frames' bytes): two raw frames go
    assert not pixels.flags.writeable and memory.pixels("p") is pixels
    assert sum(memory.get(f"{n}") is not None for n in (0, 2, 3)) == 1
    SourceMemory(size - 1).put("big", frames[0])  # larger than the whole budget: not kept, nothing evicted


def test_a_chunk_holds_the_fill_results_it_read_not_those_it_made(tmp_path):
    import gc
    import weakref

    from frdm.engine.fill import FillResult
    from frdm.engine.restorer import RestoredFrame
    from frdm.server.storage import ResultCache
    from frdm.server.worker import FillCache

    model = np.zeros((H, W, 3), np.float32)
    image = model.copy()
    image[BOX] = 0.5
    made = FillResult.from_restored(RestoredFrame(2, image, np.zeros((H, W), np.float32), model.copy()), model)
    fills = FillCache(ResultCache(str(tmp_path / "c"), 1 << 30), {2: "a" * 64})
    fills.put(2, made)  # a frame's deflicker base alone is a whole frame: eight of them at 2K are ~300 MB
    gone = weakref.ref(made)
    del made
    gc.collect()
    assert gone() is None  # not held for the rest of the chunk
    read = fills.get(2)
    assert read is not None and fills.get(2) is read  # one entry for the worker's check and the engine alike


def test_a_fill_entry_is_let_go_once_its_frame_is_finished(server, monkeypatch):
    from frdm.server import worker

    srv, restorer = server
    sources = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    run(srv.endpoint, {"feather": 1.0}, sources)  # the restorer's outputs of 2 and 3 are kept
    chunks: list[worker.FillCache] = []
    held_at: dict[int, set[int]] = {}

    class Recording(worker.FillCache):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            chunks.append(self)

    deliver = worker.Worker._deliver

    def recorded(self, job, frame, *args, **kwargs):
        held_at[frame] = set(chunks[-1].held)
        return deliver(self, job, frame, *args, **kwargs)

    monkeypatch.setattr(worker, "FillCache", Recording)
    monkeypatch.setattr(worker.Worker, "_deliver", recorded)
    run(srv.endpoint, {"feather": 3.0}, sources)  # re-blended from both entries, in one chunk
    assert sorted(restorer.restored) == [2, 3]
    assert held_at == {2: {3}, 3: set()}  # frame 2's entry went when frame 2 was finished


def test_frames_recalled_by_id_are_let_go_once_no_unfinished_target_reads_them(tmp_path, monkeypatch):
    from frdm.server import worker

    with counting_server(tmp_path / "cache", chunk=1) as (srv, restorer):
        sources = {n: raw_frame(n) for n in range(1, 7)}
        targets = (2, 3, 4, 5)
        run(srv.endpoint, {"feather": 1.0}, sources, frames=targets)  # every frame now in the recent sources
        recalled_at: dict[int, set[int]] = {}
        deliver = worker.Worker._deliver

        def recorded(self, job, frame, *args, **kwargs):
            recalled_at[frame] = set(job.recalled)
            return deliver(self, job, frame, *args, **kwargs)

        monkeypatch.setattr(worker.Worker, "_deliver", recorded)
        light = {
            **sources,
            1: protocol.ContentRef(sources[1].content_id()),
            6: protocol.ContentRef(sources[6].content_id()),
        }
        run(srv.endpoint, {"dust_threshold": 0.2}, light, frames=targets)  # restored again: context read
        assert restorer.restored[-4:] == [2, 3, 4, 5]
        # One chunk per target: frame 1 (read by target 2 only) goes after it; frame 6 is read by 5.
        assert recalled_at == {2: {1}, 3: set(), 4: set(), 5: {6}}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's end, on purpose
def test_the_cache_writer_outlives_a_failing_disk_and_nothing_waits_for_a_writer_that_ended(tmp_path, monkeypatch):
    from frdm.server import storage

    cache = storage.ResultCache(str(tmp_path / "c"), 1 << 30, background=True)
    write = storage.ResultCache._write
    failures = iter([OSError(28, "No space left on device"), MemoryError(), SystemExit()])

    def failing(self, path, data):
        if os.path.basename(path).startswith("x"):
            raise next(failures)
        write(self, path, data)

    monkeypatch.setattr(storage.ResultCache, "_write", failing)
    cache.put("x" * 64, b"lost")
    cache.put("x" * 63 + "y", b"lost too")
    cache.put("a" * 64, b"kept")
    cache.flush()  # an OSError and a MemoryError cost their entries, not the writer
    assert cache._writer is not None and cache._writer.is_alive()
    assert cache.get("a" * 64) == b"kept" and cache.get("x" * 64) is None
    cache.put("x" * 63 + "z", b"ends the writer")  # SystemExit ends a thread without a word
    cache._writer.join(10)
    assert not cache._writer.is_alive()
    done = threading.Event()

    def many() -> None:  # more than the writer's queue holds: with no writer, put used to block for ever
        for i in range(2 * storage.ResultCache.PENDING):
            cache.put(f"{i:064d}", b"entry %d" % i)
        cache.close()
        done.set()

    threading.Thread(target=many, daemon=True).start()
    assert done.wait(30), "put or close waited for a writer that had ended"
    assert all(cache.get(f"{i:064d}") == b"entry %d" % i for i in range(2 * storage.ResultCache.PENDING))


@pytest.mark.parametrize("write_matte", [False, True], ids=["as-sent", "matte-added"])
def test_half_frames_are_never_decoded_and_reply_what_float32_frames_reply(server, monkeypatch, write_matte):
    """A raw all-half frame is held as the received halves (a view of its buffer): no float32 copy is made,
    changed or not, and the replies are the bytes the float32 path gives."""
    from frdm.engine import frames as frames_module
    from frdm.engine.frames import MemorySource
    from frdm.engine.pipeline import restore_frames
    from frdm.server import worker
    from frdm.server.pixels import frame_from_raw, raw_from_frame

    srv, _ = server
    src = {n: raw_frame(n) for n in (1, 2, 3, 4)}
    buf = src[3].array().copy()
    buf[0, 0, 0] = 0.75  # the counting restorer leaves frame 3 alone; it repaints frame 2
    src[3] = RawImage(src[3].spec, buf)
    read, decoded = [], []
    real_read, real_decode = worker.WireSource.read, frames_module.half_to_float32
    monkeypatch.setattr(worker.WireSource, "read", lambda self, n: read.append(real_read(self, n)) or read[-1])
    monkeypatch.setattr(frames_module, "half_to_float32", lambda a: decoded.append(a.shape) or real_decode(a))
    monkeypatch.setattr(protocol, "half_to_float32", lambda a: decoded.append(a.shape) or real_decode(a))
    params = {"feather": 2.0, "matte_grow": 1, "write_matte": write_matte}
    out = run(srv.endpoint, params, src, frames=(2, 3))
    assert sorted(f.path for f in read) == [f"source frame {n}" for n in (1, 2, 3, 4)] and decoded == []
    for frame in read:  # still the received halves: a read-only view of the message, not a copy
        assert frame.half is not None and not frame.half.flags.owndata and not frame.half.flags.writeable
        assert frame.half.tobytes() == src[int(frame.path.split()[-1])].array().tobytes()
    if not write_matte:
        assert bytes(memoryview(out[3][0].buffer)) == buf.tobytes()
    # The same frames held as float32 pixels (decoded first), restored in process and converted back.
    monkeypatch.undo()
    floats = {n: frame_from_raw(r, f"source frame {n}") for n, r in src.items()}
    assert all(f.pixels.dtype == np.float32 and f.half is None for f in floats.values())
    expected = restore_frames(MemorySource(floats), [2, 3], dict(params, colorspace="raw"), CountingRestorer())
    for n, frame in expected:
        want, got = raw_from_frame(frame), out[n][0]
        assert frame.half is None and got.spec == want.spec
        assert bytes(memoryview(got.buffer).cast("B")) == bytes(memoryview(want.buffer).cast("B"))
    assert not np.array_equal(out[2][0].to_float32()[..., :3], src[2].to_float32()[..., :3])  # frame 2 repaired


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, -np.nan])
@pytest.mark.parametrize("y, x", [(4, 9), (H - 1, W - 1)], ids=["first-band", "last-band"])
def test_half_samples_with_inf_or_nan_are_refused_where_they_are(value, y, x, monkeypatch):
    from frdm.engine import frames
    from frdm.engine.errors import InputError
    from frdm.server.pixels import frame_from_raw

    monkeypatch.setattr(frames, "_HALF_BAND", 1000)  # tested in bands, the last one short
    raw = raw_frame(2)
    assert frame_from_raw(raw, "f").half is not None
    bad = raw.array().copy()
    bad[y, x, 3] = value
    with pytest.raises(InputError, match=rf"f: 1 NaN/Inf values \(first at x={x}, y={y}, channel A\)"):
        frame_from_raw(RawImage(raw.spec, bad), "f")
    bad[y, x, 3] = np.float16(-65504)  # the largest half is finite
    assert frame_from_raw(RawImage(raw.spec, bad), "f").half is not None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's end, on purpose
def test_flush_does_not_wait_for_a_writer_that_ends_while_it_waits(tmp_path, monkeypatch):
    """The writer ends (SystemExit: it catches only Exception) on an entry while more wait in its queue:
    those are never marked done, so a flush waiting on the queue waited for ever. It returns, and what the
    writer left is on disk."""
    from frdm.server import storage

    cache = storage.ResultCache(str(tmp_path / "c"), 1 << 30, background=True)
    write = storage.ResultCache._write
    disk = threading.Event()

    def ending(self, path, data):
        if os.path.basename(path).startswith("x"):
            disk.wait(30)  # flush is waiting by now
            raise SystemExit()
        write(self, path, data)

    monkeypatch.setattr(storage.ResultCache, "_write", ending)
    cache.put("x" * 64, b"ends the writer")
    cache.put("a" * 64, b"left waiting")
    cache.put("b" * 64, b"left waiting too")
    flushed = threading.Event()
    threading.Thread(target=lambda: (cache.flush(), flushed.set()), daemon=True).start()
    flushed.wait(0.2)
    assert not flushed.is_set()  # the writer is still busy with the first entry
    disk.set()
    assert flushed.wait(10), "flush waited for a writer that had ended"
    assert not cache._writer.is_alive()
    assert os.path.exists(os.path.join(cache.directory, "a" * 64 + ".frame"))
    assert cache.get("a" * 64) == b"left waiting" and cache.get("b" * 64) == b"left waiting too"


@pytest.mark.parametrize("held", ["half", "float32"])
def test_a_frame_whose_samples_do_not_match_its_channels_is_the_callers_error_not_bad_input(held):
    """A restorer's frame holding 3 samples a pixel under 4 channel names: raw_from_frame says so (a
    ValueError: the job fails as ``internal``). The half path used to build the description and let the
    buffer size check refuse it as the client's ``bad_input``."""
    from frdm.engine.frames import Frame
    from frdm.server.pixels import raw_from_frame

    samples = np.full((2, 3, 3), 0.5, np.float16 if held == "half" else np.float32)
    win = (0, 0, 3, 2)
    frame = Frame(samples, ("R", "G", "B", "A"), ("half",) * 4, win, win)
    with pytest.raises(ValueError, match="3 pixel channels but 4 names and 4 types"):
        raw_from_frame(frame)


def test_a_cache_entry_of_parts_is_written_part_by_part_never_joined(tmp_path):
    """A finished frame's entry is a header and the frame's pixels: written one after another, not joined
    into a fresh frame-sized bytes object first (a copy into new pages, ~20 ms a 2K frame)."""
    import tracemalloc

    from frdm.server.storage import ResultCache

    cache = ResultCache(str(tmp_path / "c"), 1 << 30)  # written in this thread: its allocations are seen
    pixels = np.arange(4 << 20, dtype=np.uint32)  # 16 MB
    tracemalloc.start()
    try:
        cache.put("p" * 64, [b"head", memoryview(pixels).cast("B"), b"tail"], "frame")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated to write a 16 MB part"
    with open(os.path.join(cache.directory, "p" * 64 + ".frame"), "rb") as fh:
        assert fh.read()[: -ResultCache.SEAL.size] == b"head" + pixels.tobytes() + b"tail"  # then its seal
    assert cache.get("p" * 64) == b"head" + pixels.tobytes() + b"tail"


def _entry_source(types: tuple, h: int, w: int, seed: int):
    """A random source frame of ``types`` channels (R, G, B, A as many): its float32 pixels, names, window, and
    the raw frame a cache entry is laid over."""
    from frdm.server.protocol import RawImage

    rng = np.random.default_rng(seed)
    win = (0, 0, w, h)
    names = ("R", "G", "B", "A")[: len(types)]
    pixels = rng.random((h, w, len(types)), dtype=np.float32)
    return pixels, names, win, RawImage.from_float32(pixels, names, types, win, win)


@pytest.mark.parametrize("types", [("half",) * 4, ("half",) * 3, ("half", "half", "half", "float")])
def test_a_changed_frame_s_cache_entry_holds_only_its_changed_pixels_and_reads_back_the_same_bytes(types):
    """A finished frame laid out as its source is stored as its changed pixels over the source's bytes (a 2K
    frame of dust fills was 25 MB on disk per frame): read back it is the very bytes; with another layout
    (a matte channel added) it is stored whole; a torn entry is a miss."""
    from frdm.server.pixels import entry_bytes, entry_image
    from frdm.server.protocol import RawImage

    pixels, names, win, source = _entry_source(types, 60, 80, seed=12)
    changed = pixels.copy()
    changed[10:13, 20:24] = 0.9  # a dust fill
    changed[59, 79, 0] = 0.1  # one sample of the last pixel
    out = RawImage.from_float32(changed, names, types, win, win, {"frdm:engine_version": ("string", "x")})
    data = b"".join(bytes(memoryview(p).cast("B")) for p in entry_bytes(out, source, same_as_source=False))
    assert len(data) < 2000  # 13 pixels and a header, not the frame's
    back = entry_image(data, source)
    assert back is not None and bytes(memoryview(back.buffer).cast("B")) == bytes(memoryview(out.buffer).cast("B"))
    assert back.spec == out.spec
    assert entry_image(data[:-1], source) is None  # torn
    assert entry_image(data, None) is None  # no source to lay the changes over
    wider = RawImage.from_float32(
        np.dstack([changed, changed[..., :1]]), (*names, "frdm.matte"), (*types, "half"), win, win
    )
    whole = b"".join(bytes(memoryview(p).cast("B")) for p in entry_bytes(wider, source, same_as_source=False))
    assert len(whole) > memoryview(wider.buffer).nbytes  # another layout: stored whole
    assert bytes(memoryview(entry_image(whole, source).buffer).cast("B")) == bytes(memoryview(wider.buffer).cast("B"))


@pytest.mark.parametrize("types", [("half",) * 4, ("half",) * 3, ("float",) * 4])
def test_a_frame_changed_everywhere_is_stored_whole_not_as_changes(types):
    """Deflicker changes every pixel: as changes (a 4-byte index beside each pixel's samples) its entry was
    half again to twice the frame (RGBA half: 12 bytes a pixel for 8), and reading it back scattered every
    pixel over a copy of the source. Changes are stored only where they are the smaller; either way the
    entry reads back as the very bytes."""
    from frdm.server.pixels import entry_bytes, entry_image
    from frdm.server.protocol import RawImage

    pixels, names, win, source = _entry_source(types, 30, 40, seed=13)
    out = RawImage.from_float32(pixels * 0.97 + 0.01, names, types, win, win)  # every pixel: a deflicker
    data = b"".join(bytes(memoryview(p).cast("B")) for p in entry_bytes(out, source, same_as_source=False))
    assert len(data) < memoryview(out.buffer).nbytes + 1000  # the frame and a header
    back = entry_image(data, source)
    assert back is not None and bytes(memoryview(back.buffer).cast("B")) == bytes(memoryview(out.buffer).cast("B"))


def test_frames_too_small_for_the_classical_engine_are_a_job_error_and_the_server_goes_on(tmp_path):
    """An 11x11 frame raised a raw cv2.error inside the classical engine (an 'internal' error; a strip 8-15
    px high crashed the process in OpenCV's DIS): it is a bad_input error naming the frame, its size and the
    least the engine needs, and the server serves the next job."""
    from frdm.server.server import Server, ServerConfig

    srv = Server(ServerConfig(bind="tcp://127.0.0.1:*", cache_dir=str(tmp_path / "cache")))  # the classical engine
    ready = threading.Event()
    thread = threading.Thread(target=srv.serve, kwargs={"ready": lambda _: ready.set()}, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        for (h, w), ok in (((11, 11), False), ((16, 16), True)):
            px = np.random.default_rng(3).random((h, w, 3), dtype=np.float32)
            sources = {n: RawImage.from_float32(px, "RGB", ("half",) * 3, (0, 0, w, h), (0, 0, w, h)) for n in (1, 2)}
            with FrdmClient(srv.endpoint, timeout=30) as client:
                events = list(client.restore({"colorspace": "raw"}, [1, 2], sources=sources, reply="raw"))
            if ok:
                assert events[-1].kind == "done" and sum(e.kind == "frame" for e in events) == 2
            else:
                assert events[-1].kind == "error" and events[-1].code == "bad_input", events[-1]
                assert "frame 1: 11x11 pixels is too small for the classical engine" in events[-1].message
                assert "at least 16 pixels on each side" in events[-1].message
    finally:
        srv.request_stop()
        thread.join(30)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20])
def test_which_pixels_changed_is_their_bytes_whatever_a_pixel_s_size(size):
    """The one test of changed pixels (a cache entry's changes on raw samples, ``changed_from_raw`` on float32
    pixels): a pixel changed if any of its bytes did, a sign bit alone included, for every pixel size."""
    from frdm.server.pixels import _changed_pixels

    rng = np.random.default_rng(size)
    a = rng.integers(0, 256, (500, size), dtype=np.uint8)
    b = a.copy()
    rows = rng.choice(500, 40, replace=False)
    b[rows, rng.integers(0, size, 40)] ^= np.uint8(0x80)  # one bit of one byte of each
    np.testing.assert_array_equal(_changed_pixels(a, b), np.sort(rows))
    np.testing.assert_array_equal(_changed_pixels(a, b), np.flatnonzero((a != b).any(axis=1)))
    assert _changed_pixels(a, a.copy()).size == 0


def test_host_exr_codec_reads_uncompressed_blocks_in_any_order():
    """An uncompressed file is read in place when its blocks lie in order; blocks stored in another order
    (the offset table says where) are read one by one, to the same pixels; a block header that lies is an
    error, not other pixels."""
    import struct

    from frdm.server import exrfile

    rng = np.random.default_rng(5)
    h, w = 6, 5
    px = rng.random((h, w, 3)).astype(np.float32)
    ours = RawImage.from_float32(px, ("R", "G", "B"), ("half",) * 3, (0, 0, w, h), (0, 0, w, h))
    data = bytearray(exrfile.encode(ours, "none"))
    table = 8 * h
    start = len(data) - h * (8 + w * 6) - table  # the offset table's position
    offsets = list(struct.unpack_from(f"<{h}Q", data, start))
    step = 8 + w * 6
    blocks = [bytes(data[o : o + step]) for o in offsets]
    # Lines 0 and 1 swapped on disk, the table pointing at each where it now lies.
    swapped = bytearray(data[:start]) + struct.pack(f"<{h}Q", offsets[1], offsets[0], *offsets[2:])
    swapped += blocks[1] + blocks[0] + b"".join(blocks[2:])
    back = exrfile.decode(bytes(swapped))
    assert back is not None
    np.testing.assert_array_equal(
        back.to_float32()[..., [back.spec.channels.index(c) for c in "RGB"]], ours.to_float32()
    )
    lying = bytearray(data)
    struct.pack_into("<i", lying, offsets[2], 4)  # line 2's block claims to be line 4's
    struct.pack_into("<i", lying, offsets[4], 2)
    back = exrfile.decode(bytes(lying))  # read block by block: lines 2 and 4 land where their headers say
    assert back is not None
    got = back.to_float32()[..., [back.spec.channels.index(c) for c in "RGB"]]
    np.testing.assert_array_equal(got[[0, 1, 4, 3, 2, 5]], ours.to_float32())
    struct.pack_into("<i", lying, offsets[3], 99)  # a line outside the data window
    with pytest.raises(ValueError, match="out of range"):
        exrfile.decode(bytes(lying))
