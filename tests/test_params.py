"""The one parameter schema: validation, stage hashes (the cache key), presets, CLI flags."""

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


def test_stage_hash_changes_only_from_the_stage_a_knob_affects():
    base = P.validate({})
    feather = {**base, "feather": 5.0}
    dust = {**base, "dust_threshold": 0.2}
    steps = {**base, "steps": 50}  # a diffusion knob: irrelevant to the classical engine
    assert P.stage_hash(feather, "fill") == P.stage_hash(base, "fill")
    assert P.stage_hash(feather, "blend") != P.stage_hash(base, "blend")
    assert P.stage_hash(dust, "detect") != P.stage_hash(base, "detect")
    assert P.stage_hash(steps, "output") == P.stage_hash(base, "output")
    assert P.stage_hash(base, "output", "classical-1") != P.stage_hash(base, "output", "classical-2")


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
