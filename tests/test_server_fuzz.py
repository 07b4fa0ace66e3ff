"""Property-based fuzzing of the real server (issue 12): thousands of requests, every parameter of the schema
and every header field drawn valid or hostile, sent pipelined 50 at a time over one socket, while a legitimate
client restores shots beside them whose frames must stay bit-exact.

Every request gets its answer (its reply type, or an ``error`` whose code is not ``internal``: refused by
validation, not by accident), the server never stops answering, and nothing it does for the fuzzer leaks into
the legitimate job."""

from __future__ import annotations

import os
import threading
import time
from itertools import count
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from server_restorers import NeighbourMeanRestorer
from test_server import RAW, ServerProcess, exr_bytes, huge_exr_header
from test_server_inputs import exr_bomb

from frdm.engine.params import SCHEMA
from frdm.server import protocol
from frdm.server.client import FrdmClient

BATCH = 50  # requests in flight at once
# batches: BATCH x EXAMPLES >= 2,000 cases (FRDM_FUZZ_BATCHES=1000 for a longer hunt by hand)
EXAMPLES = int(os.environ.get("FRDM_FUZZ_BATCHES", "42"))
TERMINAL = ("error", "done", "hello", "status", "cancel")  # the last reply a request gets
STATS = {"cases": 0, "accepted": 0, "legit_frames": 0, "codes": {}}
_ids = count()

# --- the world the fuzzer may name -------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzroot")
    outside = tmp_path_factory.mktemp("fuzzout")
    (root / "sh").mkdir()
    for n in (1, 2, 3):
        (root / "sh" / f"src.{n:04d}.exr").write_bytes(exr_bytes(0.2 * n, seed=n))
    (root / "sh" / "bomb.0001.png").write_bytes(exr_bomb(256, 256, 64))  # 16 MiB decoded: over the 1 MiB limit
    (root / "junk.txt").write_text("not an image")
    os.mkfifo(root / "fifo.exr")
    (outside / "secret.exr").write_bytes(exr_bytes(0.9))
    (root / "escape.exr").symlink_to(outside / "secret.exr")
    (root / "null.exr").symlink_to("/dev/null")
    tmp = tmp_path_factory.mktemp("fuzzserver")
    server = ServerProcess(
        tmp,
        "--allow-root",
        str(root),
        "--max-frames",
        "20",
        "--max-pixels",
        str(256 * 256),
        "--max-message-mb",
        "4",
        "--max-frame-mb",
        "1",
        "--max-queued",
        "12",
        "--chunk",
        "2",
    ).wait_ready()
    yield {"root": root, "outside": outside, "server": server}
    server.stop()
    assert server.proc.returncode is not None
    assert [p.name for p in outside.iterdir()] == ["secret.exr"], "something was written outside the root"


_valid_blobs = [exr_bytes(0.3, seed=s) for s in (41, 42)]
_BLOBS = {  # what an inline part may hold: valid frames, junk, truncated, declared huge, a bomb, another format
    "exr-a": _valid_blobs[0],
    "exr-b": _valid_blobs[1],
    "empty": b"",
    "text": b"not an exr",
    "truncated": _valid_blobs[0][:60],
    "bad-header": _valid_blobs[0][:4] + b"\xff" * 40,
    "declares-100000x100000": huge_exr_header(),
    "bomb-256x256x64": exr_bomb(256, 256, 64),
    "png-magic": b"\x89PNG\r\n\x1a\n" + b"\0" * 30,
}
_PATHS = {
    "src1": "sh/src.0001.exr",
    "src2": "sh/src.0002.exr",
    "src3": "sh/src.0003.exr",
    "bomb": "sh/bomb.0001.png",
    "junk": "junk.txt",
    "fifo": "fifo.exr",
    "escape": "escape.exr",
    "null": "null.exr",
    "dir": "sh",
    "missing": "sh/nothing.0001.exr",
    "dots": "sh/../sh/src.0001.exr",
}


def often(n: int):
    """True n times in n + 1. (Hypothesis leans towards small integers, so ``integers(0, n)`` is 0 far more
    often than 1 in n + 1; it leans towards the first of ``sampled_from``, here True.)"""
    return st.sampled_from([True] * n + [False])


def junk():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.binary(max_size=12),
        st.lists(st.integers(-3, 3), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), max_size=2),
        st.sampled_from(["1e999", "inf", "-inf", "nan", "", " ", "0x10", "1_000", "\x00", "é" * 5000]),
    )


def path_value(root: Path):
    named = st.sampled_from(sorted(_PATHS)).map(lambda k: str(root / _PATHS[k]))
    hostile = st.sampled_from(["/dev/stdin", "/dev/zero", "/etc/passwd", "relative.exr", "/", "/tmp/x\x00.exr"])
    return st.one_of(named, named, hostile, st.text(max_size=30), junk())


_VALID_SPECIAL = {  # parameters whose valid values depend on each other: drawn so they mostly agree
    "colorspace": ["srgb", "linear", "raw", "cineon", "rec709", "ACEScg"],
    "ocio_config": ["ocio://default", "ocio://studio-config-latest"],
    "mask_channel": ["", "", "", "A", "R"],
    "mask": ["auto", "none", "none", "artist"],
    "patch_size": [512, 1024],
    "patch_overlap": [0, 32, 128],
    "window": [8, 16],
    "window_overlap": [0, 4],
}


def valid_param(p):
    if p.name in _VALID_SPECIAL:
        return st.sampled_from(_VALID_SPECIAL[p.name])
    if p.kind == "int":
        return st.integers(int(p.minimum), int(min(p.maximum, p.minimum + 64)))
    if p.kind == "float":
        return st.floats(float(p.minimum), float(min(p.maximum, p.minimum + 8)))
    if p.kind == "bool":
        return st.booleans()
    if p.kind == "choice":
        return st.sampled_from(p.choices)
    return st.text(max_size=20)


def hostile_param(p, root: Path):
    """Values a parameter must refuse (or, for names and paths, handle without harm)."""
    out = [junk()]
    if p.minimum is not None:
        out.append(st.sampled_from([p.minimum - 1, p.minimum - 1e-9, -(2**63), float("-inf")]))
    if p.maximum is not None:
        out.append(st.sampled_from([p.maximum + 1, p.maximum * 10.0, 2**64 - 1, float("inf"), "1e999"]))
    if p.kind == "choice":
        out.append(st.sampled_from([c.upper() for c in p.choices] + ["", "other"]))
    if p.name == "ocio_config":
        out.append(path_value(root))
        out.append(st.sampled_from(["ocio://nope", "ocio://../x", "ocio://", "ocio://a b"]))
    if p.name == "colorspace":
        out.append(st.sampled_from(["no such space", "ACES - ACEScg" * 300]))
    return st.one_of(*out)


@st.composite
def params_map(draw, root: Path):
    mode = draw(st.sampled_from(["valid", "valid", "valid", "one_bad", "unknown", "junk"]))
    if mode == "junk":
        return draw(junk())
    params = draw(st.fixed_dictionaries({}, optional={p.name: valid_param(p) for p in SCHEMA.params}))
    if mode == "one_bad":
        p = draw(st.sampled_from(SCHEMA.params))
        params[p.name] = draw(hostile_param(p, root))
    elif mode == "unknown":
        params[draw(st.text(max_size=8).filter(lambda k: k not in SCHEMA.by_name))] = draw(junk())
    return params


@st.composite
def image_refs(draw, root: Path, n_blobs: int):
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        entry: dict = {"frame": draw(st.one_of(st.integers(0, 4), st.integers(0, 4), junk()))}
        form = draw(st.sampled_from(["blob", "blob", "path", "path", "both", "neither", "id", "id+blob"]))
        if form in ("blob", "both", "id+blob"):
            entry["blob"] = draw(st.one_of(st.integers(0, n_blobs + 1), junk()))
        if form in ("path", "both"):
            entry["path"] = draw(path_value(root))
        if form in ("id", "id+blob"):
            entry["id"] = draw(st.one_of(content_id(), junk()))
        entries.append(entry if draw(often(20)) else draw(junk()))
    return entries


def content_id():
    """A well-formed content id (raw pixels' 128 hex digits or a file's 64)."""
    return st.sampled_from([64, 128]).flatmap(lambda n: st.text("0123456789abcdef", min_size=n, max_size=n))


@st.composite
def sane_refs(draw, root: Path, frames: list[int], blobs: list[str]):
    """One entry per frame (and maybe its neighbours): inline, a source file, or now and then a hostile one."""
    wanted = sorted(set(frames) | (set(draw(st.sets(st.integers(0, 4), max_size=2)))))
    entries = []
    for f in wanted:
        form = draw(st.sampled_from(["blob", "blob", "blob", "path", "path", "odd", "id"]))
        if form == "id" and f not in frames:  # a context frame by content id: one the server never saw
            entries.append({"frame": f, "id": draw(content_id())})
        elif form == "blob" or form == "id":
            blobs.append(draw(st.sampled_from(["exr-a", "exr-b", "exr-a", "exr-b", *sorted(_BLOBS)])))
            entries.append({"frame": f, "blob": len(blobs)})
        elif form == "path":
            entries.append({"frame": f, "path": str(root / _PATHS[f"src{min(max(f, 1), 3)}"])})
        else:
            entries.append({"frame": f, "path": draw(path_value(root))})
    return entries


@st.composite
def restore_case(draw, root: Path):
    header: dict = {"params": draw(params_map(root))}
    blobs: list[str] = []  # by name until sent: a failing case prints readably
    if draw(often(5)):
        frames = draw(st.sampled_from([[1], [1, 2], [2, 3], [1, 2, 3], [3]]))
        header["frames"] = frames
        header["sources"] = draw(sane_refs(root, frames, blobs))
        if not draw(often(4)):
            header["masks"] = draw(sane_refs(root, frames, blobs))
    else:
        blobs.extend(draw(st.sampled_from(sorted(_BLOBS))) for _ in range(draw(st.integers(0, 3))))
        header["frames"] = draw(
            st.one_of(st.lists(st.integers(0, 4), max_size=4), st.lists(st.integers(0, 40), max_size=30), junk())
        )
        header["sources"] = draw(st.one_of(image_refs(root, len(blobs)), junk()))
        if draw(st.booleans()):
            header["masks"] = draw(st.one_of(image_refs(root, len(blobs)), junk()))
    out = draw(st.sampled_from(["inline"] * 6 + ["dir", "pattern", "both", "hostile"]))
    if out in ("dir", "both"):
        header["output_dir"] = str(root / f"out{draw(st.integers(0, 2))}")
    if out in ("pattern", "both"):
        header["output_pattern"] = draw(
            st.sampled_from([str(root / "o" / "x.%04d.exr"), str(root / "o" / "y.####.exr")])
        )
    if out == "hostile":
        header[draw(st.sampled_from(["output_dir", "output_pattern"]))] = draw(path_value(root))
    return header, blobs


@st.composite
def case(draw, root: Path):
    """(header or raw parts, blob names, reply key): the key is the request id its reply carries ('' when
    the id cannot be read). Blobs travel by name until sent, so a failing case prints readably."""
    n = next(_ids)
    rid = f"fz{n}"
    kind = draw(st.sampled_from(["restore"] * 8 + ["hello", "status", "cancel", "raw", "ext"]))
    if kind == "raw":
        return [draw(st.binary(max_size=64)) for _ in range(draw(st.integers(1, 3)))], [], ""
    if kind == "ext":  # extension types, timestamps included, anywhere in an otherwise valid header
        ext = draw(st.sampled_from([msgpack.Timestamp(draw(st.integers(0, 2**32 - 1)), 0), msgpack.ExtType(5, b"x")]))
        return {"v": protocol.PROTOCOL_VERSION, "type": "status", "id": rid, "x": [ext]}, [], ""
    header: dict = {"v": protocol.PROTOCOL_VERSION, "type": kind, "id": rid}
    blobs: list[str] = []
    if kind == "restore":
        fields, blobs = draw(restore_case(root))
        header.update(fields)
        header["job"] = f"fzjob{n}"
    elif kind == "cancel":
        header["job"] = draw(st.sampled_from([f"fzjob{max(0, n - 1)}", "nobody", f"fzjob{n}"]))
        header["owner"] = draw(st.one_of(st.just(f"fz{max(0, n - 1)}"), junk()))
    # Any header field may be replaced by a hostile value, or an unknown field added.
    fields = sorted({*header, "v", "type", "id", "job", "owner", "pad"})
    mutated = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2)) if not draw(often(4)) else []
    for name in mutated:
        value = draw(junk())
        if name == "id" and isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
            value = rid  # a valid id is always this case's own: replies are matched by it
        if name == "job" and isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
            value = f"fzjob{n}"  # never another request's job (that would be a re-attach, answered by the other)
        header[name] = value
    key = rid if header.get("id") == rid else ""
    return header, blobs, key


def message(header: dict | list[bytes], blobs: list[str]) -> list[bytes]:
    if isinstance(header, list):
        return header
    return [msgpack.packb(header, use_bin_type=True), *(_BLOBS[b] for b in blobs)]


# --- the legitimate job alongside ---------------------------------------------------------------------


def expected_frames(sources: dict[int, bytes], frames: list[int]) -> dict[int, bytes]:
    """What the server must send for ``frames``: the in-process pipeline with the same restorer, encoded alike."""
    from frdm.engine.frames import MemorySource, decode_image, encode_image
    from frdm.engine.pipeline import restore_frames

    params = SCHEMA.validate(RAW)
    memory = MemorySource({n: decode_image(b, name=f"frame {n}") for n, b in sources.items()}, "legit")
    return {
        n: encode_image(f, ".exr", compression=params["compression"], pixel_type=params["pixel_type"])
        for n, f in restore_frames(memory, frames, params, NeighbourMeanRestorer())
    }


class LegitClient(threading.Thread):
    """Restores fresh 6-frame shots (frames 2-5 with context 1 and 6) until told to stop."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.rounds = 0
        self.busy = 0
        self.failure: str | None = None

    def run(self) -> None:
        from frdm.engine.frames import decode_image

        try:
            with FrdmClient(self.address, timeout=20) as client:
                while not self.stop.is_set():
                    r = self.rounds
                    sources = {n: exr_bytes(0.05 * n + 0.01 * (r % 7), seed=7919 * r + n) for n in range(1, 7)}
                    want = expected_frames(sources, [2, 3, 4, 5])
                    for attempt in range(200):
                        events = list(client.restore(RAW, [2, 3, 4, 5], sources=sources, job_id=f"legit-{r}-{attempt}"))
                        if events[-1].code != "busy":  # the fuzzer filled the queue: a real client waits too
                            break
                        self.busy += 1
                        time.sleep(0.05)
                    if events[-1].kind != "done":
                        self.failure = f"round {r}: {events[-1]}"
                        return
                    got = {e.frame: e.data for e in events if e.kind == "frame"}
                    if sorted(got) != [2, 3, 4, 5]:
                        self.failure = f"round {r}: frames {sorted(got)}"
                        return
                    for n, data in got.items():
                        a, b = decode_image(data), decode_image(want[n])
                        same = (a.channels, a.formats, a.data_window) == (b.channels, b.formats, b.data_window)
                        if not same or not np.array_equal(a.pixels.view(np.uint32), b.pixels.view(np.uint32)):
                            self.failure = f"round {r}: frame {n} differs from the in-process result"
                            return
                    STATS["legit_frames"] += len(got)
                    self.rounds += 1
        except Exception as exc:  # reported by the test, not lost in a thread
            self.failure = f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def legit(world):
    client = LegitClient(world["server"].address)
    client.start()
    yield client
    client.stop.set()
    client.join(60)


# --- the fuzzing --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(world):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(world["server"].address)
    yield sock
    sock.close(0)


@pytest.mark.slow
def test_fuzz_every_parameter_and_header_field_with_a_legit_job_alongside(world, legit, pipe):
    run_fuzz(pipe, world)
    legit.stop.set()
    legit.join(60)
    assert legit.failure is None, legit.failure
    assert legit.rounds >= 1
    print(
        f"\nfuzz cases: {STATS['cases']} (accepted and run: {STATS['accepted']}); legitimate frames bit-exact "
        f"alongside: {STATS['legit_frames']} in {legit.rounds} rounds (it met 'busy' {legit.busy} times); "
        f"reply codes: {STATS['codes']}"
    )
    assert STATS["cases"] >= 2000
    with FrdmClient(world["server"].address, timeout=5) as client:
        assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION
    assert world["server"].proc.poll() is None


def run_fuzz(sock, world) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate,),  # no shrinking: each step would replay 50 requests; the case is printed instead
    )
    @given(cases=st.lists(case(world["root"]), min_size=BATCH, max_size=BATCH))
    def one_batch(cases):
        while sock.poll(0):  # nothing of an earlier batch may be taken for this one's
            sock.recv_multipart()
        wanted: dict[str, int] = {}
        sent: dict[str, list] = {}
        for header, blobs, key in cases:
            sock.send_multipart(message(header, blobs))
            wanted[key] = wanted.get(key, 0) + 1
            sent.setdefault(key, []).append((header, blobs))
        got: dict[str, int] = {}
        while any(got.get(k, 0) < n for k, n in wanted.items()):
            late = [k for k, n in wanted.items() if got.get(k, 0) < n][:3]
            assert sock.poll(30_000), f"no reply for {[(k, sent[k]) for k in late]}"
            reply = protocol.unpack(sock.recv_multipart()[0])
            key = reply["id"]
            assert key in wanted, ("a reply to no request of this batch", reply)
            if reply["type"] == "accepted":
                STATS["accepted"] += 1
            if reply["type"] == "error":
                code = reply["code"]
                STATS["codes"][code] = STATS["codes"].get(code, 0) + 1
                assert code in protocol.ERROR_CODES and code != "internal", (reply["message"], sent[key])
                assert reply["message"]
            else:
                assert key, (reply, sent[key])  # a request whose id could not be read only ever gets an error
            if reply["type"] in TERMINAL:
                got[key] = got.get(key, 0) + 1
        assert got == wanted
        STATS["cases"] += len(cases)

    one_batch()


def test_case_strategy_covers_every_parameter_and_field(tmp_path):
    """The fuzzer's reach, checked without a server: every schema parameter and header field is drawn."""
    seen_params: set[str] = set()
    seen_fields: set[str] = set()
    seen_entries: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(c=case(tmp_path))
    def draw_one(c):
        header, _, _ = c
        if isinstance(header, dict):
            seen_fields.update(k for k in header if isinstance(k, str))
            if isinstance(header.get("params"), dict):
                seen_params.update(k for k in header["params"] if isinstance(k, str))
            if isinstance(header.get("sources"), list):
                seen_entries.update(
                    k for e in header["sources"] if isinstance(e, dict) for k in e if isinstance(k, str)
                )

    draw_one()
    assert {p.name for p in SCHEMA.params} <= seen_params
    assert {"frame", "blob", "path", "id"} <= seen_entries
    assert {
        "v",
        "type",
        "id",
        "job",
        "params",
        "frames",
        "sources",
        "masks",
        "output_dir",
        "output_pattern",
    } <= seen_fields
