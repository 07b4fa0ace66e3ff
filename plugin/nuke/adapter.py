"""The Nuke adapter: what the buttons of ``gizmos/FRDM.gizmo`` call.

Flow of "Restore range" (and "Preview frame", one frame):

1. main thread: read the knobs into parameters (the schema validates them), work out the frames needed
   (targets plus temporal context, clamped to the Source input's range), and render the Source (and Mask)
   inputs with a temporary Write node: EXR, only the channels the server needs, full frame (a Crop to the
   format, so the data window is the frame);
2. a worker thread (``FrdmNode.render``) sends them to the server, as paths when it shares storage with
   the workstation, else inline, and stages the results;
3. a watcher thread mirrors progress into a ``nuke.ProgressTask`` (its cancel button cancels the job);
4. back on the main thread (``nuke.executeInMainThread``): the internal Read ``FRDM_Result`` is pointed at
   the results only if the whole job succeeded; otherwise the status line and a message say why.

Nuke's main thread never waits on the server. In ``nuke -t`` (no GUI) the same calls run to completion and
raise on failure, so a farm task or a script can use them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import nuke

from frdm.engine.errors import FrdmError, InputError, ParamError
from frdm.engine.frames import SequencePattern
from frdm.engine.params import SCHEMA
from frdm.engine.params import load_preset as _load_preset_file
from frdm.engine.params import save_preset as _save_preset_file
from frdm.plugin.node import FrdmNode, Inputs, RenderError, RenderJob, check_range, frames_needed
from frdm.plugin.nuke.gizmo import DEFAULT_SERVER, KNOB_PREFIX, knob_name

RESULT_READ = "FRDM_Result"
SOURCE_INPUT = "Source"
MASK_INPUT = "Mask"
PRESET_SUFFIX = ".frdm.json"
_EXR_DATATYPE = "16 bit half"  # scans rarely carry more than 12 bits; half keeps transfers small
_EXR_COMPRESSION = "Zip (1 scanline)"

#: Seconds to wait for the server (per try) and extra tries: a missing server is reported in ~20 s.
TIMEOUT = 10.0
RETRIES = 1

# One FrdmNode per gizmo (keyed by the node's full name): it keeps the running job for Cancel.
_NODES: dict[str, FrdmNode] = {}


# --- knobs <-> parameters ---------------------------------------------------------------------------------


def _knob(node: nuke.Node, name: str) -> nuke.Knob:
    knob = node.knob(name)
    if knob is None:
        raise InputError(f"{node.name()} has no knob '{name}'; recreate the FRDM node from the menu")
    return knob


def params_from_knobs(node: nuke.Node) -> dict[str, Any]:
    """The node's parameter knobs as validated parameters (a bad value raises ParamError naming it)."""
    values: dict[str, Any] = {}
    for p in SCHEMA:
        knob = node.knob(knob_name(p.name))
        if knob is None:
            continue  # a script saved before the parameter existed: the default applies
        value = knob.value()
        if p.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[p.name] = value
    return SCHEMA.validate(values)


def set_knobs(node: nuke.Node, values: Mapping[str, Any]) -> None:
    for name, value in SCHEMA.validate(values, partial=True).items():
        knob = node.knob(knob_name(name))
        if knob is not None:
            knob.setValue(value)


def on_create(node: nuke.Node) -> None:
    """The gizmo's onCreate: add knobs a newer schema has and an older saved script lacks."""
    for p in SCHEMA:
        if node.knob(knob_name(p.name)) is not None:
            continue
        knob: nuke.Knob
        if p.kind == "bool":
            knob = nuke.Boolean_Knob(knob_name(p.name), p.knob_label)
        elif p.kind == "int":
            knob = nuke.Int_Knob(knob_name(p.name), p.knob_label)
        elif p.kind == "float":
            knob = nuke.Double_Knob(knob_name(p.name), p.knob_label)
        elif p.kind == "choice":
            knob = nuke.Enumeration_Knob(knob_name(p.name), p.knob_label, list(p.choices))
        else:
            knob = nuke.String_Knob(knob_name(p.name), p.knob_label)
        knob.setTooltip(p.help)
        node.addKnob(knob)
        knob.setValue(p.default)


def frdm_node(node: nuke.Node) -> FrdmNode:
    """The FrdmNode behind a gizmo, its parameters and server address refreshed from the knobs."""
    key = node.fullName()
    fn = _NODES.get(key)
    address = str(_knob(node, f"{KNOB_PREFIX}server").value()).strip() or DEFAULT_SERVER
    if fn is None:
        fn = _NODES[key] = FrdmNode(address, timeout=TIMEOUT, retries=RETRIES)
    fn.set_address(address)
    fn.timeout, fn.retries = TIMEOUT, RETRIES
    fn.params = params_from_knobs(node)
    return fn


# --- paths ------------------------------------------------------------------------------------------------


def script_dir() -> str | None:
    name = nuke.root().name()
    if not name or name == "Root":
        return None  # an unsaved script
    return os.path.dirname(os.path.abspath(name))


def output_pattern(node: nuke.Node) -> str:
    """The result sequence: the ``output`` knob, or frdm/<script>/<node>/<node>.####.exr next to the
    script (a temporary folder for an unsaved script)."""
    chosen = str(_knob(node, f"{KNOB_PREFIX}output").value()).strip()
    if chosen:
        pattern = SequencePattern.parse(chosen)
        if not pattern.is_sequence or not pattern.suffix.lower().endswith(".exr"):
            raise InputError(f"{node.name()}: output '{chosen}' must be an EXR sequence such as name.####.exr")
        return os.path.abspath(chosen)
    where = script_dir()
    if where is None:
        base = os.path.join(tempfile.gettempdir(), "frdm", "untitled")
    else:
        script = os.path.splitext(os.path.basename(nuke.root().name()))[0]
        base = os.path.join(where, "frdm", script)
    return os.path.join(base, node.name(), f"{node.name()}.####.exr")


def preset_path(node: nuke.Node) -> str:
    """Per-shot preset next to the script: <script>.<node>.frdm.json."""
    name = nuke.root().name()
    if script_dir() is None:
        raise InputError("save the script first: per-shot presets are stored next to the .nk file")
    return f"{os.path.splitext(os.path.abspath(name))[0]}.{node.name()}{PRESET_SUFFIX}"


# --- inputs -----------------------------------------------------------------------------------------------


def _input_range(node: nuke.Node) -> list[int]:
    source = node.input(0)
    if source is None:
        raise InputError(f"{node.name()}: connect the {SOURCE_INPUT} input")
    return list(range(int(source.firstFrame()), int(source.lastFrame()) + 1))


def _group(node: nuke.Node) -> nuke.Group:
    if not isinstance(node, nuke.Group):
        raise InputError(f"{node.name()} is not an FRDM gizmo (a {node.Class()} node)")
    return node


def _inside(node: nuke.Node, name: str) -> nuke.Node:
    with _group(node):  # the gizmo's internal graph
        inner = nuke.toNode(name)
    if inner is None:
        raise InputError(f"{node.name()} has no internal node '{name}'; recreate the FRDM node from the menu")
    return inner


def _write_input(node: nuke.Node, input_name: str, channels: str, pattern: str, frames: list[int]) -> None:
    """Render one of the gizmo's inputs to ``pattern`` (EXR) for ``frames`` with a temporary Write."""
    upstream = _inside(node, input_name)
    fmt = node.format()
    with _group(node):
        crop = nuke.nodes.Crop()  # full frame: the data window is the format, never the bbox
        crop.setInput(0, upstream)
        _knob(crop, "box").setValue([0, 0, fmt.width(), fmt.height()])
        _knob(crop, "crop").setValue(True)
        write = nuke.nodes.Write()
        write.setInput(0, crop)
        for name, value in (
            ("file", pattern),
            ("file_type", "exr"),
            ("channels", channels),
            ("datatype", _EXR_DATATYPE),
            ("compression", _EXR_COMPRESSION),
            ("raw", True),  # the pixels as they are in Nuke's working space, no view transform
            ("create_directories", True),
        ):
            knob = write.knob(name)
            if knob is not None:
                knob.setValue(value)
    try:
        for first, last in _runs(frames):
            try:
                nuke.execute(write, first, last)
            except RuntimeError as exc:  # Nuke's render errors (a missing file upstream, a cancelled render)
                raise InputError(
                    f"{node.name()}: rendering the {input_name} input ({first}-{last}) failed: {exc}"
                ) from None
    finally:
        nuke.delete(write)
        nuke.delete(crop)


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return out


def render_inputs(node: nuke.Node, fn: FrdmNode, targets: list[int], folder: str) -> Inputs:
    """Write the frames ``targets`` need (with context) from the Source and Mask inputs into ``folder``."""
    available = _input_range(node)
    check_range(targets, available)
    needed = frames_needed(targets, fn.params, available)
    mask_channel = fn.params["mask_channel"]
    channels = "rgb" if not mask_channel else ("rgba" if mask_channel in ("A", "a", "alpha") else "all")
    src = SequencePattern.parse(os.path.join(folder, "source.####.exr"))
    _write_input(node, SOURCE_INPUT, channels, src.pattern, needed)
    mask_path = None
    if node.input(1) is not None and fn.params["mask"] == "artist":
        msk = SequencePattern.parse(os.path.join(folder, "mask.####.exr"))
        _write_input(node, MASK_INPUT, "alpha", msk.pattern, needed)
        mask_path = msk.path
    return Inputs(available, src.path, mask_path)


# --- status and results (main thread) ---------------------------------------------------------------------


def _gui() -> bool:
    return bool(nuke.env["gui"])


def _on_main(call: Any, *args: Any) -> None:
    if _gui() and threading.current_thread() is not threading.main_thread():
        nuke.executeInMainThread(call, args=args)
    else:
        call(*args)


def set_status(node_name: str, text: str) -> None:
    """Set the status line (main thread); a node deleted meanwhile is ignored."""
    node = nuke.toNode(node_name)
    if node is not None and node.knob(f"{KNOB_PREFIX}status") is not None:
        _knob(node, f"{KNOB_PREFIX}status").setValue(text)


def _load_results(node: nuke.Node, pattern: str, first: int, last: int) -> None:
    # The internal Read's file/first/last are expressions of these knobs of the gizmo (saved with the script).
    _knob(node, f"{KNOB_PREFIX}result_file").setValue(pattern)
    _knob(node, f"{KNOB_PREFIX}result_first").setValue(first)
    _knob(node, f"{KNOB_PREFIX}result_last").setValue(last)
    _knob(node, f"{KNOB_PREFIX}loaded").setValue(True)
    reload = _inside(node, RESULT_READ).knob("reload")
    if isinstance(reload, nuke.Script_Knob):
        reload.execute()  # same file names as an earlier render: make Nuke drop its cached images


def finish(node_name: str, job: RenderJob, pattern: str, inputs_dir: str) -> None:
    """Main thread, once per job: load complete results, or report why there are none."""
    shutil.rmtree(inputs_dir, ignore_errors=True)
    node = nuke.toNode(node_name)
    if node is None:
        return
    if job.state == "done" and job.result is not None:
        frames = sorted(job.result.frames)
        _load_results(node, pattern, frames[0], frames[-1])
        cached = f", {len(job.result.cached)} from cache" if job.result.cached else ""
        set_status(
            node_name, f"restored {frames[0]}-{frames[-1]} ({len(frames)} frames{cached}, {job.result.seconds:.1f} s)"
        )
        return
    error = job.error or RenderError("internal", "the render ended without a result")
    if error.code == "cancelled":
        set_status(node_name, "cancelled; nothing was loaded")
        return
    set_status(node_name, f"error: {error}")
    if _gui():
        nuke.message(f"FRDM ({node_name}): {error}")


# --- actions (the buttons) --------------------------------------------------------------------------------


def _watch(node_name: str, job: RenderJob, pattern: str, inputs_dir: str, title: str) -> None:
    """Worker side: mirror progress into a ProgressTask; its cancel button cancels the job."""
    task = nuke.ProgressTask(title)
    try:
        while job.running():
            if task.isCancelled():
                job.cancel()
            done, total, message = job.progress
            task.setProgress(int(100 * done / total) if total else 0)
            task.setMessage(message)
            _on_main(set_status, node_name, f"{message} ({done:.1f}/{total:g})" if total else message)
            time.sleep(0.2)
    finally:
        del task  # closes the progress window
    _on_main(finish, node_name, job, pattern, inputs_dir)


def _start(node: nuke.Node, targets: list[int], title: str) -> RenderJob:
    try:
        fn = frdm_node(node)
        if fn.job is not None and fn.job.running():
            raise RenderError("busy", f"{node.name()} is already rendering; wait for it or press Cancel")
        pattern = output_pattern(node)
        inputs_dir = os.path.join(os.path.dirname(pattern), f".frdm-inputs-{uuid.uuid4().hex[:12]}")
        try:
            inputs = render_inputs(node, fn, targets, inputs_dir)
            job = fn.render(targets, inputs, pattern)
        except BaseException:
            shutil.rmtree(inputs_dir, ignore_errors=True)
            raise
    except FrdmError as exc:  # refused before anything was sent: say so, load nothing
        set_status(node.fullName(), f"error: {exc}")
        if _gui():
            nuke.message(f"FRDM ({node.name()}): {exc}")
            raise RenderError(getattr(exc, "code", "bad_input") or "bad_input", str(exc)) from None
        raise
    name = node.fullName()
    set_status(name, f"sending {len(targets)} frame(s) to {fn.address}")
    if _gui():
        threading.Thread(target=_watch, args=(name, job, pattern, inputs_dir, title), daemon=True).start()
        return job
    # nuke -t: no event loop to come back to; run to the end here and raise on failure.
    with contextlib.suppress(RenderError):
        job.wait()
    finish(name, job, pattern, inputs_dir)
    if job.error is not None:
        raise job.error
    return job


def _frame_range(node: nuke.Node) -> list[int]:
    first = int(_knob(node, f"{KNOB_PREFIX}first").value())
    last = int(_knob(node, f"{KNOB_PREFIX}last").value())
    if first == 0 and last == 0:
        return _input_range(node)
    if last < first:
        raise InputError(f"{node.name()}: the frame range {first}-{last} ends before it starts")
    return list(range(first, last + 1))


def restore_range(node: nuke.Node, first: int | None = None, last: int | None = None) -> RenderJob | None:
    """The "Restore range" button (and the batch entry point with explicit frames)."""
    try:
        targets = list(range(first, last + 1)) if first is not None and last is not None else _frame_range(node)
    except FrdmError as exc:
        set_status(node.fullName(), f"error: {exc}")
        if _gui():
            nuke.message(f"FRDM ({node.name()}): {exc}")
            return None
        raise
    return _start_or_none(node, targets, f"FRDM {node.name()}: restoring {targets[0]}-{targets[-1]}")


def preview_frame(node: nuke.Node, frame: int | None = None) -> RenderJob | None:
    """The "Preview frame" button: the current frame, with its context."""
    f = int(nuke.frame()) if frame is None else int(frame)
    return _start_or_none(node, [f], f"FRDM {node.name()}: previewing frame {f}")


def _start_or_none(node: nuke.Node, targets: list[int], title: str) -> RenderJob | None:
    try:
        return _start(node, targets, title)
    except RenderError:
        if _gui():
            return None  # already shown to the artist
        raise


def cancel(node: nuke.Node) -> None:
    """The "Cancel" button: stops the running job (nothing partial is loaded)."""
    fn = _NODES.get(node.fullName())
    if fn is not None and fn.job is not None and fn.job.running():
        fn.cancel()
        set_status(node.fullName(), "cancelling...")
    else:
        set_status(node.fullName(), "nothing to cancel")


def save_preset(node: nuke.Node, path: str | None = None) -> str:
    """The "Save preset" button: the knobs that differ from the defaults, next to the script."""
    try:
        target = path or preset_path(node)
        _save_preset_file(target, params_from_knobs(node))
    except (FrdmError, OSError) as exc:
        _report(node, f"cannot save the preset: {exc}")
        return ""
    set_status(node.fullName(), f"preset saved: {os.path.basename(target)}")
    return target


def load_preset(node: nuke.Node, path: str | None = None) -> dict[str, Any]:
    """The "Load preset" button: knobs from the shot's preset (absent values return to the defaults)."""
    try:
        target = path or preset_path(node)
        values = _load_preset_file(target)
        full = {**SCHEMA.defaults(), **values}
        set_knobs(node, full)
    except (FrdmError, OSError) as exc:
        _report(node, f"cannot load the preset: {exc}")
        return {}
    set_status(node.fullName(), f"preset loaded: {os.path.basename(target)}")
    return values


def _report(node: nuke.Node, text: str) -> None:
    set_status(node.fullName(), f"error: {text}")
    if _gui():
        nuke.message(f"FRDM ({node.name()}): {text}")
    else:
        raise ParamError(text)


def log(text: str) -> None:
    print(f"FRDM: {text}", file=sys.stderr)


__all__ = [
    "cancel",
    "finish",
    "frdm_node",
    "load_preset",
    "on_create",
    "output_pattern",
    "params_from_knobs",
    "preset_path",
    "preview_frame",
    "render_inputs",
    "restore_range",
    "save_preset",
    "set_knobs",
]
