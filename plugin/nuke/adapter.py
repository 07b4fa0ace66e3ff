"""The Nuke adapter: what the buttons of ``gizmos/FRDM.gizmo`` call.

Flow of "Restore range" (and "Preview frame", one frame):

1. main thread: read the knobs into parameters (the schema validates them; an animated knob is refused; a
   colour space of ``auto`` becomes the script's working space and OCIO config), work out the frames needed
   (targets plus temporal context, clamped to the Source input's range), and render the Source (and Mask)
   inputs with a temporary Write node: EXR, only the channels the server needs, full frame (a Crop to the
   format, so the data window is the frame), full resolution even in proxy mode, once per view of a
   stereo script. This render runs on Nuke's main thread: Nuke waits until the inputs are written;
2. a worker thread (``FrdmNode.render``) sends them to the server, as paths when it shares storage with
   the workstation, else inline, and stages the results;
3. a watcher thread mirrors progress into a ``nuke.ProgressTask`` (its cancel button cancels the job);
4. back on the main thread (``nuke.executeInMainThread``): the internal Read ``FRDM_Result`` is pointed at
   the results only if the whole job succeeded; otherwise the status line and a message say why.

Nuke's main thread never waits on the server. Jobs belong to the node's ``frdm_node_id`` (made on creation, new
for a pasted copy), and every callback gets the node object, not its name: renaming a node mid-render keeps
its results, and a new script's ``FRDM1`` never sees another script's job. In ``nuke -t`` (no GUI) the same
calls run to completion and raise on failure, so a farm task or a script can use them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import nuke

from frdm.engine.errors import FrdmError, InputError, ParamError
from frdm.engine.frames import SequencePattern
from frdm.engine.params import SCHEMA
from frdm.engine.params import load_preset as _load_preset_file
from frdm.engine.params import save_preset as _save_preset_file
from frdm.plugin import farm
from frdm.plugin.node import FrdmNode, Inputs, RenderError, RenderJob, RenderResult, check_range, frames_needed
from frdm.plugin.nuke.gizmo import DEFAULT_SERVER, FARM_CHUNK, KNOB_PREFIX, knob_name

RESULT_READ = "FRDM_Result"
SOURCE_INPUT = "Source"
MASK_INPUT = "Mask"
PRESET_SUFFIX = ".frdm.json"
_EXR_DATATYPE = "16 bit half"  # scans rarely carry more than 12 bits; half keeps transfers small
# ZIP (lossless, 16 scanlines): with compression 'same' the restored frames take these files' compression,
# and uncompressed results would take ~3x the disk of the user's own frames. server/exrfile.py reads and
# writes ZIP without OpenImageIO (it costs ~0.3 s more per 2K frame than uncompressed).
_EXR_COMPRESSION = "zip"

#: Seconds to wait for the server (per try) and extra tries: a missing server is reported in ~20 s.
TIMEOUT = 10.0
RETRIES = 1

# One FrdmNode per gizmo and view, keyed by (frdm_node_id, view): it keeps the running job for Cancel.
_NODES: dict[tuple[str, str], FrdmNode] = {}
#: Hidden knobs the adapter adds to gizmos saved before they existed (name -> Nuke knob class).
_NODE_ID = f"{KNOB_PREFIX}node_id"
#: Seconds between status-line updates while a job runs (the end of the job is seen at once, not at the next).
STATUS_INTERVAL = 0.2


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
        if knob.isAnimated() or knob.hasExpression():
            # value() would silently be the current frame's value; a shot's parameters are one value each.
            raise ParamError(
                f"{node.name()}: the knob '{p.knob_label}' is animated (keys or an expression); FRDM parameters "
                "hold one value for the whole range: remove the animation (or restore the range in parts)"
            )
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
    """The gizmo's onCreate: add knobs a newer schema has and an older saved script lacks, and give the node
    an id of its own (a pasted copy carries its original's id: it gets a new one)."""
    if node.knob(_NODE_ID) is None:
        id_knob = nuke.String_Knob(_NODE_ID, "node_id")
        id_knob.setVisible(False)
        node.addKnob(id_knob)
    current = str(_knob(node, _NODE_ID).value())
    others = {
        str(n.knob(_NODE_ID).value())  # type: ignore[union-attr]
        for n in nuke.allNodes(node.Class(), nuke.root(), recurseGroups=True)
        if n is not node and n.knob(_NODE_ID) is not None
    }
    if not current or current in others:
        _knob(node, _NODE_ID).setValue(uuid.uuid4().hex)
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


def node_id(node: nuke.Node) -> str:
    """The node's stable id (``frdm_node_id``), made now for a node created before ids existed."""
    knob = node.knob(_NODE_ID)
    if knob is None or not str(knob.value()):
        on_create(node)
    return str(_knob(node, _NODE_ID).value())


def script_colour() -> dict[str, str]:
    """The script's colour management as parameters: its working space and OCIO config (Project Settings >
    Color). Nuke's own colour management works in scene-linear with Rec.709 primaries."""
    root = nuke.root()
    management = root.knob("colorManagement")
    if management is None or str(management.value()) != "OCIO":
        return {"colorspace": "linear"}
    working = root.knob("workingSpaceLUT")
    space = str(working.value()).strip() if working is not None else ""
    if not space:
        raise InputError("the script uses OCIO but has no working space (Project Settings > Color)")
    return {"colorspace": space, "ocio_config": _script_ocio_config()}


def _script_ocio_config() -> str:
    root = nuke.root()
    choice = root.knob("OCIO_config")
    name = str(choice.value()).strip() if choice is not None else ""
    if name == "custom" or not name:
        custom = root.knob("customOCIOConfigPath")
        path = _evaluate(custom) if custom is not None else ""
        if not path:
            env_config = os.environ.get("OCIO", "")
            if env_config:
                return env_config
            raise InputError("the script's custom OCIO config path is empty (Project Settings > Color)")
        return os.path.abspath(path)
    if os.environ.get("OCIO"):
        return os.environ["OCIO"]  # Nuke itself uses $OCIO over the Project Settings choice
    if name.startswith("ocio://"):
        return name
    # Nuke's bundled configs: <install>/plugins/OCIOConfigs/configs/<name>/config.ocio
    bundled = os.path.join(os.path.dirname(nuke.EXE_PATH), "plugins", "OCIOConfigs", "configs", name, "config.ocio")
    if not os.path.isfile(bundled):
        raise InputError(
            f"cannot find the script's OCIO config '{name}' (looked for {bundled}); set the node's "
            "'ocio config' and 'colorspace' knobs to override the script's colour management"
        )
    return bundled


def resolved_params(node: nuke.Node) -> dict[str, Any]:
    """The knobs as parameters, with ``colorspace`` 'auto' taken from the script's colour management (the
    pixels a Write renders with ``raw`` are in the script's working space). A colour space set on the knob
    overrides the script's."""
    params = params_from_knobs(node)
    if params["colorspace"] != "auto":
        return params
    return SCHEMA.update(params, script_colour())


def frdm_node(node: nuke.Node, view: str = "") -> FrdmNode:
    """The FrdmNode behind a gizmo (and view), its parameters and server address refreshed from the knobs."""
    key = (node_id(node), view)
    fn = _NODES.get(key)
    address = str(_knob(node, f"{KNOB_PREFIX}server").value()).strip() or DEFAULT_SERVER
    if fn is None:
        fn = _NODES[key] = FrdmNode(address, timeout=TIMEOUT, retries=RETRIES)
    fn.set_address(address)
    fn.timeout, fn.retries = TIMEOUT, RETRIES
    fn.params = resolved_params(node)
    return fn


# --- paths ------------------------------------------------------------------------------------------------


_VERSION = re.compile(r"[._-]v\d+(?=$|[._-])", re.IGNORECASE)
_EVAL_SCRATCH = f"{KNOB_PREFIX}output_eval"
#: Tokens Nuke's evaluate() would replace with the current frame or view; kept as they are.
_TOKENS = re.compile(r"#+|%0?\d*d|%[Vv]")


def _evaluate(knob: nuke.Knob) -> str:
    """A file knob's text with TCL and environment variables expanded (Nuke's ``evaluate()``), keeping the
    frame padding and view tokens that evaluate() would fill in for the current frame and view."""
    raw = str(knob.value()).strip()
    if not raw or not hasattr(knob, "evaluate"):
        return raw
    tokens = _TOKENS.findall(raw)
    if not tokens:
        return str(knob.evaluate()).strip()  # type: ignore[attr-defined]
    node = knob.node()
    scratch = node.knob(_EVAL_SCRATCH)
    if scratch is None:
        scratch = nuke.File_Knob(_EVAL_SCRATCH, "output_eval")
        scratch.setVisible(False)
        node.addKnob(scratch)
    marks = [f"@FRDM{i}@" for i in range(len(tokens))]
    parts = _TOKENS.split(raw)
    with _unmodified():
        scratch.setValue("".join(p + (marks[i] if i < len(marks) else "") for i, p in enumerate(parts)))
        text = str(scratch.evaluate()).strip()  # type: ignore[attr-defined]
        scratch.setValue("")
    for mark, token in zip(marks, tokens):
        text = text.replace(mark, token)
    return text


def script_dir() -> str | None:
    name = nuke.root().name()
    if not name or name == "Root":
        return None  # an unsaved script
    return os.path.dirname(os.path.abspath(name))


def views() -> list[str]:
    """The script's views; one entry for a mono script."""
    return [str(v) for v in nuke.views()] or ["main"]


def view_path(pattern: str, view: str) -> str:
    """``pattern`` with Nuke's view tokens for ``view``: %V the name, %v its first letter."""
    return pattern.replace("%V", view).replace("%v", view[:1])


def output_pattern(node: nuke.Node) -> str:
    """The result sequence: the ``output`` knob (evaluated: TCL and $ENV expand), or
    frdm/<script>/<node>/<node>.####.exr next to the script (a temporary folder for an unsaved script).
    In a script with several views it holds %V (or %v): one sequence per view."""
    chosen = _evaluate(_knob(node, f"{KNOB_PREFIX}output"))
    stereo = len(views()) > 1
    if chosen:
        pattern = SequencePattern.parse(view_path(chosen, "main"))
        if not pattern.is_sequence or not pattern.suffix.lower().endswith(".exr"):
            raise InputError(f"{node.name()}: output '{chosen}' must be an EXR sequence such as name.####.exr")
        if stereo and "%V" not in chosen and "%v" not in chosen:
            raise InputError(
                f"{node.name()}: the script has views {', '.join(views())} but the output '{chosen}' has no "
                "%V: put %V (or %v) in the file name so each view gets its own sequence"
            )
        return os.path.abspath(chosen)
    where = script_dir()
    if where is None:
        base = os.path.join(tempfile.gettempdir(), "frdm", "untitled")
    else:
        script = os.path.splitext(os.path.basename(nuke.root().name()))[0]
        base = os.path.join(where, "frdm", script)
    name = f"{node.name()}.%V.####.exr" if stereo else f"{node.name()}.####.exr"
    return os.path.join(base, node.name(), name)


def preset_path(node: nuke.Node) -> str:
    """Per-shot preset next to the script: <script without its version>.<node>.frdm.json, so versioning
    the script up (sh010_comp_v001.nk -> _v002.nk) keeps the shot's preset."""
    name = nuke.root().name()
    if script_dir() is None:
        raise InputError("save the script first: per-shot presets are stored next to the .nk file")
    stem = os.path.splitext(os.path.abspath(name))[0]
    base = os.path.join(os.path.dirname(stem), _VERSION.sub("", os.path.basename(stem)) or os.path.basename(stem))
    return f"{base}.{node.name()}{PRESET_SUFFIX}"


def _legacy_preset_path(node: nuke.Node) -> str:
    # Before presets dropped the version: <script with version>.<node>.frdm.json
    return f"{os.path.splitext(os.path.abspath(nuke.root().name()))[0]}.{node.name()}{PRESET_SUFFIX}"


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


def _write_input(
    node: nuke.Node, input_name: str, channels: str, pattern: str, frames: list[int], view: str = ""
) -> None:
    """Render one of the gizmo's inputs to ``pattern`` (EXR) for ``frames`` (of ``view``) with a temporary
    Write, on the main thread."""
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
                if view:
                    nuke.execute(write, first, last, 1, views=[view])
                else:
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


@contextlib.contextmanager
def full_resolution() -> Iterator[bool]:
    """Proxy mode off while inputs render (a Write in proxy mode renders proxy-sized frames or fails): the
    restorer always sees full resolution. Yields whether proxy mode was on; it is switched back after."""
    root = nuke.root()
    proxy = bool(root.proxy())
    if proxy:
        root.setProxy(False)
    try:
        yield proxy
    finally:
        if proxy:
            root.setProxy(True)


def render_inputs(node: nuke.Node, fn: FrdmNode, targets: list[int], folder: str, view: str = "") -> Inputs:
    """Write the frames ``targets`` need (with context) from the Source and Mask inputs into ``folder``
    (of ``view``; empty: Nuke's current view of a mono script)."""
    available = _input_range(node)
    check_range(targets, available)
    needed = frames_needed(targets, fn.params, available)
    mask_channel = fn.params["mask_channel"]
    channels = "rgb" if not mask_channel else ("rgba" if mask_channel in ("A", "a", "alpha") else "all")
    src = SequencePattern.parse(os.path.join(folder, "source.####.exr"))
    _write_input(node, SOURCE_INPUT, channels, src.pattern, needed, view)
    mask_path = None
    if node.input(1) is not None and fn.params["mask"] == "artist":
        msk = SequencePattern.parse(os.path.join(folder, "mask.####.exr"))
        _write_input(node, MASK_INPUT, "alpha", msk.pattern, needed, view)
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


@contextlib.contextmanager
def _unmodified() -> Iterator[None]:
    """Knob writes that are bookkeeping, not edits: the script's modified flag stays as it was."""
    root = nuke.root()
    was = bool(root.modified())
    try:
        yield
    finally:
        if not was:
            root.setModified(False)


def set_status(node: nuke.Node, text: str) -> None:
    """Set the status line (main thread). The node object, not its name: a name does not resolve from inside
    the gizmo's group (where the buttons run) and changes when the artist renames the node. A node deleted
    meanwhile is ignored. The status is not an edit: the script is not marked modified."""
    try:
        knob = node.knob(f"{KNOB_PREFIX}status")
    except ValueError:  # "A PythonObject is not attached to a node": deleted
        return
    if knob is None or str(knob.value()) == text:
        return
    with _unmodified():
        knob.setValue(text)


def _load_results(node: nuke.Node, pattern: str, first: int, last: int) -> None:
    # The internal Read's file/first/last are expressions of these knobs of the gizmo (saved with the script).
    _knob(node, f"{KNOB_PREFIX}result_file").setValue(pattern)
    _knob(node, f"{KNOB_PREFIX}result_first").setValue(first)
    _knob(node, f"{KNOB_PREFIX}result_last").setValue(last)
    _knob(node, f"{KNOB_PREFIX}loaded").setValue(True)
    reload = _inside(node, RESULT_READ).knob("reload")
    if isinstance(reload, nuke.Script_Knob):
        reload.execute()  # same file names as an earlier render: make Nuke drop its cached images


class ViewJobs:
    """The jobs of one button press: one RenderJob per view (one for a mono script), seen as one."""

    def __init__(self, jobs: Mapping[str, RenderJob]):
        self.jobs = dict(jobs)

    def running(self) -> bool:
        return any(j.running() for j in self.jobs.values())

    def join(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds for every view's job to end (``RenderJob.join``): whether they have."""
        deadline = time.monotonic() + timeout
        return all(j.join(max(0.0, deadline - time.monotonic())) for j in self.jobs.values())

    @property
    def progress(self) -> tuple[float, float, str]:
        parts = [j.progress for j in self.jobs.values()]
        return sum(p[0] for p in parts), sum(p[1] for p in parts), parts[-1][2]

    @property
    def state(self) -> str:
        states = [j.state for j in self.jobs.values()]
        for s in ("running", "error", "cancelled"):
            if s in states:
                return s
        return "done"

    @property
    def error(self) -> RenderError | None:
        return next((j.error for j in self.jobs.values() if j.error is not None and j.state == "error"), None) or (
            next((j.error for j in self.jobs.values() if j.error is not None), None)
        )

    @property
    def result(self) -> RenderResult | None:
        """The first view's result (every view restores the same frames)."""
        return next(iter(self.jobs.values())).result

    @property
    def cached(self) -> int:
        return sum(len(j.result.cached) for j in self.jobs.values() if j.result is not None)

    def cancel(self) -> None:
        for j in self.jobs.values():
            j.cancel()

    def wait(self, timeout: float | None = None) -> RenderResult | None:
        for j in self.jobs.values():
            j.wait(timeout)
        return self.result


def finish(node: nuke.Node, job: ViewJobs, pattern: str, inputs_dir: str) -> None:
    """Main thread, once per button press: load complete results (every view's), or report why there are
    none."""
    shutil.rmtree(inputs_dir, ignore_errors=True)
    try:
        name = node.name()
    except ValueError:
        return  # the node was deleted meanwhile
    result = job.result
    if job.state == "done" and result is not None:
        frames = sorted(result.frames)
        _load_results(node, pattern, frames[0], frames[-1])
        cached = f", {job.cached} from cache" if job.cached else ""
        views_note = f", {len(job.jobs)} views" if len(job.jobs) > 1 else ""
        set_status(
            node,
            f"restored {frames[0]}-{frames[-1]} ({len(frames)} frames{views_note}{cached}, {result.seconds:.1f} s)",
        )
        return
    error = job.error or RenderError("internal", "the render ended without a result")
    if error.code == "cancelled":
        set_status(node, "cancelled; nothing was loaded")
        return
    set_status(node, f"error: {error}")
    if _gui():
        nuke.message(f"FRDM ({name}): {error}")


# --- actions (the buttons) --------------------------------------------------------------------------------


def _watch(node: nuke.Node, job: ViewJobs, pattern: str, inputs_dir: str, title: str) -> None:
    """Worker side: mirror progress into a ProgressTask; its cancel button cancels the job."""
    task = nuke.ProgressTask(title)
    last = ""
    try:
        while job.running():
            if task.isCancelled():
                job.cancel()
            done, total, message = job.progress
            task.setProgress(int(100 * done / total) if total else 0)
            task.setMessage(message)
            text = f"{message} ({done:.1f}/{total:g})" if total else message
            if text != last:  # only real changes reach the main thread
                _on_main(set_status, node, text)
                last = text
            job.join(STATUS_INTERVAL)  # not a sleep: the results are loaded as soon as the job ends
    finally:
        del task  # closes the progress window
    _on_main(finish, node, job, pattern, inputs_dir)


def _report_refusal(node: nuke.Node, exc: FrdmError) -> None:
    set_status(node, f"error: {exc}")
    if _gui():
        nuke.message(f"FRDM ({node.name()}): {exc}")
        raise RenderError(getattr(exc, "code", "bad_input") or "bad_input", str(exc)) from None
    raise exc


def _start(node: nuke.Node, targets: list[int], title: str) -> ViewJobs:
    names = views()
    stereo = len(names) > 1
    started: dict[str, RenderJob] = {}
    try:
        fns = {v: frdm_node(node, v if stereo else "") for v in names}
        if any(fn.job is not None and fn.job.running() for fn in fns.values()):
            raise RenderError("busy", f"{node.name()} is already rendering; wait for it or press Cancel")
        pattern = output_pattern(node)
        out_dir = os.path.dirname(view_path(pattern, names[0]))
        inputs_dir = os.path.join(out_dir, f".frdm-inputs-{uuid.uuid4().hex[:12]}")
        try:
            set_status(node, "rendering the inputs on Nuke's main thread (Nuke waits until they are written)")
            with full_resolution(), _unmodified():  # temporary nodes and the proxy switch are no edits
                inputs = {
                    v: render_inputs(node, fns[v], targets, os.path.join(inputs_dir, v), v if stereo else "")
                    for v in names
                }
            for v in names:
                started[v] = fns[v].render(targets, inputs[v], view_path(pattern, v))
        except BaseException:
            for j in started.values():
                j.cancel()
            for j in started.values():
                with contextlib.suppress(Exception):
                    j.wait(30)
            shutil.rmtree(inputs_dir, ignore_errors=True)
            raise
    except FrdmError as exc:  # refused before anything was sent: say so, load nothing
        _report_refusal(node, exc)
        raise  # not reached: _report_refusal raises
    job = ViewJobs(started)
    address = next(iter(fns.values())).address
    per_view = f" x {len(names)} views" if stereo else ""
    set_status(node, f"sending {len(targets)} frame(s){per_view} to {address}")
    if _gui():
        threading.Thread(target=_watch, args=(node, job, pattern, inputs_dir, title), daemon=True).start()
        return job
    # nuke -t: no event loop to come back to; run to the end here and raise on failure.
    with contextlib.suppress(RenderError):
        job.wait()
    finish(node, job, pattern, inputs_dir)
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


def restore_range(node: nuke.Node, first: int | None = None, last: int | None = None) -> ViewJobs | None:
    """The "Restore range" button (and the batch entry point with explicit frames)."""
    try:
        targets = list(range(first, last + 1)) if first is not None and last is not None else _frame_range(node)
    except FrdmError as exc:
        set_status(node, f"error: {exc}")
        if _gui():
            nuke.message(f"FRDM ({node.name()}): {exc}")
            return None
        raise
    return _start_or_none(node, targets, f"FRDM {node.name()}: restoring {targets[0]}-{targets[-1]}")


def preview_frame(node: nuke.Node, frame: int | None = None) -> ViewJobs | None:
    """The "Preview frame" button: the current frame, with its context."""
    f = int(nuke.frame()) if frame is None else int(frame)
    return _start_or_none(node, [f], f"FRDM {node.name()}: previewing frame {f}")


def _start_or_none(node: nuke.Node, targets: list[int], title: str) -> ViewJobs | None:
    try:
        return _start(node, targets, title)
    except RenderError:
        if _gui():
            return None  # already shown to the artist
        raise


def cancel(node: nuke.Node) -> None:
    """The "Cancel" button: stops the running job (nothing partial is loaded)."""
    ident = node_id(node)
    running = [fn for (nid, _), fn in _NODES.items() if nid == ident and fn.job is not None and fn.job.running()]
    for fn in running:
        fn.cancel()
    set_status(node, "cancelling..." if running else "nothing to cancel")


def save_preset(node: nuke.Node, path: str | None = None) -> str:
    """The "Save preset" button: the knobs that differ from the defaults, next to the script."""
    try:
        target = path or preset_path(node)
        _save_preset_file(target, params_from_knobs(node))
    except (FrdmError, OSError) as exc:
        _report(node, f"cannot save the preset: {exc}")
        return ""
    set_status(node, f"preset saved: {os.path.basename(target)}")
    return target


def load_preset(node: nuke.Node, path: str | None = None) -> dict[str, Any]:
    """The "Load preset" button: knobs from the shot's preset (absent values return to the defaults)."""
    try:
        target = path or preset_path(node)
        if path is None and not os.path.exists(target) and os.path.exists(_legacy_preset_path(node)):
            target = _legacy_preset_path(node)  # saved before presets dropped the script version
        values = _load_preset_file(target)
        full = {**SCHEMA.defaults(), **values}
        set_knobs(node, full)
    except (FrdmError, OSError) as exc:
        _report(node, f"cannot load the preset: {exc}")
        return {}
    set_status(node, f"preset loaded: {os.path.basename(target)}")
    return values


def submit_to_farm(node: nuke.Node) -> farm.WrittenJob | None:
    """The "Submit to farm" button: the same job bundle as ``frdm submit`` (``farm.write_job``). The farm has
    no Nuke: the node's Source (and Mask) inputs are rendered here, once, for the frame range and its context
    (full resolution), into ``farm_inputs/`` beside the output, and the job restores those files with the
    node's parameters (colour resolved from the script)."""
    try:
        names = views()
        if len(names) > 1:
            raise InputError(
                f"{node.name()}: the farm job restores one view; switch the script to one view, or submit each "
                "view's sequence with frdm submit"
            )
        fn = frdm_node(node)
        targets = _frame_range(node)
        pattern = output_pattern(node)
        out_dir = os.path.dirname(pattern)
        job_dir = _evaluate(_knob(node, f"{KNOB_PREFIX}farm_job_dir")) or os.path.join(out_dir, "farm_job")
        chunk = node.knob(f"{KNOB_PREFIX}farm_chunk")
        command = node.knob(f"{KNOB_PREFIX}farm_command")
        set_status(node, "rendering the inputs for the farm on Nuke's main thread")
        with full_resolution():
            inputs = render_inputs(node, fn, targets, os.path.join(out_dir, "farm_inputs"))
        source = inputs.source(inputs.available[0])
        assert isinstance(source, str)
        src_pattern = os.path.join(os.path.dirname(source), "source.####.exr")
        mask_pattern = os.path.join(os.path.dirname(source), "mask.####.exr") if inputs.mask is not None else None
        job = farm.FarmJob(
            src_pattern,
            pattern,
            targets,
            fn.params,
            chunk_size=int(chunk.value()) if chunk is not None else FARM_CHUNK,
            name=node.name(),
            mask=mask_pattern,
            command=shlex.split(str(command.value()) if command is not None else "") or ["frdm"],
        )
        written = farm.write_job(job, job_dir)
    except (FrdmError, OSError) as exc:
        _report(node, f"cannot write the farm job: {exc}")
        return None
    set_status(node, f"farm job written: {written.folder}")
    return written


def _report(node: nuke.Node, text: str) -> None:
    set_status(node, f"error: {text}")
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
    "resolved_params",
    "save_preset",
    "script_colour",
    "set_knobs",
    "submit_to_farm",
    "views",
]
