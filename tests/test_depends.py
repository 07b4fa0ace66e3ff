"""What a frame depends on (engine/depends.py): the context window and the frame key, and that the CLI's
resume, the node's manifest and the server's cache all follow it (the stale-frame bugs of issue 12)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from frdm.engine import depends as D
from frdm.engine import params as P
from frdm.engine.frames import Frame, write_frame
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

DIFFUSION = {"engine": "diffusion"}


def key(params: Mapping[str, Any], stage: str = "output", **kw: Any) -> str:
    p = P.validate(params)
    window = kw.pop("window", [1, 2, 3])
    sources = kw.pop("sources", {n: f"src{n}" for n in window})
    return D.frame_key(2, p, stage, window=window, sources=sources, engine_version=kw.pop("v", "e-1"), **kw)


def test_params_hash_changes_only_from_the_stage_a_knob_affects():
    base = P.validate({})
    feather = {**base, "feather": 5.0}
    dust = {**base, "dust_threshold": 0.2}
    steps = {**base, "steps": 50}  # a diffusion knob: irrelevant to the classical engine
    assert D.params_hash(feather, "fill") == D.params_hash(base, "fill")
    assert D.params_hash(feather, "blend") != D.params_hash(base, "blend")
    assert D.params_hash(dust, "detect") != D.params_hash(base, "detect")
    assert D.params_hash(steps, "output") == D.params_hash(base, "output")
    assert D.params_hash(base, "output", "classical-1") != D.params_hash(base, "output", "classical-2")
    assert D.params_hash({**base, "vram_budget_gb": 3.0}, "output") == D.params_hash(base, "output")


def test_diffusion_frames_depend_on_the_classical_detector_of_their_matte():
    """Bug (a): the diffusion engine's auto matte is the classical detector, so its parameters are in the key."""
    base = P.validate(DIFFUSION)
    for stage in ("detect", "fill", "output"):
        assert key({**base, "dust_threshold": 0.9}, stage) != key(base, stage)
        assert key({**base, "scratches": False}, stage) != key(base, stage)
    assert key({**base, "steps": 5}, "fill") != key(base, "fill")
    assert key({**base, "steps": 5}, "detect") == key(base, "detect")
    assert key({**base, "feather": 7.0}, "fill") == key(base, "fill")
    # the classical engine does not read diffusion knobs
    assert key({"steps": 5}) == key({})


def test_key_covers_weights_engine_frame_number_and_every_source_in_the_window():
    base = {}
    assert key(base, weights_id="a") != key(base, weights_id="b")
    assert key(base, v="classical-1") != key(base, v="classical-2")
    assert key(base, sources={1: "x", 2: "src2", 3: "src3"}) != key(base)
    assert key(base, window=[2, 3], sources={2: "src2", 3: "src3"}) != key(base)  # clamped at a sequence end
    p = P.validate({})
    one = D.frame_key(2, p, "output", window=[1, 2, 3], sources={1: "a", 2: "a", 3: "a"}, engine_version="e")
    other = D.frame_key(3, p, "output", window=[2, 3, 4], sources={2: "a", 3: "a", 4: "a"}, engine_version="e")
    assert one != other
    with pytest.raises(ValueError, match="no content id"):
        key(base, sources={2: "x"})


def test_an_artist_mask_counts_from_the_blend_stage_and_only_the_targets_own():
    artist = {"mask": "artist"}
    m1, m2 = {1: "m", 2: "m1", 3: "m"}, {1: "other", 2: "m1", 3: "other"}
    assert key(artist, "output", masks=m1) == key(artist, "output", masks=m2)  # neighbours' masks unused
    assert key(artist, "output", masks=m1) != key(artist, "output", masks={**m1, 2: "m2"})
    assert key(artist, "fill", masks=m1) == key(artist, "fill", masks={**m1, 2: "m2"})  # restore ignores it
    assert key({"mask": "auto"}, "output", masks=m1) == key({"mask": "auto"}, "output", masks={**m1, 2: "m2"})


def test_context_and_windows_per_engine():
    assert D.context(P.validate({"temporal_radius": 3})) == (3, 3)
    assert D.context(P.validate({**DIFFUSION, "window": 8, "window_overlap": 2})) == (7, 7)
    # the matte's detector reaches further than a short window
    assert D.context(P.validate({**DIFFUSION, "window": 2, "window_overlap": 1, "temporal_radius": 4})) == (4, 4)
    p = P.validate({"temporal_radius": 2})
    available = [1, 2, 3, 5, 6, 9]  # gaps are skipped, not counted
    assert D.window(1, p, available) == [1, 2, 3]
    assert D.window(5, p, available) == [2, 3, 5, 6, 9]
    assert D.window(9, p, available) == [5, 6, 9]
    assert D.frames_needed([1, 9], p, available) == [1, 2, 3, 5, 6, 9]
    assert D.frames_needed(10, p) == [8, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="frame 4"):
        D.window(4, p, available)


def test_restorers_take_their_context_and_version_from_here():
    from frdm.engine.classical import ClassicalRestorer

    p = P.validate({"temporal_radius": 3})
    assert ClassicalRestorer().context(p) == D.context(p)
    assert ClassicalRestorer.engine_version == D.ENGINE_VERSIONS["classical"]


def test_weights_id_follows_files(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"1234")
    first = D.weights_id(folder)
    assert D.weights_id(folder) == first and D.weights_id(None) == D.NO_WEIGHTS
    (folder / "a.safetensors").write_bytes(b"12345")
    assert D.weights_id(folder) != first


# --- the CLI's resume ------------------------------------------------------------------------------------


class MatteRestorer:
    """A double that calls itself the diffusion engine: its matte is 'dust_threshold > 0.5'."""

    engine_version = "double-1"

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return D.context(params)

    def restore(self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress) -> Iterator:
        for t in clip.targets:
            image = clip.frames[clip.index(t)] * 0.5
            matte = np.full(image.shape[:2], float(params["dust_threshold"] > 0.5), np.float32)
            yield RestoredFrame(t, image, matte)


def _write_clip(folder, count: int = 5, value: float = 0.4) -> str:
    for n in range(1, count + 1):
        px = np.full((8, 8, 3), value + 0.01 * n, np.float32)
        write_frame(folder / f"c.{n:04d}.exr", Frame(px, ("R", "G", "B"), ("float",) * 3, (0, 0, 8, 8), (0, 0, 8, 8)))
    return str(folder / "c.####.exr")


def test_resume_rerenders_when_a_matte_parameter_or_a_context_frame_changes(tmp_path):
    from frdm.engine.pipeline import restore_sequence

    src = _write_clip(tmp_path)
    out = str(tmp_path / "o.####.exr")
    params = {"engine": "diffusion", "window": 2, "window_overlap": 1, "temporal_radius": 1, "colorspace": "raw"}
    first = restore_sequence(src, out, params=params, restorer=MatteRestorer())
    assert first.written == [1, 2, 3, 4, 5]
    assert restore_sequence(src, out, params=params, restorer=MatteRestorer()).written == []
    # (a) the matte's detector parameter changes the frames: none may be skipped
    again = restore_sequence(src, out, params={**params, "dust_threshold": 0.9}, restorer=MatteRestorer())
    assert again.written == [1, 2, 3, 4, 5]
    # a changed neighbour re-renders the frames whose window reads it (context 1: frames 2, 3, 4)
    px = np.full((8, 8, 3), 0.9, np.float32)
    write_frame(tmp_path / "c.0003.exr", Frame(px, ("R", "G", "B"), ("float",) * 3, (0, 0, 8, 8), (0, 0, 8, 8)))
    third = restore_sequence(src, out, params={**params, "dust_threshold": 0.9}, restorer=MatteRestorer())
    assert third.written == [2, 3, 4]


def test_resume_rerenders_when_the_weights_change(tmp_path):
    from frdm.engine.pipeline import restore_sequence

    src = _write_clip(tmp_path, count=3)
    out = str(tmp_path / "o.####.exr")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "guidance.safetensors").write_bytes(b"one")
    params = {"engine": "diffusion", "window": 2, "window_overlap": 1, "temporal_radius": 1, "colorspace": "raw"}
    kw = {"params": params, "weights": str(weights)}
    assert restore_sequence(src, out, restorer=MatteRestorer(), **kw).written == [1, 2, 3]
    assert restore_sequence(src, out, restorer=MatteRestorer(), **kw).written == []
    (weights / "guidance.safetensors").write_bytes(b"two, longer")
    assert restore_sequence(src, out, restorer=MatteRestorer(), **kw).written == [1, 2, 3]


# --- the node's manifest --------------------------------------------------------------------------------


def test_node_keys_carry_the_servers_weights(monkeypatch):
    """Bug (b): the node's manifest key includes the weights the server runs (asked on every render)."""
    from frdm.plugin import node as N

    node = N.FrdmNode("tcp://127.0.0.1:1", {"engine": "diffusion"})
    answers = iter(
        [{"engine_version": "diffusion-1", "weights_id": "A"}, {"engine_version": "diffusion-1", "weights_id": "B"}]
    )
    monkeypatch.setattr(node, "hello", lambda refresh=False: next(answers))
    fp = {n: N.Fingerprint(f"h{n}", (8, 8)) for n in range(1, 40)}
    available = list(range(1, 40))
    first = N._frame_keys([20], node.params, available, fp, None, node._engine_identity(node.params))
    second = N._frame_keys([20], node.params, available, fp, None, node._engine_identity(node.params))
    assert first != second
    # the classical engine loads no weights: no server contact
    classical = N.FrdmNode("tcp://127.0.0.1:1", {})
    monkeypatch.setattr(classical, "hello", lambda refresh=False: pytest.fail("asked the server"))
    assert classical._engine_identity(classical.params) == (D.ENGINE_VERSIONS["classical"], D.NO_WEIGHTS)


# --- the server's cache ---------------------------------------------------------------------------------


def test_server_cache_misses_on_other_weights_and_on_the_diffusion_matte_parameters(tmp_path):
    from test_server import RAW, ServerProcess, exr_bytes

    from frdm.server.client import FrdmClient

    sources = {n: exr_bytes(0.1 * n, seed=n) for n in range(1, 4)}
    weights = {}
    for name in ("a", "b"):
        weights[name] = tmp_path / name
        weights[name].mkdir()
        (weights[name] / "model.safetensors").write_bytes(name.encode())

    def cached(server: ServerProcess, params: dict) -> list[bool]:
        with FrdmClient(server.address, timeout=10) as client:
            return [e.cached for e in client.restore(params, [2], sources=sources) if e.kind == "frame"]

    cache = tmp_path / "cache"
    diffusion = dict(RAW, engine="diffusion", window=2, window_overlap=1)
    server = ServerProcess(tmp_path, "--weights", str(weights["a"]), cache=cache).wait_ready()
    try:
        assert cached(server, diffusion) == [False]
        assert cached(server, diffusion) == [True]
        assert cached(server, dict(diffusion, dust_threshold=0.9)) == [False]  # (a)
    finally:
        server.stop()
    server = ServerProcess(tmp_path, "--weights", str(weights["b"]), cache=cache).wait_ready()
    try:
        with FrdmClient(server.address, timeout=10) as client:
            assert client.hello()["weights_id"] == D.weights_id(weights["b"])
        assert cached(server, diffusion) == [False]  # (b): other weights, not the old frame
    finally:
        server.stop()


def test_readers_at_is_the_inverse_of_window_at():
    """The frames whose window holds a frame, for gaps in the available frames, edges and lopsided reaches."""
    import random

    rng = random.Random(3)
    for _ in range(200):
        available = sorted(rng.sample(range(-5, 60), rng.randint(1, 30)))
        reach = (rng.randint(0, 4), rng.randint(0, 4))
        for n in available:
            expected = [f for f in available if n in D.window_at(f, reach, available)]
            assert D.readers_at(n, reach, available) == expected, (n, reach, available)
    with pytest.raises(ValueError):
        D.readers_at(7, (1, 1), [1, 2, 3])
