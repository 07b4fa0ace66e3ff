"""The host-agnostic node (plugin/node.py), driven by a headless host (plain Python) against the REAL server
(``python -m frdm.cli serve`` in a subprocess, classical engine, tiny frames), and its bad-input paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_server import ServerProcess, free_port

from frdm.engine.errors import InputError
from frdm.engine.params import SCHEMA
from frdm.plugin import node as N
from frdm.server import protocol

W, H = 64, 48
SHARED = {"colorspace": "linear", "write_matte": True}


def write_clip(folder: Path, count: int = 5, first: int = 1, size: tuple[int, int] = (W, H), seed: int = 0) -> str:
    """A tiny sequence with dust specks (something for the classical detector to find)."""
    from frdm.engine.frames import Frame, write_frame

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.tile(np.linspace(0.2, 0.7, w, dtype=np.float32), (h, 1))
    for k in range(count):
        px = np.empty((h, w, 3), np.float32)
        px[...] = np.roll(base, k, axis=1)[..., None]
        y, x = rng.integers(4, h - 4), rng.integers(4, w - 4)
        px[y - 2 : y + 2, x - 2 : x + 2] = 0.02  # a dark speck on one frame only
        write_frame(
            folder / f"clip.{first + k:04d}.exr", Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, w, h), (0, 0, w, h))
        )
    return str(folder / "clip.####.exr")


def in_process(pattern: str, frames: list[int], params: dict) -> dict[int, np.ndarray]:
    from frdm.engine.frames import decode_image, encode_image, open_source
    from frdm.engine.pipeline import restore_frames
    from frdm.engine.restorer import create_restorer

    out = restore_frames(open_source(pattern), frames, SCHEMA.validate(params), create_restorer("classical"))
    # through an EXR file, as the server sends it (half channels stay half)
    return {f: decode_image(encode_image(frame)).pixels for f, frame in out}


def pixels(path: str) -> np.ndarray:
    from frdm.engine.frames import read_frame

    return read_frame(path).pixels


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("noderoot")


@pytest.fixture(scope="module")
def classical_server(tmp_path_factory, root):
    """The real server with the classical engine; ``root`` is shared storage (path mode)."""
    server = ServerProcess(tmp_path_factory.mktemp("srv"), "--allow-root", str(root), restorer=None)
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A restorer double that takes 0.4 s a frame, for cancelling mid-job (inline only)."""
    server = ServerProcess(tmp_path_factory.mktemp("slow"), restorer="server_restorers:slow", delay=0.4)
    yield server.wait_ready()
    server.stop()


# --- describe / frames needed ----------------------------------------------------------------------------


def test_describe_has_openfx_clips_and_schema_params():
    d = N.describe()
    clips = {c.name: c for c in d.clips}
    assert list(clips) == ["Source", "Mask", "Output"]
    assert clips["Mask"].optional and not clips["Source"].optional and clips["Output"].is_output
    assert {p.name for p in d.params} == {p.name for p in SCHEMA}
    assert d.protocol == protocol.PROTOCOL_VERSION


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_context_matches_the_classical_restorer(radius):
    from frdm.engine.classical import ClassicalRestorer

    params = SCHEMA.validate({"temporal_radius": radius})
    assert N.context_for(params) == ClassicalRestorer().context(params)


def test_context_of_diffusion_is_the_window_reach():
    params = {"engine": "diffusion", "window": 8, "window_overlap": 2}
    assert N.context_for(params) == (7, 7)
    try:
        from frdm.engine.diffusion.windows import context_frames  # type: ignore[import-not-found]
    except ImportError:
        return  # the diffusion engine is another branch; the arithmetic above is its documented rule
    assert N.context_for(params) == context_frames(8, 2)


def test_frames_needed_is_positional_and_clamped():
    params = {"temporal_radius": 2}
    assert N.frames_needed(5, params) == [3, 4, 5, 6, 7]
    available = [1, 2, 3, 5, 6, 9]  # a gap: context is the nearest frames that exist
    assert N.frames_needed(5, params, available) == [2, 3, 5, 6, 9]
    assert N.frames_needed([1], params, available) == [1, 2, 3]
    assert N.frames_needed([9], params, available) == [5, 6, 9]


def test_frame_range_outside_the_input_is_refused_at_once(tmp_path):
    inputs = N.Inputs.from_sequence(write_clip(tmp_path / "in", count=3))
    node = N.FrdmNode("tcp://127.0.0.1:1", timeout=0.2, retries=0)
    with pytest.raises(InputError, match=r"frames 4-5 are outside the Source input \(it has 1-3\)"):
        node.render([2, 3, 4, 5], inputs, str(tmp_path / "out" / "r.####.exr"))
    assert not (tmp_path / "out").exists()


# --- end to end against the real server ------------------------------------------------------------------


def test_headless_render_inline_equals_in_process_restore(tmp_path, classical_server):
    src = write_clip(tmp_path / "in")  # tmp_path is not under the server's root: inline EXR bytes
    node = N.FrdmNode(classical_server.address, SHARED, timeout=30)
    seen: list[tuple[float, float, str]] = []
    out = str(tmp_path / "out" / "restored.####.exr")
    job = node.render([2, 3, 4], N.Inputs.from_sequence(src), out, progress=lambda *a: seen.append(a))
    result = job.wait(120)
    assert job.state == "done" and sorted(result.frames) == [2, 3, 4]
    expected = in_process(src, [2, 3, 4], SHARED)
    for f, path in result.frames.items():
        assert path == out.replace("####", f"{f:04d}")
        np.testing.assert_array_equal(pixels(path), expected[f])
    assert seen[-1][0] == seen[-1][1] == 3  # the last report is "3 of 3"
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(N.STAGING_PREFIX)]

    # Unchanged knobs and inputs: answered from disk without the server.
    node._client = None  # type: ignore[assignment]  # any server contact now fails loudly
    again = node.render([2, 3, 4], N.Inputs.from_sequence(src), out).wait(30)
    assert again.message == "unchanged" and again.cached == [2, 3, 4]


def test_headless_preview_path_mode_on_shared_storage(tmp_path, root, classical_server, monkeypatch):
    shot = root / "shot_a"
    src = write_clip(shot / "in", count=4)
    sent: dict = {}
    real_restore = N.FrdmClient.restore

    def spy(self, params, frames, **kw):
        sent.update(kw)
        return real_restore(self, params, frames, **kw)

    monkeypatch.setattr(N.FrdmClient, "restore", spy)
    node = N.FrdmNode(classical_server.address, SHARED, timeout=30)
    out = str(shot / "out" / "prev.####.exr")
    result = node.preview(3, N.Inputs.from_sequence(src), out).wait(120)
    assert all(isinstance(v, str) for v in sent["sources"].values())  # paths, not bytes
    assert sorted(sent["sources"]) == [1, 2, 3, 4]  # the target and its context (radius 2, clamped)
    assert sent["output_pattern"].startswith(str(shot / "out" / N.STAGING_PREFIX))
    np.testing.assert_array_equal(pixels(result.frames[3]), in_process(src, [3], SHARED)[3])
    assert sorted(os.listdir(shot / "out")) == [N.MANIFEST, "prev.0003.exr"]

    # A changed knob is a new render (the manifest key covers the parameters).
    node.set_params({"feather": 4.0})
    changed = node.preview(3, N.Inputs.from_sequence(src), out).wait(120)
    assert changed.message == "done"


def test_cancel_mid_job_hands_over_nothing(tmp_path, slow_server):
    src = write_clip(tmp_path / "in", count=8)
    node = N.FrdmNode(slow_server.address, {"colorspace": "raw", "mask": "none"}, timeout=10)
    out_dir = tmp_path / "out"
    frames_seen = threading.Event()

    def progress(done, total, message):
        if done >= 1:
            frames_seen.set()

    job = node.render(list(range(1, 9)), N.Inputs.from_sequence(src), str(out_dir / "c.####.exr"), progress=progress)
    assert frames_seen.wait(30), "no frame arrived"
    node.cancel()
    with pytest.raises(N.RenderError) as err:
        job.wait(15)  # a bound, not a measurement: a hang fails here with TimeoutError
    assert err.value.code == "cancelled" and job.state == "cancelled"
    assert os.listdir(out_dir) == []  # frames already received were staged, never handed over


# --- bad input: clear message, no hang, nothing partial ----------------------------------------------------


def _assert_nothing_written(folder: Path) -> None:
    assert not folder.exists() or os.listdir(folder) == []


def test_no_server_running(tmp_path):
    src = write_clip(tmp_path / "in", count=3)
    address = f"tcp://127.0.0.1:{free_port()}"
    node = N.FrdmNode(address, timeout=0.5, retries=1)
    job = node.render([2], N.Inputs.from_sequence(src), str(tmp_path / "out" / "x.####.exr"))
    with pytest.raises(N.RenderError) as err:
        job.wait(20)  # 0.5 s x 2 tries; a hang fails here with TimeoutError
    assert err.value.code == "server_unreachable"
    assert f"no FRDM server answers at {address}" in str(err.value) and "frdm serve" in str(err.value)
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:notaport", "http://localhost:5555", "localhost:5555"])
def test_malformed_address(tmp_path, address):
    node = N.FrdmNode(address, timeout=0.5, retries=0)
    with pytest.raises(N.RenderError) as err:
        node.hello()
    assert err.value.code == "server_unreachable"
    assert address in str(err.value)


def test_server_of_another_protocol_version(tmp_path):
    """A ROUTER that answers every request as the next protocol version."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if sock.poll(100):
                ident, header, *_ = sock.recv_multipart()
                req = protocol.unpack(header)
                other = protocol.PROTOCOL_VERSION + 1
                reply = dict(protocol.make_header("hello", req.get("id", "")), v=other, protocol=other)
                sock.send_multipart([ident, protocol.pack(reply)])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        src = write_clip(tmp_path / "in", count=3)
        node = N.FrdmNode(f"tcp://127.0.0.1:{port}", timeout=2, retries=0)
        job = node.render([2], N.Inputs.from_sequence(src), str(tmp_path / "out" / "x.####.exr"))
        with pytest.raises(N.RenderError) as err:
            job.wait(20)
        assert err.value.code == "protocol_mismatch"
        assert f"protocol {protocol.PROTOCOL_VERSION + 1}" in str(err.value) and "same FRDM version" in str(err.value)
        _assert_nothing_written(tmp_path / "out")
    finally:
        stop.set()
        t.join(5)
        sock.close(linger=0)


def test_mask_of_another_format(tmp_path, classical_server):
    src = write_clip(tmp_path / "in", count=3)
    mask = write_clip(tmp_path / "mask", count=3, size=(32, 24))
    node = N.FrdmNode(classical_server.address, {"mask": "artist"}, timeout=10)
    job = node.render([2], N.Inputs.from_sequence(src, mask), str(tmp_path / "out" / "x.####.exr"))
    with pytest.raises(N.RenderError) as err:
        job.wait(30)
    assert err.value.code == "bad_input"
    # (only the target's own mask is read: a mask selects its own frame's pixels, context frames need none)
    assert "Mask input is 32x24 at frame 2 but the Source is 64x48" in str(err.value)
    _assert_nothing_written(tmp_path / "out")


def test_artist_mask_without_a_mask_input_is_refused(tmp_path):
    src = write_clip(tmp_path / "in", count=3)
    node = N.FrdmNode("tcp://127.0.0.1:1", {"mask": "artist"})
    with pytest.raises(Exception, match="needs the Mask input"):
        node.render([2], N.Inputs.from_sequence(src), str(tmp_path / "out" / "x.####.exr"))


def test_unreadable_input_loads_nothing(tmp_path, classical_server):
    """An input that is not an EXR ends as one clear error before anything is sent."""
    src = write_clip(tmp_path / "in", count=3)
    inputs = N.Inputs.from_sequence(src)
    inputs.source = lambda f: b"not an exr at all"
    node = N.FrdmNode(classical_server.address, timeout=10)
    job = node.render([2], inputs, str(tmp_path / "out" / "x.####.exr"))
    with pytest.raises(N.RenderError) as err:
        job.wait(30)
    assert err.value.code == "bad_input" and "not a readable OpenEXR file" in str(err.value)
    _assert_nothing_written(tmp_path / "out")


# --- the preview loop: a blend-stage change sends no context frames ---------------------------------------


class Recorder:
    """Counts the node's EXR decodes and records what each restore request sends per frame."""

    def __init__(self, monkeypatch):
        from frdm.server import exrfile
        from frdm.server.client import FrdmClient

        self.decoded: list[int] = []
        self.sent: list[dict[int, str]] = []
        decode, restore = exrfile.decode, FrdmClient.restore

        def counting_decode(data):
            self.decoded.append(len(data))
            return decode(data)

        def recording_restore(client, params, frames, *, sources, **kw):
            self.sent.append({f: type(v).__name__ for f, v in sources.items()})
            return restore(client, params, frames, sources=sources, **kw)

        monkeypatch.setattr(exrfile, "decode", counting_decode)
        monkeypatch.setattr(FrdmClient, "restore", recording_restore)

    def reset(self) -> None:
        self.decoded.clear()
        self.sent.clear()


def test_preview_after_a_knob_change_reads_hashes_decodes_and_sends_no_frame(tmp_path, classical_server, monkeypatch):
    src = write_clip(tmp_path / "in", count=5)
    inputs = N.Inputs.from_sequence(src)
    seen = Recorder(monkeypatch)
    reads: list[object] = []

    def counting(real):
        return lambda *a, **k: (reads.append(a[0]), real(*a, **k))[1]

    for name in ("_read_bytes", "fingerprint"):  # the node's file reads: whole frames, and hashing ones
        monkeypatch.setattr(N, name, counting(getattr(N, name)))
    node = N.FrdmNode(classical_server.address, dict(SHARED, temporal_radius=2), timeout=30)
    out = str(tmp_path / "out" / "p.####.exr")
    node.preview(3, inputs, out, use_cache=False).wait(60)
    assert seen.sent == [{n: "RawImage" for n in (1, 2, 3, 4, 5)}] and len(seen.decoded) == 5
    assert len(reads) == 10  # each frame hashed once and read once

    # A blend knob (re-blended from the kept restorer output), then a detection knob (restored again, every
    # frame's pixels from the server's recent sources): the unchanged files are not read, hashed, decoded or
    # sent again, the target's neither.
    for change in ({"feather": 4.0}, {"dust_threshold": 0.2}):
        seen.reset()
        reads.clear()
        node.set_params(change)
        node.preview(3, inputs, out, use_cache=False).wait(60)
        assert seen.sent == [{n: "ContentRef" for n in (1, 2, 3, 4, 5)}], change  # one request, no pixels
        assert seen.decoded == [] and reads == [], change
        expect = in_process(src, [3], dict(node.params))[3]
        np.testing.assert_array_equal(pixels(out.replace("####", "0003")), expect)


def test_inputs_rendered_again_into_fresh_files_are_sent_by_id(tmp_path, classical_server, monkeypatch):
    """The Nuke adapter renders a preview's inputs into a new folder each press: the same bytes in new files
    are hashed again, but not decoded or sent again."""
    import shutil

    src = write_clip(tmp_path / "in", count=3)
    seen = Recorder(monkeypatch)
    node = N.FrdmNode(classical_server.address, dict(SHARED, temporal_radius=1), timeout=30)
    out = str(tmp_path / "out" / "p.####.exr")
    node.preview(2, N.Inputs.from_sequence(src), out, use_cache=False).wait(60)
    press = tmp_path / "press2"
    shutil.copytree(tmp_path / "in", press)  # the host's second render of the inputs: new files, same bytes
    seen.reset()
    node.set_params({"dust_threshold": 0.2})
    node.preview(2, N.Inputs.from_sequence(str(press / Path(src).name)), out, use_cache=False).wait(60)
    assert seen.sent == [{n: "ContentRef" for n in (1, 2, 3)}] and seen.decoded == []
    np.testing.assert_array_equal(pixels(out.replace("####", "0002")), in_process(src, [2], dict(node.params))[2])


def test_preview_by_id_falls_back_when_the_server_was_restarted(tmp_path, monkeypatch):
    src = write_clip(tmp_path / "in", count=4, seed=3)
    inputs = N.Inputs.from_sequence(src)
    seen = Recorder(monkeypatch)
    first = ServerProcess(tmp_path / "a", restorer=None).wait_ready()
    try:
        node = N.FrdmNode(first.address, dict(SHARED, temporal_radius=1), timeout=30)
        out = str(tmp_path / "out" / "p.####.exr")
        node.preview(2, inputs, out, use_cache=False).wait(60)
    finally:
        first.stop()
    # A new server at the same address, with an empty cache and nothing in memory.
    second = ServerProcess(tmp_path / "b", restorer=None, bind=first.bind).wait_ready()
    try:
        seen.reset()
        node.set_params({"feather": 3.0})
        result = node.preview(2, inputs, out, use_cache=False).wait(60)
    finally:
        second.stop()
    assert seen.sent == [{n: "ContentRef" for n in (1, 2, 3)}, {n: "RawImage" for n in (1, 2, 3)}]
    assert result.frames == {2: out.replace("####", "0002")}
    np.testing.assert_array_equal(pixels(result.frames[2]), in_process(src, [2], dict(node.params))[2])


def test_input_ids_follow_the_file_not_the_path(tmp_path):
    from frdm.engine import atomic

    ids = N.InputIds()
    path = str(tmp_path / "f.exr")
    src = write_clip(tmp_path / "clip", count=2)
    one, two = (Path(src.replace("####", f"{n:04d}")).read_bytes() for n in (1, 2))
    atomic.write_bytes(path, one)
    first = ids.fingerprint(path, "frame")
    assert ids.fingerprint(path, "frame") is first  # unchanged: not read again
    ids.learn_wire(path, N._inline(one), first)
    assert ids.wire(path) is not None
    atomic.write_bytes(path, two)  # the host renders the input again (a new file renamed over)
    assert ids.wire(path) is None
    assert ids.fingerprint(path, "frame").digest != first.digest


def test_same_compression_keeps_a_piz_input_piz_inline(tmp_path, classical_server):
    from frdm.engine.frames import read_frame, write_frame

    src = write_clip(tmp_path / "zip", count=3)
    piz = str(tmp_path / "piz" / "clip.####.exr")
    for n in (1, 2, 3):  # the same plates, PIZ-compressed (which the host's own EXR codec does not read)
        write_frame(piz.replace("####", f"{n:04d}"), read_frame(src.replace("####", f"{n:04d}")), compression="piz")
    node = N.FrdmNode(classical_server.address, dict(SHARED, compression="same"), timeout=30)
    out = str(tmp_path / "out" / "r.####.exr")
    result = node.render([2], N.Inputs.from_sequence(piz), out, path_mode=False).wait(60)
    written = read_frame(result.frames[2])
    assert written.compression == "piz"
    np.testing.assert_array_equal(written.pixels, in_process(piz, [2], dict(node.params))[2])


def test_preview_of_a_clip_sent_as_exr_bytes(tmp_path, classical_server, monkeypatch):
    from frdm.engine.frames import read_frame, write_frame

    src = write_clip(tmp_path / "zip", count=3)
    piz = str(tmp_path / "piz" / "clip.####.exr")
    for n in (1, 2, 3):  # PIZ: the host's codec does not read it, so the frames travel as EXR bytes
        write_frame(piz.replace("####", f"{n:04d}"), read_frame(src.replace("####", f"{n:04d}")), compression="piz")
    inputs = N.Inputs.from_sequence(piz)
    seen = Recorder(monkeypatch)
    node = N.FrdmNode(classical_server.address, dict(SHARED, temporal_radius=1), timeout=30)
    out = str(tmp_path / "out" / "p.####.exr")
    node.preview(2, inputs, out, use_cache=False).wait(60)
    by_id = {1: "ContentRef", 2: "bytes", 3: "ContentRef"}
    for change, sent in (
        ({"feather": 4.0}, [by_id]),  # the kept restorer output is re-blended: no context read
        # The recent sources keep raw pixels only: a detection change asks for EXR bytes' context, once.
        ({"dust_threshold": 0.2}, [by_id, {n: "bytes" for n in (1, 2, 3)}]),
    ):
        seen.reset()
        node.set_params(change)
        node.preview(2, inputs, out, use_cache=False).wait(60)
        assert seen.sent == sent, change
        np.testing.assert_array_equal(pixels(out.replace("####", "0002")), in_process(piz, [2], dict(node.params))[2])


def test_a_need_sources_retry_lists_the_cached_frames_of_its_own_try_only(tmp_path, classical_server, monkeypatch):
    from frdm.server.client import Event, FrdmClient

    src = write_clip(tmp_path / "in", count=4, seed=5)
    inputs = N.Inputs.from_sequence(src)
    node = N.FrdmNode(classical_server.address, dict(SHARED, temporal_radius=1), timeout=30)
    out = str(tmp_path / "out" / "p.####.exr")
    node.render([2, 3], inputs, out, use_cache=False).wait(60)  # the server now holds both; 1 and 4 were sent
    restore, tries = FrdmClient.restore, []

    def backstop_after_one_frame(client, params, frames, *, sources, **kw):
        # The first try (context by id) gets frame 2, then need_sources, as when the server finds a frame by
        # id gone mid-job: frames of earlier chunks are delivered already.
        tries.append({f: type(v).__name__ for f, v in sources.items()})
        events = restore(client, params, frames, sources=sources, **kw)
        if len(tries) > 1:
            yield from events
            return
        for event in events:
            yield event
            if event.kind == "frame":
                events.close()
                yield Event("error", event.job_id, code="need_sources", message="gone", frames=[4])
                return

    monkeypatch.setattr(FrdmClient, "restore", backstop_after_one_frame)
    result = node.render([2, 3], inputs, out, use_cache=False).wait(60)
    assert [t[1] for t in tries] == ["ContentRef", "RawImage"]  # by id, then everything with its pixels
    assert result.cached == [2, 3]  # the retry's answers, each frame once (it listed 2 twice)
    np.testing.assert_array_equal(pixels(result.frames[3]), in_process(src, [3], dict(node.params))[3])


def test_a_result_that_differs_from_its_record_is_rendered_again(tmp_path, classical_server):
    """Results are not synced to disk: a power cut may leave one empty. The manifest records each result's
    size and time, so such a file is rendered again, never answered from disk as unchanged."""
    src = write_clip(tmp_path / "in", count=3)
    node = N.FrdmNode(classical_server.address, SHARED, timeout=30)
    out = str(tmp_path / "out" / "r.####.exr")
    node.render([2], N.Inputs.from_sequence(src), out).wait(60)
    assert node.render([2], N.Inputs.from_sequence(src), out).wait(30).message == "unchanged"
    path = out.replace("####", "0002")
    open(path, "wb").close()  # what a power cut may leave of a file written but not synced
    again = node.render([2], N.Inputs.from_sequence(src), out).wait(60)
    assert again.message == "done"
    np.testing.assert_array_equal(pixels(path), in_process(src, [2], SHARED)[2])
