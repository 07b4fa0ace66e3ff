"""The one parameter schema: validation, presets, CLI flags (stage hashes: tests/test_depends.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from frdm.engine import params as P
from frdm.engine.errors import ParamError


def test_defaults_validate_and_types_coerce():
    v = P.validate({"feather": "3", "scratches": "off", "temporal_radius": 3.0})
    assert v["feather"] == 3.0 and v["scratches"] is False and v["temporal_radius"] == 3
    assert set(v) == {p.name for p in P.SCHEMA}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"feathr": 2}, "unknown parameter 'feathr' \\(did you mean 'feather'\\?\\)"),
        ({"feather": -1}, "parameter 'feather' must be >= 0.0"),
        ({"feather": float("nan")}, "parameter 'feather' must be a finite number"),
        ({"temporal_radius": 1.5}, "parameter 'temporal_radius' must be an integer"),
        ({"engine": "magic"}, "parameter 'engine' must be one of classical, diffusion"),
        ({"scratches": "maybe"}, "parameter 'scratches' must be true or false"),
        ({"patch_size": 500}, "multiple of 64"),
        ({"patch_size": 256, "patch_overlap": 200}, "at most half"),
        ({"prompt": 5}, "parameter 'prompt' must be text"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ParamError, match=message):
        P.validate(values)


def test_not_a_mapping_is_refused():
    with pytest.raises(ParamError, match="mapping"):
        P.validate(["feather", 2])  # type: ignore[arg-type]


def test_preset_round_trip_keeps_only_changes(tmp_path):
    path = tmp_path / "sh010.json"
    P.save_preset(path, {"feather": 4.0, "colorspace": "linear"})
    doc = json.loads(path.read_text())
    assert doc == {"frdm_preset": 1, "params": {"colorspace": "linear", "feather": 4.0}}
    assert P.load_preset(path) == {"colorspace": "linear", "feather": 4.0}
    path.write_text('{"frdm_preset": 1, "params": {"feathr": 1}}')
    with pytest.raises(ParamError, match=r"sh010\.json: unknown parameter 'feathr'"):
        P.load_preset(path)
    path.write_text("{not json")
    with pytest.raises(ParamError, match=r"sh010\.json is not readable JSON"):
        P.load_preset(path)


def test_cli_flags_override_presets_which_override_defaults():
    parser = argparse.ArgumentParser()
    P.add_cli_arguments(parser)
    args = parser.parse_args(["--feather", "7", "--no-scratches"])
    v = P.from_cli_args(args, preset={"feather": 1.0, "dust_threshold": 0.1})
    assert v["feather"] == 7.0 and v["scratches"] is False and v["dust_threshold"] == 0.1
    assert v["temporal_radius"] == P.defaults()["temporal_radius"]


def test_validated_params_are_read_only_and_pass_through_unchecked(monkeypatch):
    import copy

    v = P.validate({"feather": 3})
    assert P.validate(v) is v and P.SCHEMA.validate(v) is v
    with pytest.raises(TypeError, match="read-only"):
        v["feather"] = 9.0  # type: ignore[index]
    # copy/deepcopy go through __reduce_ex__, the protocol a process pool would use (no pickle in the project)
    assert copy.copy(v) == v and copy.deepcopy(v) == v
    seen: list[str] = []
    real = P.Param.coerce
    monkeypatch.setattr(P.Param, "coerce", lambda self, value: seen.append(self.name) or real(self, value))
    changed = P.SCHEMA.update(v, {"mask": "none"})
    assert seen == ["mask"] and changed["mask"] == "none" and changed["feather"] == 3.0 and v["mask"] == "auto"
    with pytest.raises(ParamError, match="window_overlap"):
        P.SCHEMA.update(v, {"window": 2, "window_overlap": 3})  # cross-field rules still hold
