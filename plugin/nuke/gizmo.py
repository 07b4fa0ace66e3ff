"""The text of ``gizmos/FRDM.gizmo``, generated from the parameter schema (pure Python, no ``nuke``).

The gizmo's knobs are the schema's parameters (``frdm_<name>``), so a parameter added to
``engine/params.py`` reaches the artist by regenerating the file:

    python -m frdm.plugin.nuke.gizmo > gizmos/FRDM.gizmo

tests/test_nuke.py fails when the committed gizmo and this generator disagree.

Inside the group: ``Source`` (input 0) and ``Mask`` (input 1) feed the temporary Write nodes the adapter
makes; ``FRDM_Result`` is the Read the adapter points at complete results; ``FRDM_Copy`` copies the restored
RGB (and the ``frdm.matte`` channel) from it over the Source stream, so alpha, every other layer and the
Source's bounding box pass through untouched; ``FRDM_Switch`` shows that copy on the restored frames and the
Source elsewhere (and before anything was restored).

The ``onCreate`` guards its import: a script holding the node opens on a machine without the frdm package (a
render node that only reads the results) and the node passes its input through.
"""

from __future__ import annotations

import sys

from frdm.engine.params import SCHEMA, Param

KNOB_PREFIX = "frdm_"
DEFAULT_SERVER = "tcp://127.0.0.1:5555"

# Nuke's addUserKnob type numbers.
_STRING, _FILE, _INT, _ENUM, _BOOL, _DOUBLE, _TAB, _PYSCRIPT, _TEXT = 1, 2, 3, 4, 6, 7, 20, 22, 26

#: The adapter's actions, one PyScript button each.
BUTTONS = (
    ("restore", "Restore range", "restore_range"),
    ("preview", "Preview frame", "preview_frame"),
    ("cancel", "Cancel", "cancel"),
)
PRESET_BUTTONS = (
    ("load_preset", "Load preset", "load_preset"),
    ("save_preset", "Save preset", "save_preset"),
    ("submit", "Submit to farm", "submit_to_farm"),
)
#: Frames per farm task when "Submit to farm" writes the job (``frdm submit --chunk-size``).
FARM_CHUNK = 8

#: Nuke's meaning of the schema's ``auto`` colour space: the script's own colour management.
_COLOR_NOTE = " In Nuke, 'auto' is the script's working space and OCIO config (Project Settings > Color)."

#: The gizmo's onCreate. The import is guarded: opening a script with the node where frdm is not installed
#: (a render node reading only the results) must not raise.
ON_CREATE = (
    "try:\n"
    "    import frdm.plugin.nuke.adapter as frdm_adapter\n"
    "except ImportError:\n"
    "    nuke.tprint('FRDM: the frdm package is not importable here; the node passes its input through')\n"
    "else:\n"
    "    frdm_adapter.on_create(nuke.thisNode())"
)


_OUTPUT_TIP = (
    "result sequence (name.####.exr; %V for the view in a stereo script; TCL and $ENV expand); "
    "empty = frdm/<script>/<node>/ next to the script"
)


def knob_name(param: str) -> str:
    return KNOB_PREFIX + param


def quote(text: str) -> str:
    """A Nuke/TCL double-quoted string: nothing inside is substituted."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("[", "\\[").replace("]", "\\]")
    out = out.replace("$", "\\$").replace("{", "\\{").replace("}", "\\}")
    return '"' + out.replace("\n", "\\n") + '"'


def _value(p: Param, value: object) -> str:
    if p.kind == "bool":
        return "true" if value else "false"
    if p.kind in ("str", "choice"):
        return quote(str(value))
    return repr(value)


def _slider_max(p: Param) -> float:
    # A slider spanning e.g. 0..10_000_000 is useless; the field still accepts anything in range.
    top = p.maximum if p.maximum is not None else 1.0
    return min(top, max(4.0 * float(p.default or 1), (p.minimum or 0.0) + 1.0))


def param_knob_lines(p: Param) -> list[str]:
    name, label = knob_name(p.name), quote(p.knob_label)
    note = _COLOR_NOTE if p.name == "colorspace" else ""
    tip = quote(f"{p.help} (engines: {', '.join(p.engines)}).{note}")
    if p.kind == "bool":
        head = f"addUserKnob {{{_BOOL} {name} l {label} t {tip} +STARTLINE}}"
    elif p.kind == "int":
        head = f"addUserKnob {{{_INT} {name} l {label} t {tip}}}"
    elif p.kind == "float":
        lo = p.minimum if p.minimum is not None else 0.0
        head = f"addUserKnob {{{_DOUBLE} {name} l {label} t {tip} R {lo:g} {_slider_max(p):g}}}"
    elif p.kind == "choice":
        head = f"addUserKnob {{{_ENUM} {name} l {label} t {tip} M {{{' '.join(p.choices)}}}}}"
    else:
        head = f"addUserKnob {{{_STRING} {name} l {label} t {tip}}}"
    return [head, f"{name} {_value(p, p.default)}"]  # the schema's default: no host has its own


def _button(key: str, label: str, func: str, startline: bool) -> str:
    script = f"import frdm.plugin.nuke.adapter as frdm_adapter\nfrdm_adapter.{func}(nuke.thisNode())"
    flag = " +STARTLINE" if startline else ""
    return f"addUserKnob {{{_PYSCRIPT} {KNOB_PREFIX}{key} l {quote(label)} T {quote(script)}{flag}}}"


def gizmo_text() -> str:
    k = KNOB_PREFIX
    user = [
        f"addUserKnob {{{_TAB} {k}tab l FRDM}}",
        f"addUserKnob {{{_STRING} {k}server l server t "
        f"{quote('address of the FRDM server (frdm serve), e.g. tcp://127.0.0.1:5555')}}}",
        f"{k}server {DEFAULT_SERVER}",
        f"addUserKnob {{{_INT} {k}first l {quote('frame range')} t "
        f"{quote('first frame to restore (0 and 0 = the Source input range)')}}}",
        f'addUserKnob {{{_INT} {k}last l "" -STARTLINE t {quote("last frame to restore")}}}',
        f"addUserKnob {{{_FILE} {k}output l output t {quote(_OUTPUT_TIP)}}}",
    ]
    user += [_button(key, label, func, i == 0) for i, (key, label, func) in enumerate(BUTTONS)]
    user += [
        f"addUserKnob {{{_TEXT} {k}status l status T idle}}",
        *(_button(key, label, func, i == 0) for i, (key, label, func) in enumerate(PRESET_BUTTONS)),
    ]
    user += [
        f"addUserKnob {{{_FILE} {k}farm_job_dir l {quote('farm job folder')} t "
        f"{quote('where Submit to farm writes the job bundle; empty = farm_job/ beside the output')}}}",
        f"addUserKnob {{{_INT} {k}farm_chunk l {quote('farm chunk')} t {quote('frames per farm task')}}}",
        f"{k}farm_chunk {FARM_CHUNK}",
        f"addUserKnob {{{_STRING} {k}farm_command l {quote('farm command')} t "
        f"{quote('how a render node starts frdm (e.g. /opt/frdm/bin/frdm)')}}}",
        f"{k}farm_command frdm",
    ]
    # Bookkeeping the adapter writes: which results the internal Read shows (hidden). The Read's knobs are
    # expressions of these because Nuke does not save knob values of nodes inside a gizmo, only its own.
    # node_id names the node's jobs: stable across renames, new for a new (or pasted) node.
    user += [
        f"addUserKnob {{{_STRING} {k}node_id l node_id +INVISIBLE}}",
        # scratch for evaluating the output knob's TCL and $ENV with its #### and %V kept (adapter._evaluate)
        f"addUserKnob {{{_FILE} {k}output_eval l output_eval +INVISIBLE}}",
        f"addUserKnob {{{_STRING} {k}result_file l result_file +INVISIBLE}}",
        f"addUserKnob {{{_BOOL} {k}loaded l loaded +INVISIBLE}}",
        f"addUserKnob {{{_INT} {k}result_first l result_first +INVISIBLE}}",
        f"addUserKnob {{{_INT} {k}result_last l result_last +INVISIBLE}}",
    ]
    groups = list(dict.fromkeys(p.group for p in SCHEMA))
    for group in groups:
        user.append(f"addUserKnob {{{_TAB} {k}tab_{group} l {quote(group)}}}")
        for p in SCHEMA:
            if p.group == group:
                user += param_knob_lines(p)
    switch = f"parent.{k}loaded && frame >= parent.{k}result_first && frame <= parent.{k}result_last"
    lines = [
        "version 13.2 v1",
        "add_layer {frdm frdm.matte}",
        "Gizmo {",
        " inputs 2",
        f" help {quote('FRDM film restoration: sends Source (and Mask) to an FRDM server and loads the result.')}",
        f" onCreate {quote(ON_CREATE)}",
        " tile_color 0x7a5c3aff",
        *(" " + line for line in user),
        "}",
        " Input {",
        "  inputs 0",
        "  name Mask",
        "  number 1",
        "  xpos 200",
        "  ypos -100",
        " }",
        " Read {",
        "  inputs 0",
        f"  file {{[value parent.{k}result_file]}}",
        f"  first {{{{parent.{k}result_first}}}}",
        f"  last {{{{parent.{k}result_last}}}}",
        f"  origfirst {{{{parent.{k}result_first}}}}",
        f"  origlast {{{{parent.{k}result_last}}}}",
        "  name FRDM_Result",
        "  raw true",
        "  on_error black",
        "  xpos 100",
        "  ypos 0",
        " }",
        " Input {",
        "  inputs 0",
        "  name Source",
        "  xpos 0",
        "  ypos -100",
        " }",
        " set N_source [stack 0]",
        # Copy: input 0 (B, the stream kept) = Source, input 1 (A) = FRDM_Result. Only the restored RGB and
        # the matte come from A; alpha, other layers and the bounding box stay the Source's.
        " Copy {",
        "  inputs 2",
        "  from0 rgba.red",
        "  to0 rgba.red",
        "  from1 rgba.green",
        "  to1 rgba.green",
        "  from2 rgba.blue",
        "  to2 rgba.blue",
        "  from3 frdm.matte",
        "  to3 frdm.matte",
        "  bbox B",
        "  name FRDM_Copy",
        "  xpos 100",
        "  ypos 50",
        " }",
        " push $N_source",
        " Switch {",  # input 0 (top of the stack) = Source, input 1 = FRDM_Copy
        "  inputs 2",
        f"  which {{{{{switch}}}}}",
        "  name FRDM_Switch",
        "  xpos 0",
        "  ypos 100",
        " }",
        " Output {",
        "  name Output1",
        "  xpos 0",
        "  ypos 200",
        " }",
        "end_group",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(gizmo_text())
