"""The files an OCIO config makes the server read: its LUTs, held to the allowed roots like every other path.

``storage.check_ocio_config`` admits a config file only under an allowed root, but the config itself names
more files: a ``search_path`` (folders, relative to the config's own folder) and the ``src`` of every
FileTransform (a LUT, a CDL). OpenColorIO inside OpenImageIO opens those wherever they point, so a config
under a root could still make the server read ``/home/someone/private.cube`` or a FIFO outside. Before the
engine loads a config, every folder it searches and every place a ``src`` can resolve to must lie under a
root, after symlinks. Context variables (``$SHOT``) would resolve to paths nobody checked: refused.

Parsing is the YAML the config is written in, with OCIO's own tags (``!<ColorSpace>``, ``!<FileTransform>``)
read as plain mappings and every scalar as text, as yaml-cpp hands it to OCIO (``src: 123`` names a file
'123', not a number): the check needs where files are named, not what the transforms do. A config YAML
cannot parse is left to the loader, whose error names it. Not covered: a LUT swapped for a symlink between this
check and the loader's read (the roots' other files are opened without following links; OCIO's are not).
"""

from __future__ import annotations

import os
import re
from typing import Any

from frdm.server.protocol import ProtocolError
from frdm.server.storage import MAX_OCIO_CONFIG_BYTES, read_regular, resolve_under_roots, rooted

_CONTEXT_VARIABLE = re.compile(r"\$")
_MAX_NODES = 200_000  # a config's YAML nodes, aliases counted once: the big ACES configs have ~20k


def check_ocio_files(value: str, roots: list[str]) -> None:
    """Refuse (ProtocolError forbidden_path) an OCIO config that names a folder or file outside the roots."""
    if value.startswith("ocio://"):
        return  # built into OpenImageIO: reads no file
    what = "parameter 'ocio_config'"
    real = resolve_under_roots(value, roots, what=what, must_exist=False)
    text = read_regular(rooted(real, roots), what, MAX_OCIO_CONFIG_BYTES)
    document = _parse(text)
    if not isinstance(document, dict):
        return  # not a config: the loader says so
    folder = os.path.dirname(real)
    search = _search_folders(document.get("search_path"), folder, value)
    for entry in search:
        _confined(entry, roots, f"{what} '{value}': its search_path entry")
    for src in _sources(document):
        if _CONTEXT_VARIABLE.search(src):
            raise ProtocolError(
                "forbidden_path",
                f"{what} '{value}': the file '{src[:200]}' uses a context variable, which the server cannot hold "
                "to its allowed roots; write the path out in the config",
            )
        places = [src] if os.path.isabs(src) else [os.path.join(entry, src) for entry in search]
        for place in places:
            _confined(place, roots, f"{what} '{value}': the file '{src[:200]}' it reads")


def _parse(text: bytes) -> Any:
    import yaml

    # The base loader: no implicit types, so a src or search_path that looks like a number, a date or a
    # boolean stays the text OCIO opens.
    class Loader(getattr(yaml, "CBaseLoader", yaml.BaseLoader)):  # type: ignore[misc]
        pass

    def any_tag(loader: Any, suffix: str, node: Any) -> Any:  # OCIO's !<Name> tags as plain YAML
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("", any_tag)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (the base loader builds no objects; tags become plain data)
    except yaml.YAMLError:
        return None


def _search_folders(search_path: Any, folder: str, value: str) -> list[str]:
    """The folders the config searches for relative ``src`` files, absolute: its own folder when it names none."""
    if search_path is None or search_path == "":
        entries: list[Any] = []
    elif isinstance(search_path, str):
        entries = search_path.split(":")
    elif isinstance(search_path, list):
        entries = search_path
    else:
        raise ProtocolError("bad_param", f"parameter 'ocio_config' '{value}': search_path is neither text nor a list")
    out = []
    for entry in entries:
        entry = str(entry)
        if _CONTEXT_VARIABLE.search(entry):
            raise ProtocolError(
                "forbidden_path",
                f"parameter 'ocio_config' '{value}': search_path entry '{entry[:200]}' uses a context variable, "
                "which the server cannot hold to its allowed roots",
            )
        if entry:
            out.append(os.path.realpath(os.path.join(folder, entry)))  # see _confined
    return out or [folder]


def _sources(document: Any) -> list[str]:
    """Every ``src`` value anywhere in the config (FileTransforms in colour spaces, looks, view transforms,
    groups), each node visited once however often aliases repeat it."""
    found, seen, stack, count = [], set(), [document], 0
    while stack:
        node = stack.pop()
        if not isinstance(node, (dict, list)) or id(node) in seen:
            continue
        seen.add(id(node))
        count += 1
        if count > _MAX_NODES:
            raise ProtocolError("too_large", f"parameter 'ocio_config': more than {_MAX_NODES} YAML nodes")
        if isinstance(node, dict):
            src = node.get("src")
            if isinstance(src, str):
                found.append(src)
            stack.extend(node.values())
        else:
            stack.extend(node)
    return found


def _confined(path: str, roots: list[str], what: str) -> None:
    # '..' inside a config is ordinary (a LUT folder beside the config's), and what matters is where it lands
    # as the kernel opens it: realpath climbs from a symlink's target, component by component (normpath would
    # climb from the link's own folder, so 'link/../x' under a root could open x beside what the link points
    # to). resolve_under_roots then refuses anything outside.
    resolve_under_roots(os.path.realpath(path), roots, what=what, must_exist=False)


__all__ = ["check_ocio_files"]
