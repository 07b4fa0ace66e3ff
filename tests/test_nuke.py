"""The Nuke adapter (plugin/nuke) without Nuke: type-checked with mypy against the published stubs
(types-nuke), and its logic run against tests/fake_nuke.py (whose API the stubs keep honest) with the REAL
server behind it. The gizmo file is the generated one, loaded into the fake as Nuke would."""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import fake_nuke
import numpy as np
import pytest
from test_node import in_process, pixels, write_clip
from test_server import ServerProcess, free_port

from frdm.engine.params import SCHEMA
from frdm.plugin.nuke import gizmo as G

REPO = Path(__file__).resolve().parent.parent
GIZMO = REPO / "gizmos" / "FRDM.gizmo"


def _stub_dir() -> Path:
    import importlib.util

    for entry in sys.path:
        cand = Path(entry) / "nuke-stubs"
        if (cand / "__init__.pyi").exists():
            return cand
    spec = importlib.util.find_spec("mypy")
    raise RuntimeError(f"types-nuke is not installed (nuke-stubs not on sys.path; mypy at {spec})")


@pytest.fixture
def nk(monkeypatch, tmp_path):
    """The adapter imported against the fake ``nuke``; a saved script in tmp_path; a loaded gizmo."""
    monkeypatch.setitem(sys.modules, "nuke", fake_nuke)
    for name in ("frdm.plugin.nuke.adapter", "frdm.plugin.nuke.batch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    adapter = importlib.import_module("frdm.plugin.nuke.adapter")
    monkeypatch.setattr(adapter, "TIMEOUT", 10.0)
    fake_nuke.fake_reset(script=str(tmp_path / "sh010_comp_v001.nk"), gui=True)
    adapter._NODES.clear()
    yield adapter
    for fn in adapter._NODES.values():
        if fn.job is not None and fn.job.running():
            fn.job.cancel()
            with contextlib.suppress(Exception):  # a test that failed half-way: stop its job
                fn.job.wait(20)
    fake_nuke.fake_reset()


def make_gizmo(tmp_path: Path, server: str, count: int = 5, mask_size: tuple[int, int] | None = None):
    src = write_clip(tmp_path / "plates", count=count)
    read = fake_nuke.fake_read("Read1", src, 1, count)
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    giz.setInput(0, read)
    if mask_size is not None:
        mask = write_clip(tmp_path / "mattes", count=count, size=mask_size)
        giz.setInput(1, fake_nuke.fake_read("Read2", mask, 1, count, mask_size))
    giz.knob("frdm_server").setValue(server)
    return giz, src


def status(giz) -> str:
    return str(giz.knob("frdm_status").value())


def settle(giz, prefix: tuple[str, ...] = ("restored", "error", "cancelled")) -> str:
    fake_nuke.fake_pump(lambda: status(giz).startswith(prefix), timeout=60)
    return status(giz)


@pytest.fixture(scope="module")
def classical_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("nksrv"), restorer=None)
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("nkslow"), restorer="server_restorers:slow", delay=0.4)
    yield server.wait_ready()
    server.stop()


# --- the stubs keep the adapter and the fake honest --------------------------------------------------------


@pytest.mark.slow
def test_adapter_type_checks_against_types_nuke(tmp_path):
    """mypy finds no error in plugin/nuke; the control file (a call the real API lacks) proves the stubs, not
    ``ignore_missing_imports``, are what mypy checked against."""
    control = tmp_path / "control.py"
    control.write_text("import nuke\n\nnuke.noSuchFunction()\nnuke.toNode(3)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "plugin/nuke", str(control)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith(str(control)) for line in errors), proc.stdout
    assert any("noSuchFunction" in line for line in errors), proc.stdout
    assert any("toNode" in line for line in errors), proc.stdout


def _stub_api() -> tuple[set[str], dict[str, tuple[list[str], set[str]]]]:
    functions: set[str] = set()
    classes: dict[str, tuple[list[str], set[str]]] = {}
    for path in _stub_dir().glob("*.pyi"):
        for item in ast.parse(path.read_text()).body:
            if isinstance(item, ast.FunctionDef):
                functions.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                functions.add(item.target.id)
            elif isinstance(item, ast.ClassDef):
                bases = [b.id for b in item.bases if isinstance(b, ast.Name)]
                methods = {m.name for m in item.body if isinstance(m, ast.FunctionDef)}
                classes[item.name] = (bases, methods)
    return functions, classes


def test_the_fake_only_has_what_the_stubs_have():
    functions, classes = _stub_api()

    def ancestry(name: str) -> tuple[set[str], set[str]]:
        seen, methods, todo = set(), set(), [name]
        while todo:
            c = todo.pop()
            if c in seen or c not in classes:
                continue
            seen.add(c)
            bases, own = classes[c]
            methods |= own
            todo += bases
        return seen, methods

    checked = 0
    for name, obj in vars(fake_nuke).items():
        if name.startswith("_") or name.startswith("fake_") or getattr(obj, "__module__", "") != "fake_nuke":
            continue
        if isinstance(obj, type):
            assert name in classes, f"fake class {name} is not in the Nuke API"
            stub_ancestors, stub_methods = ancestry(name)
            fake_ancestors = {c.__name__ for c in obj.__mro__ if c.__module__ == "fake_nuke"}
            assert fake_ancestors <= stub_ancestors, f"{name}: {fake_ancestors - stub_ancestors} not ancestors in Nuke"
            for meth in vars(obj):
                public = not meth.startswith("_") or meth in ("__getitem__", "__enter__", "__exit__")
                if public and callable(vars(obj)[meth]):
                    assert meth in stub_methods, f"{name}.{meth} is not in the Nuke API"
                    checked += 1
        elif callable(obj):
            assert name in functions, f"fake function nuke.{name} is not in the Nuke API"
            checked += 1
    for name in ("nodes", "env"):
        assert name in functions  # module attributes
    assert checked > 40


# --- the gizmo ----------------------------------------------------------------------------------------------


def test_gizmo_file_is_generated_from_the_schema(nk):
    assert GIZMO.read_text() == G.gizmo_text(), "regenerate: python -m frdm.plugin.nuke.gizmo > gizmos/FRDM.gizmo"
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    for p in SCHEMA:
        knob = giz.knob(G.knob_name(p.name))
        assert knob is not None, p.name
        assert knob.value() == p.default, p.name  # every default is the schema's (colorspace 'auto' too)
    assert nk.params_from_knobs(giz) == SCHEMA.validate({})
    for key in (
        "server",
        "first",
        "last",
        "output",
        "restore",
        "preview",
        "cancel",
        "status",
        "load_preset",
        "save_preset",
    ):
        assert giz.knob(f"frdm_{key}") is not None, key
    inner = {n.name(): n.Class() for n in giz.nodes()}
    assert inner == {
        "Source": "Input",
        "Mask": "Input",
        "FRDM_Result": "Read",
        "FRDM_Copy": "Copy",
        "FRDM_Switch": "Switch",
        "Output1": "Output",
    }
    assert "parent.frdm_loaded" in str(fake_nuke.toNode("FRDM1.FRDM_Switch").knob("which").value())
    read = fake_nuke.toNode("FRDM1.FRDM_Result")
    assert read.knob("file").value() == "{[value parent.frdm_result_file]}"
    assert read.knob("first").value() == "{{parent.frdm_result_first}}"


def test_on_create_adds_knobs_an_older_script_lacks(nk):
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    del giz._knobs["frdm_feather"], giz._knobs["frdm_engine"]
    nk.on_create(giz)
    from frdm.engine.params import defaults

    assert giz.knob("frdm_feather").value() == defaults()["feather"]
    assert giz.knob("frdm_engine").value() == "classical" and giz.knob("frdm_engine").values() == [
        "classical",
        "diffusion",
    ]


def test_menu_and_init(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nuke", fake_nuke)
    fake_nuke.fake_reset()
    extra = tmp_path / "frdm_site"
    extra.mkdir()
    monkeypatch.setenv("FRDM_PYTHONPATH", str(extra))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("init.py", "menu.py"):
        code = (REPO / "gizmos" / name).read_text()
        exec(compile(code, str(REPO / "gizmos" / name), "exec"), {"__file__": str(REPO / "gizmos" / name)})
    assert str(extra) in sys.path
    assert ("pluginAddPath", str(REPO / "gizmos" / "icons")) in fake_nuke.calls
    assert any(c[:3] == ("addCommand", "FRDM", "FRDM") and c[4] == "frdm.png" for c in fake_nuke.calls)
    png = (REPO / "gizmos" / "icons" / "frdm.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (24, 24)
    assert zlib.decompress(png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8])  # a real image stream


# --- the flow against the real server ------------------------------------------------------------------------


def test_restore_range_in_the_gui(nk, tmp_path, classical_server):
    giz, src = make_gizmo(tmp_path, classical_server.address)
    giz.knob("frdm_first").setValue(2)
    giz.knob("frdm_last").setValue(3)
    job = nk.restore_range(giz)
    assert job is not None and job.running()  # the button returned at once: the work is in a thread
    assert settle(giz).startswith("restored 2-3 (2 frames"), status(giz)
    assert fake_nuke.knob_writes_off_main == []  # every knob was written on the main thread

    # the inputs: one Write of the Source, rgb only, the targets and their context (radius 2, clamped to 1-5)
    executes = [c for c in fake_nuke.calls if c[0] == "execute"]
    assert len(executes) == 1 and executes[0][2:] == (1, 5, "rgb", "Read1")
    assert [n for n in giz.nodes() if n.Class() in ("Write", "Crop")] == []  # temporary nodes deleted
    assert any(c[0] == "progress_task" for c in fake_nuke.calls)

    out = tmp_path / "frdm" / "sh010_comp_v001" / "FRDM1"
    assert giz.knob("frdm_result_file").value() == str(out / "FRDM1.####.exr")  # what the Read's file shows
    assert (giz.knob("frdm_result_first").value(), giz.knob("frdm_result_last").value()) == (2, 3)
    assert giz.knob("frdm_loaded").value() is True
    assert ("execute_knob", "FRDM_Result", "reload") in fake_nuke.calls
    assert sorted(os.listdir(out)) == [".frdm-node.json", "FRDM1.0002.exr", "FRDM1.0003.exr"]  # inputs removed
    expected = in_process(src, [2, 3], SCHEMA.validate({}))
    np.testing.assert_array_equal(pixels(str(out / "FRDM1.0003.exr")), expected[3])

    # unchanged knobs and inputs: answered from the last render
    nk.restore_range(giz)
    assert "2 from cache" in settle(giz, ("restored",)) or "2 frames, 2 from cache" in status(giz)


def test_preview_frame_and_cancel_from_the_progress_window(nk, tmp_path, slow_server):
    giz, _ = make_gizmo(tmp_path, slow_server.address, count=8)
    giz.knob("frdm_mask").setValue("none")
    giz.knob("frdm_colorspace").setValue("raw")
    fake_nuke.frame(4)
    nk.preview_frame(giz)
    assert settle(giz).startswith("restored 4-4"), status(giz)
    assert [c[2:4] for c in fake_nuke.calls if c[0] == "execute"] == [(2, 6)]  # frame 4 with its context

    def loaded():
        return tuple(giz.knob(f"frdm_result_{k}").value() for k in ("file", "first", "last"))

    before = loaded()
    job = nk.restore_range(giz)
    fake_nuke.fake_pump(lambda: job.progress[0] >= 1, timeout=30)  # at least one frame arrived
    fake_nuke.fake_cancel_progress()
    assert settle(giz) == "cancelled; nothing was loaded"
    assert loaded() == before
    out = Path(before[0]).parent
    assert sorted(p for p in os.listdir(out) if p.endswith(".exr")) == ["FRDM1.0004.exr"]  # the preview only


def test_cancel_button(nk, tmp_path, slow_server):
    giz, _ = make_gizmo(tmp_path, slow_server.address, count=6)
    giz.knob("frdm_mask").setValue("none")
    job = nk.restore_range(giz)
    fake_nuke.fake_pump(lambda: job.progress[0] > 0, timeout=30)
    nk.cancel(giz)
    assert settle(giz) == "cancelled; nothing was loaded"
    assert giz.knob("frdm_result_file").value() == "" and giz.knob("frdm_loaded").value() is not True


# --- bad input: a clear message, no hang, nothing loaded ---------------------------------------------------------


def _nothing_loaded(giz) -> None:
    assert giz.knob("frdm_loaded").value() is not True
    assert giz.knob("frdm_result_file").value() == ""


def test_no_server_running(nk, tmp_path, monkeypatch):
    monkeypatch.setattr(nk, "TIMEOUT", 0.5)
    address = f"tcp://127.0.0.1:{free_port()}"
    giz, _ = make_gizmo(tmp_path, address)
    nk.preview_frame(giz, 2)
    text = settle(giz)
    assert text.startswith(f"error: no FRDM server answers at {address}") and "frdm serve" in text
    assert any(c[0] == "message" and "no FRDM server answers" in c[1] for c in fake_nuke.calls)
    _nothing_loaded(giz)


def test_frame_range_outside_the_input(nk, tmp_path):
    giz, _ = make_gizmo(tmp_path, "tcp://127.0.0.1:1", count=5)
    giz.knob("frdm_first").setValue(4)
    giz.knob("frdm_last").setValue(9)
    assert nk.restore_range(giz) is None
    assert (
        status(giz)
        == "error: frames 6-9 are outside the Source input (it has 1-5); set the range to frames the input has"
    )
    assert not [c for c in fake_nuke.calls if c[0] == "execute"]  # refused before rendering anything
    _nothing_loaded(giz)


def test_mask_of_another_format(nk, tmp_path, classical_server):
    giz, _ = make_gizmo(tmp_path, classical_server.address, mask_size=(32, 24))
    giz.knob("frdm_mask").setValue("artist")
    nk.preview_frame(giz, 2)
    assert "reformat the mask to the source's format" in settle(giz)
    assert [c[4] for c in fake_nuke.calls if c[0] == "execute"] == ["rgb", "alpha"]  # mask: alpha only
    _nothing_loaded(giz)


def test_bad_knob_value(nk, tmp_path):
    giz, _ = make_gizmo(tmp_path, "tcp://127.0.0.1:1")
    giz.knob("frdm_feather").setValue(-3.0)
    assert nk.preview_frame(giz, 2) is None
    assert status(giz) == "error: parameter 'feather' must be >= 0.0, got -3.0"
    assert any(c[0] == "message" for c in fake_nuke.calls)


def test_source_not_connected(nk, tmp_path):
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    assert nk.restore_range(giz) is None
    assert status(giz) == "error: FRDM1: connect the Source input"


# --- presets, terminal mode ---------------------------------------------------------------------------------------


def test_presets_next_to_the_script(nk, tmp_path):
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    giz.knob("frdm_feather").setValue(5.5)
    giz.knob("frdm_engine").setValue("classical")
    path = nk.save_preset(giz)
    assert path == str(tmp_path / "sh010_comp.FRDM1.frdm.json")  # no script version in the name
    from frdm.engine.params import load_preset

    assert load_preset(path) == {"feather": 5.5}  # only what differs from the defaults
    giz.knob("frdm_feather").setValue(1.0)
    giz.knob("frdm_dust_threshold").setValue(0.2)
    assert nk.load_preset(giz) == {"feather": 5.5}
    assert giz.knob("frdm_feather").value() == 5.5 and giz.knob("frdm_dust_threshold").value() == 0.06

    fake_nuke.fake_reset(script="", gui=True)  # an unsaved script has no "next to"
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    assert nk.save_preset(giz) == ""
    assert status(giz).startswith("error: cannot save the preset: save the script first")


def test_a_preset_round_trips_between_the_cli_and_the_node_unchanged(nk, tmp_path):
    """Every host default is the schema's: a CLI preset loaded into the node and saved again is the same file
    (an sRGB shot stays sRGB, 'auto' stays 'auto'), and the other way round."""
    from frdm.cli import main
    from frdm.engine.params import load_preset

    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    src = write_clip(tmp_path / "in", count=2)
    for given in ({"colorspace": "srgb", "feather": 3.0}, {"colorspace": "auto", "mask": "none"}, {}):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in given.items()]
        cli = tmp_path / "cli.json"
        node = tmp_path / "node.json"
        out = str(tmp_path / "o.####.exr")
        assert main(["restore", src, out, *flags, "--save-preset", str(cli), "--dry-run"]) == 0
        assert nk.load_preset(giz, str(cli)) == load_preset(cli)
        assert nk.save_preset(giz, str(node)) == str(node)
        assert node.read_text() == cli.read_text(), given
        assert nk.params_from_knobs(giz) == SCHEMA.validate(load_preset(cli))


def test_terminal_mode_runs_to_the_end(nk, tmp_path, classical_server):
    """nuke -t: no event loop; batch.main blocks until done and loads the result (or exits 2)."""
    fake_nuke.env["gui"] = False
    batch = importlib.import_module("frdm.plugin.nuke.batch")
    giz, _ = make_gizmo(tmp_path, classical_server.address)
    script = str(tmp_path / "sh010_comp_v001.nk")
    assert batch.main([script, "FRDM1", "3-4"]) == 0
    assert giz.knob("frdm_loaded").value() is True and status(giz).startswith("restored 3-4")
    assert batch.main([script, "FRDM1", "4-7"]) == 2  # outside the input: one line, exit 2
    assert batch.main([script, "NoSuchNode"]) == 2
    assert ("scriptOpen", script) in fake_nuke.calls


def test_a_failing_input_render_is_reported(nk, tmp_path):
    giz, src = make_gizmo(tmp_path, "tcp://127.0.0.1:1", count=5)
    os.remove(src.replace("####", "0003"))  # the fake Write's copy fails like Nuke's render of a missing frame
    real_execute = fake_nuke.execute

    def execute(node, start, end, *a, **kw):
        try:
            real_execute(node, start, end, *a, **kw)
        except OSError as exc:
            raise RuntimeError(f"Read1: {exc.strerror}") from None

    nk.nuke.execute = execute
    try:
        assert nk.preview_frame(giz, 2) is None
    finally:
        nk.nuke.execute = real_execute
    assert status(giz).startswith("error: FRDM1: rendering the Source input (1-4) failed: Read1:")
    assert [n for n in giz.nodes() if n.Class() in ("Write", "Crop")] == []
    _nothing_loaded(giz)


# --- issue 14: the node as a pipeline TD expects it ----------------------------------------------------------------


def test_status_reaches_the_node_from_inside_its_group(nk, tmp_path, classical_server):
    """The buttons run with the gizmo's group as the current context, where the node's own name does not
    resolve: status and results still arrive (the node object travels, not its name)."""
    giz, _ = make_gizmo(tmp_path, classical_server.address)
    with giz:
        assert fake_nuke.toNode(giz.fullName()) is None  # what the old name lookup met
        nk.preview_frame(giz, 2)
        assert settle(giz).startswith("restored 2-2"), status(giz)
    assert giz.knob("frdm_loaded").value() is True


def test_renaming_the_node_mid_render_keeps_its_results(nk, tmp_path, slow_server):
    giz, _ = make_gizmo(tmp_path, slow_server.address, count=4)
    giz.knob("frdm_mask").setValue("none")
    job = nk.restore_range(giz)
    fake_nuke.fake_pump(lambda: job.progress[0] > 0, timeout=30)
    giz.setName("Cleanup")
    assert settle(giz).startswith("restored 1-4"), status(giz)
    assert giz.knob("frdm_loaded").value() is True
    assert giz.knob("frdm_result_file").value().endswith("FRDM1/FRDM1.####.exr")  # the path it started with


def test_jobs_belong_to_the_node_not_its_name(nk, tmp_path, slow_server):
    """A new script's FRDM1 is another node: it does not see (or cancel) the old FRDM1's job; a pasted copy
    (same knob values, same id) gets an id of its own."""
    old, _ = make_gizmo(tmp_path, slow_server.address, count=4)
    old.knob("frdm_mask").setValue("none")
    job = nk.restore_range(old)
    assert job is not None and job.running()
    fake_nuke.delete(old)
    fresh = fake_nuke.fake_load_gizmo(str(GIZMO))  # "FRDM1" again, in a new script
    nk.cancel(fresh)
    assert status(fresh) == "nothing to cancel" and job.running()
    job.cancel()
    with contextlib.suppress(Exception):
        job.wait(20)
    fake_nuke.fake_pump()  # the old node's finish: deleted, ignored

    pasted = fake_nuke.fake_load_gizmo(str(GIZMO), "FRDM2")
    pasted.knob("frdm_node_id").setValue(nk.node_id(fresh))
    nk.on_create(pasted)
    assert nk.node_id(pasted) not in ("", nk.node_id(fresh))
    nk.on_create(fresh)  # its own id is unique: kept (a reopened script keeps its ids)
    assert nk.node_id(fresh) == fresh.knob("frdm_node_id").value()


def test_two_nodes_writing_one_folder_keep_every_manifest_entry(tmp_path):
    """Two nodes of one Nuke (threads) writing manifests into one folder: no temp-file collision (the old
    pid-only temp name failed with FileNotFoundError) and no lost update."""
    import threading

    from frdm.engine.frames import SequencePattern
    from frdm.plugin import node as N

    errors: list[BaseException] = []
    patterns = [SequencePattern.parse(str(tmp_path / f"node{i}.####.exr")) for i in range(2)]

    def writer(i: int) -> None:
        try:
            for f in range(300):
                N._write_manifest(str(tmp_path), patterns[i], {f: f"key{i}-{f}"})
        except BaseException as exc:  # collected: a thread's exception does not fail the test by itself
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, pattern in enumerate(patterns):
        assert N._read_manifest(str(tmp_path), pattern) == {str(f): f"key{i}-{f}" for f in range(300)}
    assert sorted(os.listdir(tmp_path)) == [N.MANIFEST]  # no temporary or lock file left behind


def test_the_preset_survives_versioning_up_the_script(nk, tmp_path):
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    giz.knob("frdm_feather").setValue(4.5)
    saved = nk.save_preset(giz)
    fake_nuke.root()._script = str(tmp_path / "sh010_comp_v002.nk")  # File > Save New Comp Version
    giz.knob("frdm_feather").setValue(1.0)
    assert nk.preset_path(giz) == saved
    assert nk.load_preset(giz) == {"feather": 4.5} and giz.knob("frdm_feather").value() == 4.5

    legacy = tmp_path / "sh010_comp_v002.FRDM1.frdm.json"  # a preset saved by an older FRDM
    os.replace(saved, legacy)
    giz.knob("frdm_feather").setValue(1.0)
    assert nk.load_preset(giz) == {"feather": 4.5}


def _ocio_root(config: str, working: str) -> None:
    root = fake_nuke.root()
    root.addKnob(fake_nuke.Enumeration_Knob("colorManagement", "color management", ["Nuke", "OCIO"]))
    root.knob("colorManagement").setValue("OCIO")
    root.addKnob(fake_nuke.String_Knob("OCIO_config", "OCIO config", config))
    root.addKnob(fake_nuke.File_Knob("customOCIOConfigPath", "custom OCIO config", ""))
    root.addKnob(fake_nuke.String_Knob("workingSpaceLUT", "working space", working))


def test_the_script_colour_management_is_used_unless_a_knob_overrides(nk, tmp_path, classical_server, monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)
    giz, src = make_gizmo(tmp_path, classical_server.address)
    assert nk.resolved_params(giz)["colorspace"] == "linear"  # Nuke's own colour management: scene-linear 709

    _ocio_root("ocio://studio-config-latest", "ACEScg")  # an ACEScg script
    params = nk.resolved_params(giz)
    assert (params["colorspace"], params["ocio_config"]) == ("ACEScg", "ocio://studio-config-latest")
    nk.preview_frame(giz, 3)
    assert settle(giz).startswith("restored 3-3"), status(giz)
    out = giz.knob("frdm_result_file").value().replace("####", "0003")
    acescg = in_process(src, [3], {"colorspace": "ACEScg", "ocio_config": "ocio://studio-config-latest"})[3]
    np.testing.assert_array_equal(pixels(out), acescg)  # the engine saw ACEScg primaries
    from frdm.engine.frames import read_attributes

    # The written frame says which colour space converted it (a fill copied from a neighbour can give the same
    # pixels in either space on this grey clip, so the pixels alone cannot tell).
    assert read_attributes(out)["frdm:colorspace"] == "ACEScg"

    giz.knob("frdm_colorspace").setValue("srgb")  # the knob overrides the script
    assert nk.resolved_params(giz)["colorspace"] == "srgb"
    giz.knob("frdm_colorspace").setValue("auto")
    fake_nuke.root().knob("OCIO_config").setValue("aces_1.2")  # a config bundled with Nuke, not installed here
    with pytest.raises(nk.InputError, match="cannot find the script's OCIO config 'aces_1.2'"):
        nk.resolved_params(giz)
    fake_nuke.root().knob("OCIO_config").setValue("custom")
    fake_nuke.root().knob("customOCIOConfigPath").setValue(str(tmp_path / "show" / "config.ocio"))
    assert nk.resolved_params(giz)["ocio_config"] == str(tmp_path / "show" / "config.ocio")


def test_stereo_restores_each_view_into_its_own_files(nk, tmp_path, classical_server):
    fake_nuke.fake_views("left", "right")
    for seed, view in enumerate(("left", "right")):
        write_clip(tmp_path / "plates" / view, count=4, seed=seed)
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    giz.setInput(0, fake_nuke.fake_read("Read1", str(tmp_path / "plates" / "%V" / "clip.####.exr"), 1, 4))
    giz.knob("frdm_server").setValue(classical_server.address)
    nk.preview_frame(giz, 2)
    assert settle(giz).startswith("restored 2-2 (1 frames, 2 views"), status(giz)
    result = giz.knob("frdm_result_file").value()
    assert result.endswith("FRDM1/FRDM1.%V.####.exr")  # Nuke's Read picks each view's file
    executes = [c for c in fake_nuke.calls if c[0] == "execute"]
    assert len(executes) == 2  # one input render per view
    for view in ("left", "right"):
        restored = nk.view_path(result, view).replace("####", "0002")
        expected = in_process(str(tmp_path / "plates" / view / "clip.####.exr"), [2], {})[2]
        np.testing.assert_array_equal(pixels(restored), expected)

    giz.knob("frdm_output").setValue(str(tmp_path / "out" / "shot.####.exr"))  # both views into one name
    assert nk.preview_frame(giz, 2) is None
    assert "has no %V" in status(giz)


def test_proxy_mode_renders_the_inputs_at_full_resolution(nk, tmp_path, monkeypatch):
    monkeypatch.setattr(nk, "TIMEOUT", 0.3)
    giz, _ = make_gizmo(tmp_path, f"tcp://127.0.0.1:{free_port()}")
    fake_nuke.root().setProxy(True)
    nk.preview_frame(giz, 2)
    settle(giz)
    assert [c for c in fake_nuke.calls if c[0] == "execute"]
    assert not [c for c in fake_nuke.calls if c[0] == "execute_in_proxy"]  # proxy was off while rendering
    assert fake_nuke.root().proxy() is True  # and the artist's proxy mode is back


def test_the_output_knob_is_evaluated(nk, tmp_path, monkeypatch):
    monkeypatch.setenv("FRDM_SHOT_OUT", str(tmp_path / "renders"))
    giz = fake_nuke.fake_load_gizmo(str(GIZMO))
    fake_nuke.frame(7)  # evaluate() alone would put frame 7 in the name
    giz.knob("frdm_output").setValue("$FRDM_SHOT_OUT/sh010_frdm.####.exr")
    fake_nuke.root().setModified(False)
    assert nk.output_pattern(giz) == str(tmp_path / "renders" / "sh010_frdm.####.exr")
    assert not fake_nuke.root().modified()  # evaluating is no edit


def test_an_animated_knob_is_refused(nk, tmp_path):
    giz, _ = make_gizmo(tmp_path, "tcp://127.0.0.1:1")
    fake_nuke.fake_animate(giz.knob("frdm_dust_threshold"))
    assert nk.preview_frame(giz, 2) is None
    assert "'dust threshold' is animated" in status(giz)
    assert not [c for c in fake_nuke.calls if c[0] == "execute"]


def test_status_updates_do_not_mark_the_script_modified(nk, tmp_path, slow_server):
    giz, _ = make_gizmo(tmp_path, slow_server.address, count=4)
    giz.knob("frdm_mask").setValue("none")
    nk.node_id(giz)
    fake_nuke.root().setModified(False)
    job = nk.restore_range(giz)
    fake_nuke.fake_pump(lambda: job.progress[0] >= 1 and "frame" in status(giz), timeout=30)
    assert not fake_nuke.root().modified()
    job.cancel()
    settle(giz)


def test_on_create_without_the_package_passes_through(monkeypatch):
    """A render node without frdm opens a script holding the node: the guarded onCreate does not raise."""
    monkeypatch.setitem(sys.modules, "nuke", fake_nuke)
    monkeypatch.setitem(sys.modules, "frdm.plugin.nuke.adapter", None)  # import raises ImportError
    fake_nuke.fake_reset()
    exec(compile(G.ON_CREATE, "onCreate", "exec"), {"nuke": fake_nuke})
    assert any(c[0] == "tprint" and "not importable" in c[1] for c in fake_nuke.calls)


def test_creating_the_node_is_one_undo_step(monkeypatch):
    monkeypatch.setitem(sys.modules, "nuke", fake_nuke)
    fake_nuke.fake_reset()
    fake_nuke.fake_gizmo_path("FRDM", str(GIZMO))
    code = (REPO / "gizmos" / "menu.py").read_text()
    exec(compile(code, "menu.py", "exec"), {})
    (command,) = [c[3] for c in fake_nuke.calls if c[0] == "addCommand"]
    node = command()
    assert node.Class() == "FRDM" and fake_nuke._undo == [("begin", "Create FRDM"), ("end", "")]


def test_submit_to_farm_writes_the_bundle_frdm_submit_writes(nk, tmp_path):
    """The node's button renders its inputs (range + context, full resolution) once and writes the same job
    bundle as ``frdm submit`` given those files and the node's parameters."""
    from frdm.cli import main
    from frdm.plugin import farm

    giz, _ = make_gizmo(tmp_path, "tcp://127.0.0.1:1", count=6)
    giz.knob("frdm_first").setValue(2)
    giz.knob("frdm_last").setValue(4)
    giz.knob("frdm_feather").setValue(3.0)
    written = nk.submit_to_farm(giz)
    assert written is not None, status(giz)
    assert status(giz) == f"farm job written: {written.folder}"
    out = tmp_path / "frdm" / "sh010_comp_v001" / "FRDM1"
    assert written.folder == str(out / "farm_job")
    inputs = out / "farm_inputs"
    assert sorted(os.listdir(inputs)) == [f"source.{f:04d}.exr" for f in range(1, 7)]  # 2-4 with radius 2

    cli_dir = tmp_path / "cli_job"
    argv = ["submit", str(inputs / "source.####.exr"), str(out / "FRDM1.####.exr"), "--frames", "2-4"]
    argv += ["--job-dir", str(cli_dir), "--name", "FRDM1", "--feather", "3", "--colorspace", "linear"]
    assert main(argv) == 0
    for name in (farm.TEMPLATE_FILE, farm.CLOUD_VALUES_FILE, farm.ASSETS_FILE, farm.PARAMS_FILE, farm.JOB_INFO_FILE):
        node_text = (Path(written.folder) / name).read_text().replace(written.folder, "JOB")
        assert node_text == (cli_dir / name).read_text().replace(str(cli_dir), "JOB"), name


def test_results_are_loaded_when_the_job_ends_not_at_the_next_status_update(
    nk, tmp_path, classical_server, monkeypatch
):
    monkeypatch.setattr(nk, "STATUS_INTERVAL", 3600.0)  # a watcher that slept between updates would wait an hour
    giz, src = make_gizmo(tmp_path, classical_server.address)
    job = nk.preview_frame(giz, 3)
    assert job is not None
    job.wait(60)
    # The watcher's own wait ends with the job: the results are loaded well within the pump's minute.
    assert settle(giz).startswith("restored 3-3"), status(giz)
    assert giz.knob("frdm_loaded").value() is True
