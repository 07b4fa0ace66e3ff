"""A small recording fake of the ``nuke`` module, enough to run plugin/nuke/adapter.py without Nuke.

Kept honest two ways: tests/test_nuke.py checks that every public name and method defined here exists in
the published stubs (PyPI ``types-nuke``) with the same class ancestry, and mypy type-checks the adapter
against those stubs. What a real Nuke does that this fake does not: image processing. A Write "renders" by
copying the files of the Read upstream (through Crop and the gizmo's Input nodes), which is what the
adapter's data path needs. Test-only helpers start with ``fake_``.

Threads: ``executeInMainThread`` from a worker queues the call; the test's main thread runs the queue with
``fake_pump``. Every knob write records its thread, so a test can assert the UI is touched on the main
thread only.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

calls: list[tuple[Any, ...]] = []
EXE_PATH = "/opt/Nuke15.1v1/Nuke15.1"  # Nuke's executable; its bundled OCIO configs lie beside it
env: dict[str, Any] = {"gui": False}
_queue: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
_lock = threading.Lock()
_frame = [1]
_views: list[str] = ["main"]
_modified = [False]
_undo: list[tuple[str, str]] = []
_context: list[Group] = []
_progress_cancel = threading.Event()
knob_writes_off_main: list[str] = []


# --- knobs ------------------------------------------------------------------------------------------------


class Knob:
    def __init__(self, name: str = "", label: str = "", value: Any = None):
        self._name, self._label, self._value, self._tooltip = name, label or name, value, ""
        self._node: Node | None = None
        self._animated = False  # fake_animate: keys or an expression

    def name(self) -> str:
        return self._name

    def isAnimated(self, channel: int = 0) -> bool:
        return self._animated

    def hasExpression(self, index: int = 0) -> bool:
        return self._animated

    def label(self) -> str:
        return self._label

    def value(self, index: int = 0) -> Any:
        return self._value

    def getValue(self, channel: int = 0) -> Any:
        return self._value

    def setValue(self, val: Any, chan: int = 0) -> bool:
        if threading.current_thread() is not threading.main_thread():
            knob_writes_off_main.append(self._name)
        if self._node is not None:
            self._node._check_alive()
        self._value = val
        _modified[0] = True  # as in Nuke: any knob change marks the script modified
        calls.append(("setValue", self._node.name() if self._node else None, self._name, val))
        return True

    def setTooltip(self, tooltip: str) -> None:
        self._tooltip = tooltip

    def setVisible(self, visible: bool) -> None:
        self._visible = bool(visible)

    def tooltip(self) -> str:
        return self._tooltip

    def node(self) -> Node:
        assert self._node is not None
        return self._node


class Array_Knob(Knob):
    pass


class Int_Knob(Array_Knob):
    def value(self, index: int = 0) -> Any:
        return int(self._value or 0)


class Double_Knob(Array_Knob):
    def value(self, index: int = 0) -> Any:
        return float(self._value or 0.0)


class Boolean_Knob(Array_Knob):
    def value(self, index: int = 0) -> Any:
        return bool(self._value)


class Unsigned_Knob(Knob):
    pass


class Enumeration_Knob(Unsigned_Knob):
    def __init__(self, name: str = "", label: str = "", items: list[str] | None = None):
        super().__init__(name, label, (items or [""])[0])
        self._items = list(items or [])

    def values(self) -> list[str]:
        return list(self._items)

    def setValue(self, val: Any, chan: int = 0) -> bool:
        if val not in self._items:
            raise ValueError(f"{self._name}: {val!r} is not one of {self._items}")
        return super().setValue(val)


class String_Knob(Knob):
    def value(self, index: int = 0) -> Any:
        return "" if self._value is None else str(self._value)


class EvalString_Knob(String_Knob):
    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """As Nuke: TCL ``[value root.name]``, environment variables, and the current frame and view for
        ``####``/``%04d``/``%V``/``%v``."""
        text = os.path.expandvars(self.value())
        text = text.replace("[value root.name]", _root.name())
        text = re.sub(r"#+", lambda m: f"{_frame[0]:0{len(m.group(0))}d}", text)
        text = re.sub(r"%0?(\d*)d", lambda m: f"{_frame[0]:0{int(m.group(1) or 1)}d}", text)
        return text.replace("%V", _views[0]).replace("%v", _views[0][:1])


class File_Knob(EvalString_Knob):
    pass


class Script_Knob(String_Knob):
    def execute(self) -> None:
        calls.append(("execute_knob", self._node.name() if self._node else None, self._name))


class PyScript_Knob(Script_Knob):
    pass


class Text_Knob(Knob):
    pass


class Tab_Knob(Knob):
    pass


# --- nodes ------------------------------------------------------------------------------------------------


class Format:
    def __init__(self, width: int = 64, height: int = 48):
        self._w, self._h = width, height

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h


class Node:
    def __init__(self, cls: str, name: str, parent: Group | None = None, **knobs: Any):
        self._class, self._name, self._parent = cls, name, parent
        self._knobs: dict[str, Knob] = {}
        self._inputs: dict[int, Node] = {}
        self._first, self._last = 1, 1
        self._format = Format()
        self._deleted = False
        for k, v in knobs.items():
            self.addKnob(Knob(k, k, v))

    def _check_alive(self) -> None:
        if self._deleted:  # Nuke's message for a Python object whose node was deleted
            raise ValueError("A PythonObject is not attached to a node")

    def setName(self, name: str, uncollide: bool = True, updateExpressions: bool = False) -> None:
        self._name = name

    def Class(self) -> str:
        return self._class

    def name(self) -> str:
        return self._name

    def fullName(self) -> str:
        return (
            self._name
            if self._parent is None or isinstance(self._parent, Root)
            else f"{self._parent.fullName()}.{self._name}"
        )

    def knob(self, p: str | int, follow_link: bool = True) -> Knob | None:
        self._check_alive()
        return self._knobs.get(str(p))

    def knobs(self) -> dict[str, Knob]:
        return dict(self._knobs)

    def __getitem__(self, name: str) -> Knob:
        return self._knobs[name]

    def addKnob(self, knob: Knob) -> None:
        knob._node = self
        self._knobs[knob.name()] = knob

    def input(self, index: int) -> Node | None:
        return self._inputs.get(index)

    def setInput(self, i: int, node: Node | None) -> bool:
        if node is None:
            self._inputs.pop(i, None)
        else:
            self._inputs[i] = node
        return True

    def firstFrame(self) -> int:
        return self._first

    def lastFrame(self) -> int:
        return self._last

    def format(self) -> Format:
        return self._format


class Group(Node):
    def __init__(self, cls: str, name: str, parent: Group | None = None, **knobs: Any):
        super().__init__(cls, name, parent, **knobs)
        self._children: list[Node] = []

    def nodes(self) -> list[Node]:
        return list(self._children)

    def begin(self) -> Group:
        _context.append(self)
        return self

    def end(self) -> None:
        _context.pop()

    def __enter__(self) -> Group:
        return self.begin()

    def __exit__(self, *exc: Any) -> None:
        self.end()


class Gizmo(Group):
    pass


class Root(Group):
    def __init__(self) -> None:
        super().__init__("Root", "root")
        self._script = ""
        self._proxy = False

    def name(self) -> str:
        return self._script or "Root"

    def proxy(self) -> bool:
        return self._proxy

    def setProxy(self, proxy: bool) -> None:
        calls.append(("setProxy", bool(proxy)))
        self._proxy = bool(proxy)

    def modified(self) -> bool:
        return _modified[0]

    def setModified(self, modified: bool) -> None:
        _modified[0] = bool(modified)


_root = Root()


def _here() -> Group:
    return _context[-1] if _context else _root


class _Nodes:
    """``nuke.nodes.Write()``: a node of that class in the current group."""

    def __getattr__(self, cls: str) -> Callable[..., Node]:
        def make(**knobs: Any) -> Node:
            group = _here()
            taken = {n.name() for n in group._children}
            i = 1
            while f"{cls}{i}" in taken:
                i += 1
            node = Node(cls, f"{cls}{i}", group, **knobs)
            for name in _CLASS_KNOBS.get(cls, ()):
                if node.knob(name) is None:
                    node.addKnob(Script_Knob(name, name) if name == "reload" else Knob(name, name, None))
            group._children.append(node)
            calls.append(("create", cls, node.name()))
            return node

        return make


_CLASS_KNOBS = {
    "Write": ("file", "file_type", "channels", "datatype", "compression", "raw", "create_directories"),
    "Crop": ("box", "crop", "reformat"),
    "Read": ("file", "first", "last", "origfirst", "origlast", "raw", "on_error", "reload"),
}

nodes = _Nodes()


def toNode(s: str) -> Node | None:
    group: Group = _here()
    for part in s.split("."):
        found = next((n for n in group._children if n.name() == part), None)
        if found is None:
            return None
        if isinstance(found, Group):
            group = found
        else:
            return found if part == s.split(".")[-1] else None
    return found


def root() -> Root:
    return _root


def delete(n: Node | None) -> None:
    if n is not None and n._parent is not None and n in n._parent._children:
        n._parent._children.remove(n)
        n._deleted = True
        calls.append(("delete", n.Class(), n.name()))


def allNodes(filter: str | None = None, group: Group | None = None, recurseGroups: bool = False) -> list[Node]:
    out: list[Node] = []
    todo = list((group or _here())._children)
    while todo:
        n = todo.pop(0)
        if filter is None or n.Class() == filter:
            out.append(n)
        if recurseGroups and isinstance(n, Group):
            todo += n._children
    return out


def views() -> list[str]:
    return list(_views)


def tprint(*args: Any, sep: str = " ", end: str = "\n", file: Any = None) -> None:
    calls.append(("tprint", sep.join(str(a) for a in args)))


class Undo:
    """Records begin/end so a test can see what an undo group wraps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def begin(self, name: str = "") -> None:
        _undo.append(("begin", name))

    def end(self) -> None:
        _undo.append(("end", ""))

    def __enter__(self) -> Undo:
        self.begin()
        return self

    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.end()


def frame(f: int | None = None) -> int:
    if f is not None:
        _frame[0] = f
    return _frame[0]


def _upstream_file(node: Node) -> tuple[str, str]:
    """The Read file pattern a node's image comes from (through Crop and the gizmo's Input nodes)."""
    current: Node | None = node
    while current is not None:
        if current.Class() == "Read":
            return str(current.knob("file").value()), current.name()  # type: ignore[union-attr]
        if current.Class() == "Input":
            group = current._parent
            number = int(current.knob("number").value()) if current.knob("number") else 0  # type: ignore[union-attr]
            current = group.input(number) if group is not None else None
            continue
        current = current.input(0)
    raise RuntimeError(f"{node.name()}: nothing upstream to render (an input is not connected)")


def execute(
    nameOrNode: Node | str, start: int, end: int, incr: int = 1, views: Any = None, continueOnError: bool = False
) -> None:
    node = toNode(nameOrNode) if isinstance(nameOrNode, str) else nameOrNode
    assert node is not None and node.Class() == "Write", "only Write nodes are executed"
    pattern, source_name = _upstream_file(node.input(0))  # type: ignore[arg-type]
    out = str(node.knob("file").value())  # type: ignore[union-attr]
    if len(_views) > 1 and (not views or len(views) != 1):
        raise RuntimeError("the fake renders one view at a time: pass views=[name]")
    view = views[0] if views else _views[0]
    calls.append(("execute", out, start, end, node.knob("channels").value(), source_name))  # type: ignore[union-attr]
    if _root._proxy:
        calls.append(("execute_in_proxy", out))  # a real Nuke would render proxy-sized (or fail)
    for f in range(start, end + 1, incr):
        src = _frame_path(pattern.replace("%V", view).replace("%v", view[:1]), f)
        dst = _frame_path(out.replace("%V", view).replace("%v", view[:1]), f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)


def _frame_path(pattern: str, f: int) -> str:
    return re.sub(r"#+", lambda m: f"{f:0{len(m.group(0))}d}", pattern)


def message(prompt: str) -> None:
    calls.append(("message", prompt))


class ProgressTask:
    def __init__(self, title: str = ""):
        self.title = title
        calls.append(("progress_task", title))

    def isCancelled(self) -> bool:
        return _progress_cancel.is_set()

    def setMessage(self, message: str) -> None:
        calls.append(("progress_message", message))

    def setProgress(self, percent: int) -> None:
        calls.append(("progress", percent))


def executeInMainThread(
    call: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> None:
    if not isinstance(args, tuple):
        args = (args,)
    with _lock:
        _queue.append((call, args, dict(kwargs or {})))


class Menu:
    def __init__(self, name: str):
        self._name = name
        self._items: dict[str, Menu] = {}

    def name(self) -> str:
        return self._name

    def addMenu(self, name: str, icon: str = "", **kw: Any) -> Menu:
        calls.append(("addMenu", self._name, name, icon))
        return self._items.setdefault(name, Menu(name))

    def addCommand(self, name: str, command: Any = "", shortcut: str = "", icon: str = "", **kw: Any) -> None:
        calls.append(("addCommand", self._name, name, command, icon))

    def menu(self, name: str) -> Menu | None:
        return self._items.get(name)


_menus: dict[str, Menu] = {}


def menu(name: str) -> Menu:
    return _menus.setdefault(name, Menu(name))


def pluginAddPath(args: str, addToSysPath: bool = True) -> None:
    calls.append(("pluginAddPath", args))


_gizmo_paths: dict[str, str] = {}


def createNode(typ: str, knobs: str = "", inpanel: bool = True) -> Node:
    """A gizmo registered with fake_gizmo_path (as on NUKE_PATH), created in the current group."""
    node = fake_load_gizmo(_gizmo_paths[typ], f"{typ}{sum(n.Class() == typ for n in _root._children) + 1}")
    calls.append(("createNode", typ))
    return node


def fake_gizmo_path(cls: str, path: str) -> None:
    _gizmo_paths[cls] = path


def thisNode() -> Node:
    raise RuntimeError("thisNode() has no meaning outside a knob callback in this fake")


# --- test helpers -----------------------------------------------------------------------------------------


def fake_reset(script: str = "", gui: bool = False) -> None:
    calls.clear()
    _queue.clear()
    knob_writes_off_main.clear()
    _progress_cancel.clear()
    _context.clear()
    _root._children.clear()
    _root._knobs.clear()
    _root._script = script
    _root._proxy = False
    env["gui"] = gui
    _frame[0] = 1
    _views[:] = ["main"]
    _modified[0] = False
    _undo.clear()


def fake_pump(until: Callable[[], bool] | None = None, timeout: float = 30.0) -> None:
    """Run queued main-thread calls (as Nuke's event loop does) until ``until()`` or the queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _lock:
            batch = list(_queue)
            _queue.clear()
        for call, args, kwargs in batch:
            call(*args, **kwargs)
        if until is None and not batch:
            return
        if until is not None and until():
            return
        time.sleep(0.02)
    raise TimeoutError("the main-thread queue did not settle")


def fake_cancel_progress() -> None:
    """The artist presses the ProgressTask's cancel button."""
    _progress_cancel.set()


def fake_views(*names: str) -> None:
    """The script's views (Project Settings > Views), e.g. ``fake_views("left", "right")``."""
    _views[:] = list(names)


def fake_animate(knob: Knob) -> None:
    """Give a knob keys (or an expression), as the artist does with the animation menu."""
    knob._animated = True


def fake_read(name: str, pattern: str, first: int, last: int, fmt: tuple[int, int] = (64, 48)) -> Node:
    node = nodes.Read(file=pattern)
    node._name = name
    node._first, node._last = first, last
    node._format = Format(*fmt)
    return node


_KNOB_TYPES: dict[int, type[Knob]] = {
    1: String_Knob,
    2: File_Knob,
    3: Int_Knob,
    4: Enumeration_Knob,
    6: Boolean_Knob,
    7: Double_Knob,
    20: Tab_Knob,
    22: PyScript_Knob,
    26: Text_Knob,
}


def _unquote(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text[1:-1])
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def fake_load_gizmo(path: str, name: str = "FRDM1") -> Gizmo:
    """Instantiate a .gizmo file as Nuke would (user knobs with their defaults, the internal nodes)."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    gizmo = Gizmo("FRDM", name, _root)
    _root._children.append(gizmo)
    depth, block, block_knobs = 0, None, {}
    for raw in lines[1:]:
        line = raw.strip()
        if line == "end_group":
            break
        if depth == 0 and (line.startswith("set ") or line.startswith("push ") or line.startswith("add_layer")):
            continue  # node-stack commands: the wiring is checked with Tcl (tests/test_gizmo_tcl.py)
        if depth == 0 and line.endswith("{"):
            block, block_knobs, depth = line[:-1].strip(), {}, 1
            continue
        if line == "}" and depth == 1:
            if block != "Gizmo":
                cls = str(block)
                child: Node = Node(cls, str(block_knobs.get("name", cls)), gizmo)
                for k, v in block_knobs.items():
                    child.addKnob(Knob(k, k, v))
                for k in _CLASS_KNOBS.get(cls, ()):
                    if child.knob(k) is None:
                        child.addKnob(Script_Knob(k, k) if k == "reload" else Knob(k, k, None))
                gizmo._children.append(child)
            depth = 0
            continue
        if block == "Gizmo":
            m = re.match(r"addUserKnob \{(\d+) (\S+)(?: l (\"(?:[^\"\\]|\\.)*\"|\S+))?(.*)\}$", line)
            if m:
                kind, kname, label = int(m.group(1)), m.group(2), _unquote(m.group(3) or m.group(2))
                if kind == 4:
                    items = re.search(r"M \{([^}]*)\}", m.group(4))
                    knob: Knob = Enumeration_Knob(kname, str(label), (items.group(1) if items else "").split())
                else:
                    knob = _KNOB_TYPES.get(kind, Knob)(kname, str(label))
                gizmo.addKnob(knob)
                continue
            parts = line.split(" ", 1)
            if len(parts) == 2 and gizmo.knob(parts[0]) is not None:
                gizmo.knob(parts[0])._value = _unquote(parts[1])  # type: ignore[union-attr]
        elif block is not None:
            parts = line.split(" ", 1)
            block_knobs[parts[0]] = _unquote(parts[1]) if len(parts) == 2 else None
    calls.append(("load_gizmo", name))
    return gizmo


def scriptOpen(filename: str | None = None) -> None:
    """Opening a script: the fake only records it (the test builds the graph)."""
    calls.append(("scriptOpen", filename))
    if filename:
        _root._script = filename
