"""File-to-file I/O beside the restorer: reader and writer threads, the sliding model-space window, the
half-float colour table and the sparse blend all give the serial path's bits, in its order; errors name the
frame and leave nothing half-written."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from frdm.engine import params as P
from frdm.engine import pipeline
from frdm.engine.blend import blend
from frdm.engine.color import _CURVES_TO_MODEL, from_model, representable, to_model
from frdm.engine.errors import InputError
from frdm.engine.fill import FillResult, feather_in_box, finish_frame
from frdm.engine.frames import Frame, MemorySource, read_frame, write_frame
from frdm.engine.overlap import ReadAhead, WriteBehind
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

H, W = 24, 32


class SpeckRestorer:
    """Context 2 either side; 'restores' two specks per frame (one each in opposite corners, so the changed
    region's box is the whole frame) from the mean of its neighbours; checks that every clip it is given holds
    exactly the model-space view of the source frames (the sliding window moves frames in place)."""

    engine_version = "test-speck-1"

    def __init__(self, expected: dict[int, np.ndarray] | None = None):
        self.expected = expected
        self.clips: list[list[int]] = []

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return 2, 2

    def restore(self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress) -> Iterator:
        self.clips.append(list(clip.frame_numbers))
        if self.expected is not None:
            for i, n in enumerate(clip.frame_numbers):
                assert np.array_equal(clip.frames[i], self.expected[n]), f"clip frame {n} is not its source's view"
        for t in clip.targets:
            i = clip.index(t)
            image = clip.frames[i].copy()
            near = clip.frames[max(0, i - 1) : i + 2].mean(axis=0)
            matte = np.zeros((H, W), np.float32)
            for y, x in ((2 + t % 3, 3), (H - 4, W - 5 - t % 4)):
                image[y : y + 2, x : x + 2] = near[y : y + 2, x : x + 2] * 0.5
                matte[y : y + 2, x : x + 2] = 1.0
            yield RestoredFrame(t, image, matte)


def _clip(count: int, seed: int = 0) -> dict[int, Frame]:
    rng = np.random.default_rng(seed)
    frames = {}
    for n in range(1, count + 1):
        # Scene-linear half values, some above 1 (the model cannot hold them: they come from the original).
        px = (rng.random((H, W, 4), dtype=np.float32) * 1.4).astype(np.float16).astype(np.float32)
        frames[n] = Frame(px, ("R", "G", "B", "A"), ("half",) * 4, (0, 0, W, H), (0, 0, W, H), {}, 0, f"f{n}")
    return frames


def _write_clip(folder, frames: dict[int, Frame]) -> str:
    for n, f in frames.items():
        write_frame(folder / f"s.{n:04d}.exr", f)
    return str(folder / "s.####.exr")


def test_threads_and_window_give_the_serial_paths_frames_in_order():
    frames = _clip(19)
    params = P.validate({"colorspace": "linear"})
    expected = {n: np.clip(to_model(f.pixels[..., :3], "linear"), 0.0, 1.0) for n, f in frames.items()}
    targets = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 19]  # three blocks of 8 and a gap
    runs = {}
    for ahead in (0, 1, 3):
        restorer = SpeckRestorer(expected)
        out = list(pipeline.restore_frames(MemorySource(frames), targets, params, restorer, read_ahead=ahead))
        assert [n for n, _ in out] == targets
        runs[ahead] = out
    for ahead in (1, 3):
        for (n, a), (_, b) in zip(runs[0], runs[ahead]):
            assert np.array_equal(a.pixels.view(np.uint32), b.pixels.view(np.uint32)), f"frame {n} differs"
    assert not any(t.name == "frdm-read-ahead" for t in threading.enumerate())


def test_a_fill_cache_hit_block_then_a_miss_block_still_gives_the_same_frames():
    """Frames cached at the fill stage skip the restorer; the window must still hold their model-space views
    as context for the next block's misses."""
    frames = _clip(20, seed=1)
    params = P.validate({"colorspace": "linear"})
    expected = {n: np.clip(to_model(f.pixels[..., :3], "linear"), 0.0, 1.0) for n, f in frames.items()}
    targets = list(range(1, 21))
    plain = dict(pipeline.restore_frames(MemorySource(frames), targets, params, SpeckRestorer(expected)))

    class Store:
        def __init__(self) -> None:
            self.items: dict[int, FillResult] = {}

        def get(self, n: int) -> FillResult | None:
            return self.items.get(n)

        def put(self, n: int, result: FillResult) -> None:
            self.items[n] = result

    store = Store()
    list(pipeline.restore_frames(MemorySource(frames), targets, params, SpeckRestorer(), fill_cache=store))
    for n in list(store.items):
        if n > 8 and n not in (12, 17):
            del store.items[n]  # block 1 all hits, blocks 2 and 3 mostly misses
    restorer = SpeckRestorer(expected)
    again = dict(pipeline.restore_frames(MemorySource(frames), targets, params, restorer, fill_cache=store))
    assert restorer.clips[0][0] == 7, "the first miss block's clip starts at its first miss's context"
    for n in targets:
        assert np.array_equal(plain[n].pixels, again[n].pixels), f"frame {n} differs with the fill cache"


def test_targets_whose_fill_is_kept_read_no_context_frames():
    """A blend-stage change (the stage cache hits) reads and converts only the targets: the server may hold
    the context frames by content id only, and reading them would cost what the cache is there to save."""
    frames = _clip(12, seed=2)
    params = P.validate({"colorspace": "linear"})
    store: dict[int, FillResult] = {}

    class Store:
        def get(self, n: int) -> FillResult | None:
            return store.get(n)

        def put(self, n: int, result: FillResult) -> None:
            store[n] = result

    targets = [5, 6, 9]
    first = dict(pipeline.restore_frames(MemorySource(frames), targets, params, SpeckRestorer(), fill_cache=Store()))

    class Counting(MemorySource):
        def __init__(self, frames: dict[int, Frame]) -> None:
            super().__init__(frames)
            self.reads: list[int] = []

        def read(self, frame: int) -> Frame:
            self.reads.append(frame)
            return super().read(frame)

    for ahead in (0, 1):
        source = Counting(frames)
        feathered = P.SCHEMA.update(params, {"feather": 5.0})
        again = dict(
            pipeline.restore_frames(source, targets, feathered, SpeckRestorer(), fill_cache=Store(), read_ahead=ahead)
        )
        assert sorted(source.reads) == targets, f"read {source.reads} for cached targets {targets}"
        assert set(again) == set(first)
    # One kept, one not: the miss reads its window, the hit nothing more.
    del store[9]
    source = Counting(frames)
    list(pipeline.restore_frames(source, targets, params, SpeckRestorer(), fill_cache=Store()))
    assert sorted(source.reads) == [5, 6, 7, 8, 9, 10, 11], source.reads


def test_restore_sequence_threads_write_the_serial_bits(tmp_path, monkeypatch):
    src = _write_clip(tmp_path, _clip(11, seed=2))
    outputs = {}
    for threads in (0, 1):
        monkeypatch.setattr(pipeline, "READ_AHEAD", threads)
        monkeypatch.setattr(pipeline, "WRITE_BEHIND", threads)
        out = str(tmp_path / f"o{threads}" / "r.####.exr")
        report = pipeline.restore_sequence(src, out, params={"colorspace": "linear"}, restorer=SpeckRestorer())
        assert report.written == list(range(1, 12))
        outputs[threads] = [read_frame(report.outputs[n]).pixels for n in report.written]
    for n, (a, b) in enumerate(zip(outputs[0], outputs[1]), start=1):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"frame {n} differs with threads"


def test_a_failed_write_names_the_frame_stops_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from frdm.engine import frames as F

    src = _write_clip(tmp_path, _clip(10, seed=3))
    real = F._write_image

    def failing(oiio: Any, path: str, spec: Any, pixels: np.ndarray) -> None:
        if path.endswith("r.0004.exr"):
            from frdm.engine.atomic import atomic_path

            with atomic_path(path) as tmp:  # half a file, then the disk is full
                with open(tmp, "wb") as fh:
                    fh.write(b"\x76\x2f\x31\x01 half")
                raise OSError(28, "No space left on device")
        real(oiio, path, spec, pixels)

    monkeypatch.setattr(F, "_write_image", failing)
    monkeypatch.setattr(pipeline, "WRITE_BEHIND", 1)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"frame 4: .*r\.0004\.exr: cannot write here \(No space left on device\)"):
        pipeline.restore_sequence(
            src, str(out / "r.####.exr"), params={"colorspace": "linear"}, restorer=SpeckRestorer()
        )
    names = sorted(os.listdir(out))
    assert names == ["r.0001.exr", "r.0002.exr", "r.0003.exr"], names  # nothing after the failure, no partial
    assert not any(t.name.startswith("frdm-") for t in threading.enumerate())


def test_a_bad_source_frame_is_named_from_the_reader_thread(tmp_path, monkeypatch):
    src = _write_clip(tmp_path, _clip(10, seed=4))
    (tmp_path / "s.0006.exr").write_bytes(b"not an exr")
    monkeypatch.setattr(pipeline, "READ_AHEAD", 2)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"frame 6 of .*s\.####\.exr: .*s\.0006\.exr: not a readable image"):
        pipeline.restore_sequence(
            src, str(out / "r.####.exr"), params={"colorspace": "linear"}, restorer=SpeckRestorer()
        )
    assert not [n for n in os.listdir(out) if n.startswith(".frdm-partial")]
    assert not any(t.name.startswith("frdm-") for t in threading.enumerate())


def test_read_ahead_keeps_order_and_stops_when_closed():
    read = []
    with ReadAhead(lambda n: read.append(n) or n * 10, [3, 4, 7, 9, *range(12, 100)], depth=2) as reader:
        assert reader.take(3) == 30 and reader.take(4) == 40
        with pytest.raises(RuntimeError, match="frame 9 taken where frame 7 was due"):
            reader.take(9)
    # Closed after two takes: at most the two taken, the two queued and one in progress were read.
    assert read == sorted(read) and len(read) <= 5, read
    assert not any(t.name == "frdm-read-ahead" for t in threading.enumerate())
    written = []
    with WriteBehind(lambda n, item: written.append((n, item)), depth=1) as writer:
        for n in range(6):
            writer.submit(n, str(n))
    assert written == [(n, str(n)) for n in range(6)]


@pytest.mark.parametrize("space", ["linear", "cineon"])
def test_the_half_table_gives_the_formulas_bits(space):
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[~np.isnan(halves)]  # Inf is a half exactly, so it is looked up too
    halves = halves[: halves.size // 3 * 3].reshape(-1, 3)  # every half but NaN and the last few
    table = to_model(halves, space)
    with np.errstate(all="ignore"):
        formula = _CURVES_TO_MODEL[space](halves)
    assert np.array_equal(table.view(np.uint32), formula.view(np.uint32))
    # Not halves (float data): the formula itself.
    floats = np.random.default_rng(5).random((64, 64, 3), dtype=np.float32)
    assert np.array_equal(to_model(floats, space).view(np.uint32), _CURVES_TO_MODEL[space](floats).view(np.uint32))


def test_the_sparse_blend_gives_the_whole_frame_formulas_bits():
    frames = _clip(5, seed=6)
    params = P.validate({"colorspace": "linear"})
    model = np.stack([np.clip(to_model(frames[n].pixels[..., :3], "linear"), 0, 1) for n in range(1, 6)])
    restored = next(iter(SpeckRestorer().restore(Clip(model, [1, 2, 3, 4, 5], [3]), params)))
    fill = FillResult.from_restored(restored, model[2])
    y0, y1, x0, x1 = fill.box
    assert (y1 - y0) * (x1 - x0) > 0.5 * H * W, "changes in opposite corners: the box is most of the frame"
    original = frames[3]
    out = finish_frame(original, fill, params, "linear", None, 3, pipeline.MATTE_CHANNEL)
    # The whole-frame formula: out = original + m * (restored - original) with m the feathered matte, only
    # where the restorer changed a pixel and the model can hold the original.
    box, mask = feather_in_box(fill.matte_box, fill.matte, fill.shape, params["feather"], params["matte_grow"])
    m = np.zeros((H, W), np.float32)
    m[box[0] : box[1], box[2] : box[3]] = mask
    rgb = original.pixels[..., :3]
    changed = np.zeros((H, W), bool)
    changed[y0:y1, x0:x1] = fill.changed
    m = m * representable(to_model(rgb, "linear")) * changed
    expected = original.pixels.copy()
    expected[..., :3] = blend(rgb, from_model(restored.image, "linear"), m)
    assert np.array_equal(out.pixels[..., :4].view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(out.pixels[..., 4], restored.matte)
    assert 0 < (out.pixels[..., :3] != rgb).any(axis=-1).mean() < 0.2


def test_large_frames_restore_in_shorter_blocks_with_the_same_result(monkeypatch):
    frames = _clip(14, seed=7)
    params = P.validate({"colorspace": "linear"})
    targets = list(range(1, 15))
    plain = SpeckRestorer()
    whole = dict(pipeline.restore_frames(MemorySource(frames), targets, params, plain))
    # As if these frames were 2K: the window budget holds 8 frames, so 4 targets and 4 context frames.
    monkeypatch.setattr(pipeline, "WINDOW_BYTES", 8 * H * W * 3 * 4)
    short = SpeckRestorer()
    shorter = dict(pipeline.restore_frames(MemorySource(frames), targets, params, short, read_ahead=1))
    assert len(plain.clips) == 2 and len(short.clips) == 4
    assert max(len(c) for c in short.clips) == 8
    for n in targets:
        assert np.array_equal(whole[n].pixels, shorter[n].pixels), f"frame {n} differs with shorter blocks"


def test_targets_with_gaps_fit_the_window_and_give_the_same_frames():
    """A resumed run or a frame list has gaps between its targets: a block of 8 targets may span far more than
    8 source frames, and its reach must still fit the window (it overflowed it: IndexError)."""
    frames = _clip(40, seed=8)
    params = P.validate({"colorspace": "linear"})
    targets = [1, 2, 3, 4, 20, 30, 31, 39]
    restorer = SpeckRestorer()
    gapped = dict(pipeline.restore_frames(MemorySource(frames), targets, params, restorer, read_ahead=1))
    assert sorted(gapped) == targets
    assert max(len(c) for c in restorer.clips) <= pipeline.BLOCK_FRAMES + 4
    for n in targets:
        alone = dict(pipeline.restore_frames(MemorySource(frames), [n], params, SpeckRestorer()))
        assert np.array_equal(alone[n].pixels, gapped[n].pixels), f"frame {n} differs"


def test_a_thread_error_keeps_its_type_and_gets_the_frame_without_add_note():
    """The engine runs on Python 3.10, where exceptions have no ``add_note``: naming the frame must not
    replace the reader's error with an AttributeError."""

    class NoAddNote(RuntimeError):  # an exception as Python 3.10 makes it
        def __getattribute__(self, name: str) -> Any:
            if name == "add_note":
                raise AttributeError(name)
            return super().__getattribute__(name)

    def read(n: int) -> int:
        if n == 3:
            raise NoAddNote("decoder crashed")
        return n

    with ReadAhead(read, [1, 2, 3], depth=1, description="clip") as reader:
        assert reader.take(1) == 1 and reader.take(2) == 2
        with pytest.raises(NoAddNote, match="decoder crashed") as caught:
            reader.take(3)
    assert caught.value.__notes__ == ["frame 3 of clip"]


def test_an_input_error_from_a_thread_keeps_its_type_and_code():
    from frdm.engine.errors import ParamError

    def write(n: int, item: Any) -> None:
        raise ParamError(f"parameter 'colorspace' of frame {n}: unknown")

    writer = WriteBehind(write, depth=1)
    writer.submit(7, None)
    with pytest.raises(ParamError, match=r"frame 7: parameter 'colorspace'") as caught:
        writer.close()
    assert caught.value.code == "bad_param"


@pytest.mark.parametrize("mask", ["auto", "none"])
def test_a_frame_of_halves_blends_into_the_halves_the_float_path_writes(tmp_path, mask):
    """An original held as the file's halves, blended with ``halves_out``, gives half samples bit for bit what
    the float32 path gives once written as half (the writer rounds the same way), and the unchanged pixels are
    the original's own halves; without ``halves_out`` (e.g. a PNG is written) the output stays float32."""
    frames = _clip(5, seed=9)
    params = P.validate({"colorspace": "linear", "mask": mask, "write_matte": True})
    model = np.stack([np.clip(to_model(frames[n].pixels[..., :3], "linear"), 0, 1) for n in range(1, 6)])
    restored = next(iter(SpeckRestorer().restore(Clip(model, [1, 2, 3, 4, 5], [3]), params)))
    fill = FillResult.from_restored(restored, model[2])
    as_float = finish_frame(frames[3], fill, params, "linear", None, 3, pipeline.MATTE_CHANNEL)
    write_frame(tmp_path / "float.exr", as_float)
    halves = frames[3].with_pixels(frames[3].pixels.astype(np.float16))
    out = finish_frame(halves, fill, params, "linear", None, 3, pipeline.MATTE_CHANNEL, halves_out=True)
    assert out.half is not None and out.formats == ("half",) * 5
    written = read_frame(tmp_path / "float.exr").half
    assert np.array_equal(out.half.view(np.uint16), written.view(np.uint16))
    unchanged = (as_float.pixels[..., :4] == frames[3].pixels).all(axis=-1)
    assert 0 < (~unchanged).mean() < 0.2
    assert np.array_equal(out.half[..., :4][unchanged].view(np.uint16), halves.half[unchanged].view(np.uint16))
    kept_float = finish_frame(halves, fill, params, "linear", None, 3, pipeline.MATTE_CHANNEL)
    assert kept_float.half is None
    assert np.array_equal(kept_float.pixels.view(np.uint32), as_float.pixels.view(np.uint32))


def test_float32_to_half_rounds_as_the_exr_writer_does(tmp_path):
    """``halves_out`` rounds blended values with numpy; the file path used to let OpenImageIO round them.
    Every half, the midpoints between neighbours (ties), one float32 step either side of them, overflow and
    subnormals: the same halves either way."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    every = every[np.isfinite(every)].astype(np.float32)
    every = np.sort(every)
    mid = ((every[:-1].astype(np.float64) + every[1:]) / 2).astype(np.float32)
    values = np.concatenate(
        [every, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))]
        + [np.float32([65519.99, 65520.0, 1e6, -1e6, 1e-9, -1e-9])]
    )
    values = np.concatenate([values, np.zeros(-values.size % 1024, np.float32)]).reshape(-1, 1024, 1)
    write_frame(
        tmp_path / "r.exr",
        Frame(values, ("Y",), ("half",), (0, 0, 1024, values.shape[0]), (0, 0, 1024, values.shape[0])),
    )
    with np.errstate(over="ignore"):
        ours = values.astype(np.float16)
    assert np.array_equal(read_frame(tmp_path / "r.exr", check_finite=False).half.view(np.uint16), ours.view(np.uint16))


def test_the_next_run_reuses_a_window_array_nothing_holds_and_never_one_still_viewed():
    import weakref

    from frdm.engine.frames import Frame, MemorySource
    from frdm.engine.restorer import RestoredFrame

    class Recording:
        """Pass-through that notes (weakly) the window array its clip views; ``keep`` holds a view strongly
        (a restorer abandoned midway whose worker still reads the frames)."""

        engine_version = "test-window-1"

        def __init__(self, keep: bool = False):
            self.arrays: list[Any] = []
            self.kept: list[np.ndarray] = []
            self.keep = keep

        def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
            return (1, 1)

        def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[RestoredFrame]:
            self.arrays.append(weakref.ref(clip.frames.base))
            if self.keep:
                self.kept.append(clip.frames[0])
            for n in clip.targets:
                image = clip.frames[clip.index(n)]
                yield RestoredFrame(n, image, np.zeros(image.shape[:2], np.float32))

    rng = np.random.default_rng(3)
    frames = {
        n: Frame(
            rng.random((20, 24, 4), dtype=np.float32), tuple("RGBA"), ("float",) * 4, (0, 0, 24, 20), (0, 0, 24, 20)
        )
        for n in range(1, 5)
    }
    other = {n: f.with_pixels(f.pixels[::-1].copy()) for n, f in frames.items()}
    params = {"mask": "none", "colorspace": "raw", "write_matte": False}

    def run(restorer: Recording, source: dict[int, Frame]) -> list[bytes]:
        return [
            f.pixels.tobytes() for _, f in pipeline.restore_frames(MemorySource(source), [1, 2, 3, 4], params, restorer)
        ]

    first, second, viewing, third = Recording(), Recording(), Recording(keep=True), Recording()
    assert run(first, frames) == [f.pixels.tobytes() for f in frames.values()]
    assert first.arrays[0]() is not None  # kept after the run, as the spare
    assert run(second, other) == [f.pixels.tobytes() for f in other.values()]
    assert second.arrays[0]() is first.arrays[0]()  # and the second run's
    run(viewing, frames)
    seen = viewing.kept[0].copy()
    assert run(third, other) == [f.pixels.tobytes() for f in other.values()]
    assert None is not third.arrays[0]() is not viewing.arrays[0]()  # a view of it is held: a fresh array
    assert np.array_equal(viewing.kept[0], seen)  # and what that view shows was not overwritten


def test_a_restored_view_of_the_input_pixels_is_unchanged_without_a_compare(monkeypatch):
    from frdm.engine import fill
    from frdm.engine.fill import FillResult
    from frdm.engine.restorer import RestoredFrame

    window = np.random.default_rng(4).random((3, 16, 20, 3), dtype=np.float32)
    matte = np.zeros((16, 20), np.float32)
    compared = []
    real_compare = fill._changed_pixels
    monkeypatch.setattr(fill, "_changed_pixels", lambda a, b: compared.append(1) or real_compare(a, b))
    same = FillResult.from_restored(RestoredFrame(1, window[1], matte), window[1])  # two views, one memory
    assert same.box is None and compared == []
    flipped = window[1][::-1]  # the same memory laid out otherwise: compared, and found changed
    moved = FillResult.from_restored(RestoredFrame(1, flipped, matte), window[1])
    assert compared == [1] and moved.box == (0, 16, 0, 20)
    copy = FillResult.from_restored(RestoredFrame(1, window[1].copy(), matte), window[1])  # equal values
    assert compared == [1, 1] and copy.box is None


def test_a_window_finalised_while_another_gives_its_array_back_does_not_deadlock():
    """A window's finalizer can run inside another's (the cycle collector runs finalizers wherever an
    allocation triggers it; here the spare let go under the lock does): one thread then takes the spare's lock
    twice, which must not hang. In a child process: a hung one would hold the lock for the rest of the run."""
    import subprocess
    import sys

    code = """if True:
        import numpy as np
        from frdm.engine.pipeline import _Window

        class LastHold(np.ndarray):
            def __del__(self):
                others.clear()  # the last reference to another window goes while the spare is replaced

        others = [_Window(1)]
        others[0].frames = np.zeros((1, 2, 2, 3), np.float32)
        _Window._spare[:] = [np.zeros((1, 2, 2, 3), np.float32).view(LastHold)]
        window = _Window(1)
        window.frames = np.ones((1, 2, 2, 3), np.float32)
        del window
        assert len(_Window._spare) == 1 and _Window._spare[0].shape == (1, 2, 2, 3)
        print("given back")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "given back" in done.stdout, done.stderr


def test_a_restorer_that_reads_no_pixels_converts_none_and_one_that_reads_gets_them_converted(monkeypatch):
    """The window converts a target into model space when a clip holding it is first read (``Clip.frames``):
    a restorer that leaves its targets as they came without reading them (``RestoredFrame.unchanged``)
    converts none of them (only the context frames, converted as taken so the window alone holds them) and
    gets the originals' arrays back; a reading one sees every frame converted, each once, and the same
    results as before."""
    converted: list[int] = []
    real = pipeline._model_rgb

    def counting(frame: Frame, space: str, params: Mapping[str, Any], out: np.ndarray) -> None:
        converted.append(id(frame))
        real(frame, space, params, out)

    monkeypatch.setattr(pipeline, "_model_rgb", counting)

    class Untouched:
        engine_version = "test-untouched-1"

        def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
            return (1, 1)

        def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[RestoredFrame]:
            for n in clip.targets:
                yield RestoredFrame.unchanged(n)

    class Reading(Untouched):
        def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[RestoredFrame]:
            for n in clip.targets:
                image = clip.frames[clip.index(n)]
                yield RestoredFrame(n, 1.0 - image, np.zeros(clip.shape, np.float32))

    rng = np.random.default_rng(5)
    win = (0, 0, 24, 20)
    pixels = {n: rng.random((20, 24, 4), dtype=np.float32) for n in range(1, 7)}
    frames = {n: Frame(px, tuple("RGBA"), ("float",) * 4, win, win) for n, px in pixels.items()}
    params = {"mask": "none", "colorspace": "raw", "write_matte": False}
    source = MemorySource(frames)
    out = dict(pipeline.restore_frames(source, [2, 3, 4, 5], params, Untouched()))
    assert sorted(converted) == sorted(id(frames[n]) for n in (1, 6))  # the context frames only
    converted.clear()
    assert all(out[n].pixels is frames[n].pixels for n in out)  # the originals' arrays, as an unchanged frame's
    out = dict(pipeline.restore_frames(source, [2, 3, 4, 5], params, Reading()))
    assert sorted(converted) == sorted(id(frames[n]) for n in range(1, 7))  # targets and context, each once
    for n in out:
        np.testing.assert_array_equal(out[n].pixels[..., :3], 1.0 - np.clip(frames[n].pixels[..., :3], 0, 1))


def test_two_threads_reading_a_clip_at_once_convert_it_once():
    import time

    calls = []

    def convert() -> None:  # slow enough that both threads are inside without the clip's lock
        calls.append(1)
        time.sleep(0.2)
        frames[...] = 0.5

    frames = np.zeros((2, 4, 5, 3), np.float32)
    clip = Clip(frames, [1, 2], [1], convert=convert)
    assert clip.shape == (4, 5) and calls == []  # the shape needs no conversion
    start = threading.Barrier(2)
    seen: list[np.ndarray] = []

    def read() -> None:
        start.wait()
        seen.append(clip.frames)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls == [1] and len(seen) == 2 and seen[0] is seen[1] is frames and float(frames.min()) == 0.5


@pytest.mark.parametrize("deflicker", [False, True], ids=["fills", "deflicker"])
def test_a_fill_entry_keeps_only_the_changed_pixels_and_blends_the_same_after_a_round_trip(deflicker):
    """The stage cache's fill entry stores the restored pixels only where they changed (the change map as
    bits): dust changes a percent of a box that spans most of the frame, which was stored whole. Read back,
    every blend gives the same bits as the result it was made from."""
    rng = np.random.default_rng(11)
    h, w = 96, 128
    win = (0, 0, w, h)
    original = Frame(rng.random((h, w, 4), dtype=np.float32).astype(np.float16), tuple("RGBA"), ("half",) * 4, win, win)
    model = original.pixels[..., :3].copy()
    restored = model.copy()
    ys, xs = rng.integers(0, h, 120), rng.integers(0, w, 120)  # specks all over the frame
    ys[:2], xs[:2] = (0, h - 1), (0, w - 1)  # the box: the whole frame
    restored[ys, xs] = rng.random((120, 3), dtype=np.float32)
    matte = np.zeros((h, w), np.float32)
    matte[ys, xs] = 1.0
    base = np.clip(model * 1.02, 0, 1).astype(np.float32) if deflicker else None
    fill = FillResult.from_restored(RestoredFrame(1, restored, matte, base), model)
    data = fill.to_bytes()
    back = FillResult.from_bytes(data)
    assert back is not None and back.box == fill.box == (0, h, 0, w)
    if not deflicker:
        assert len(data) < fill.image.nbytes // 10  # the box's float32 RGB is not stored whole
    for mask in ("auto", "none"):
        params = P.validate({"mask": mask, "colorspace": "raw", "write_matte": True, "feather": 1.5})
        want = finish_frame(original, fill, params, "raw", None, 1, "frdm.matte", halves_out=True)
        got = finish_frame(original, back, params, "raw", None, 1, "frdm.matte", halves_out=True)
        assert got.samples.tobytes() == want.samples.tobytes()


def test_a_clip_whose_conversion_failed_converts_every_frame_when_read_again(monkeypatch):
    """``Clip.frames`` converts the window's frames on the first read; a conversion that raises (OCIO, memory)
    leaves the clip unconverted, so a read after it converts again. The frame that failed must stay to be
    converted: taken off the window's list before its conversion, the next read served its slot as it was
    (another frame's pixels, or uninitialised memory)."""
    real = pipeline._model_rgb
    failed: list[int] = []

    def failing_once(frame: Frame, space: str, params: Mapping[str, Any], out: np.ndarray) -> None:
        if frame is frames[2] and not failed:
            failed.append(2)
            raise MemoryError("conversion failed")
        real(frame, space, params, out)

    rng = np.random.default_rng(8)
    win = (0, 0, 5, 4)
    frames = {n: Frame(rng.random((4, 5, 3), dtype=np.float32), tuple("RGB"), ("float",) * 3, win, win) for n in (1, 2)}
    params = P.validate({"colorspace": "raw"})
    window = pipeline._Window(2)
    for n, frame in frames.items():
        window.add(n, frame, "raw", params, later=True)
    window.frames[...] = np.nan  # type: ignore[index]  # what the slots hold before a conversion
    clip = window.clip(1, 2, [1, 2])
    monkeypatch.setattr(pipeline, "_model_rgb", failing_once)
    with pytest.raises(MemoryError):
        clip.frames  # noqa: B018
    got = clip.frames
    for i, n in enumerate((1, 2)):
        want = np.empty((4, 5, 3), np.float32)
        real(frames[n], "raw", params, want)
        np.testing.assert_array_equal(got[i], want)


@pytest.mark.parametrize("image", [True, False], ids=["restored", "as_it_came"])
def test_a_restorer_s_matte_or_base_of_another_size_than_its_frame_is_refused_naming_the_frame(image):
    """A restorer's matte is (H, W) like its frame: one of another size was laid over the frame's top-left
    corner (the blend's mask and the matte channel in the wrong place, repairs outside it dropped), and a
    target left as it came (``image`` None) had no shape checked at all."""
    model = np.random.default_rng(9).random((H, W, 3), dtype=np.float32)
    matte = np.ones((H // 2, W // 2), np.float32)
    restored = RestoredFrame(7, model.copy() if image else None, matte)
    with pytest.raises(ValueError, match=r"frame 7: matte \(12, 16\) but the frame is \(24, 32\)"):
        FillResult.from_restored(restored, model)
    with pytest.raises(ValueError, match=r"frame 7: matte \(12, 16\)"):
        FillResult.as_it_came((H, W), RestoredFrame(7, None, matte))
    fine = FillResult.as_it_came((H, W), RestoredFrame(7, None, np.ones((H, W), np.float32)))
    assert fine.matte_box == (0, H, 0, W)
    base = np.zeros((H, W // 2, 3), np.float32)  # the frame a deflicker blends into: the frame's size too
    with pytest.raises(ValueError, match=r"frame 7: base \(24, 16, 3\) but the frame is \(24, 32, 3\)"):
        FillResult.from_restored(RestoredFrame(7, model.copy(), None, base), model)


def _scattered_matte(rng: np.random.Generator, h: int, w: int, specks: int) -> np.ndarray:
    matte = np.zeros((h, w), np.float32)
    for _ in range(specks):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        matte[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = rng.random() * 0.9 + 0.1
    matte[rng.integers(0, h), w - 1] = 1.0  # at the frame's right edge (OpenCV's scalar columns)
    matte[0, rng.integers(0, w)] = 0.5
    return matte


@pytest.mark.parametrize(("radius", "grow"), [(0.5, 2), (0.0, 3), (1.0, 0), (2.5, 1), (9.0, 4)])
def test_the_matte_feathered_in_tiles_has_the_whole_boxs_bits(radius, grow, monkeypatch):
    """``feather_at`` feathers the auto matte only in tiles around the pixels asked for (the changed ones);
    each must get the value feathering the matte's whole box gives (``feather_in_box``), bit for bit: OpenCV
    sums a row's last columns in another order, which the tiles' alignment keeps where the box has it."""
    from frdm.engine import fill
    from frdm.engine.fill import feather_at

    sizes: list[int] = []
    real = fill.feather_mask
    monkeypatch.setattr(fill, "feather_mask", lambda m, r, g: sizes.append(m.size) or real(m, r, g))
    rng = np.random.default_rng(int(radius * 10) + grow)
    tiled = []
    for h, w, specks in [(600, 1500, 12), (257, 2001, 8), (90, 2000, 8)]:
        matte = _scattered_matte(rng, h, w, specks)
        box = fill.nonzero_box(matte > 0)
        values = matte[box[0] : box[1], box[2] : box[3]]
        crop, mask = feather_in_box(box, values, (h, w), radius, grow)
        whole = np.zeros((h, w), np.float32)
        whole[crop[0] : crop[1], crop[2] : crop[3]] = mask
        # Every pixel the feathered matte reaches (the tiles' edges included), and others anywhere.
        ys, xs = np.nonzero(whole)
        ys, xs = np.r_[ys, rng.integers(0, h, 5)], np.r_[xs, rng.integers(0, w, 5)]
        sizes.clear()
        got = feather_at(box, values, (h, w), radius, grow, ys, xs)
        assert np.array_equal(got.view(np.uint32), whole[ys, xs].view(np.uint32))
        tiled.append(len(sizes) > 1 and sum(sizes) < mask.size)  # less than the box's crop in all, or whole
    assert any(tiled) or fill.feather_margin(radius, grow) > 16  # a wide feather's tiles are the box's crop
    assert not feather_at(None, np.zeros((0, 0), np.float32), (9, 9), radius, grow, ys[:3] % 9, xs[:3] % 9).any()


def test_the_changed_pixels_are_listed_as_a_per_pixel_comparison_finds_them():
    """``FillResult.from_restored`` lists the changed pixels (any channel differs as a float: -0.0 is 0.0),
    from a search of the changed samples for few, of a per-pixel map for many; the box is theirs, the
    entry keeps them, the box-sized views show them."""
    rng = np.random.default_rng(12)
    h, w = 120, 170
    model = rng.random((h, w, 3), dtype=np.float32)
    model[5, 7] = 0.0
    matte = np.zeros((h, w), np.float32)
    for share in (0.002, 0.3):
        restored = model.copy()
        picks = rng.random((h, w)) < share
        channel = rng.integers(0, 3, (h, w))
        restored[picks, channel[picks]] += 0.25  # one channel of each picked pixel
        restored[5, 7] = -0.0  # equal as a float: unchanged
        fill = FillResult.from_restored(RestoredFrame(1, restored, matte), model)
        expected = np.flatnonzero((restored != model).any(axis=-1))
        assert np.array_equal(fill.where, expected) and 5 * w + 7 not in fill.where
        ys, xs = np.divmod(expected, w)
        assert fill.box == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        assert np.array_equal(fill.values, restored[ys, xs])
        y0, y1, x0, x1 = fill.box
        assert np.array_equal(fill.changed, (restored != model).any(axis=-1)[y0:y1, x0:x1])
        assert np.array_equal(fill.image[fill.changed], restored[y0:y1, x0:x1][fill.changed])
        back = FillResult.from_bytes(fill.to_bytes())
        assert back is not None and back.box == fill.box
        assert np.array_equal(back.where, fill.where) and np.array_equal(back.values, fill.values)
    # A restored image laid out otherwise (a transposed view) is compared pixel for pixel all the same.
    restored = np.ascontiguousarray(model.transpose(1, 0, 2)).transpose(1, 0, 2)
    restored[60, 3, 1] = 2.0
    fill = FillResult.from_restored(RestoredFrame(1, restored, matte), model)
    assert fill.where.tolist() == [60 * w + 3]


def test_scattered_specks_blend_to_the_whole_frame_formulas_bits(monkeypatch):
    """Specks over a wide frame (their box is most of it): the blend weighs only the changed pixels, the
    matte feathered in tiles around them, and gives the whole-frame formula's bits."""
    from frdm.engine import fill

    sizes: list[int] = []
    real = fill.feather_mask
    monkeypatch.setattr(fill, "feather_mask", lambda m, r, g: sizes.append(m.size) or real(m, r, g))
    rng = np.random.default_rng(13)
    h, w = 500, 2000
    win = (0, 0, w, h)
    halves = rng.random((h, w, 4), dtype=np.float32).astype(np.float16)
    original = Frame(halves, tuple("RGBA"), ("half",) * 4, win, win)
    rgb = halves[..., :3].astype(np.float32)
    model = np.clip(to_model(rgb, "linear"), 0, 1)
    matte = _scattered_matte(rng, h, w, 15)
    restored = model.copy()
    fills = matte > 0
    fills[rng.integers(0, h, 5), rng.integers(0, w, 5)] = True  # a few changes outside the matte: weight 0 there
    restored[fills] = rng.random((int(fills.sum()), 3), dtype=np.float32)
    fr = FillResult.from_restored(RestoredFrame(1, restored, matte), model)
    for feather, grow in [(0.5, 2), (3.0, 0)]:
        params = P.validate({"colorspace": "linear", "feather": feather, "matte_grow": grow, "write_matte": False})
        sizes.clear()
        out = finish_frame(original, fr, params, "linear", None, 1, pipeline.MATTE_CHANNEL, halves_out=True)
        assert len(sizes) > 1  # in tiles
        box, mask = feather_in_box(fr.matte_box, fr.matte, fr.shape, feather, grow)
        m = np.zeros((h, w), np.float32)
        m[box[0] : box[1], box[2] : box[3]] = mask
        m = m * representable(to_model(rgb, "linear")) * (restored != model).any(axis=-1)
        expected = halves.astype(np.float32)
        expected[..., :3] = blend(rgb, from_model(restored, "linear"), m)
        assert out.samples.dtype == np.float16 and original.half is halves
        assert np.array_equal(out.samples.view(np.uint16), expected.astype(np.float16).view(np.uint16))
        assert 0 < int((out.samples != halves).any(axis=-1).sum()) <= int(fills.sum())
