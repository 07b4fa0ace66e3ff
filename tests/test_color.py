"""Colour: source encoding -> model space -> source encoding is exact for values the model can hold."""

from __future__ import annotations

import numpy as np
import pytest

from frdm.engine.color import from_model, representable, to_model
from frdm.engine.errors import ParamError


@pytest.mark.parametrize("space", ["srgb", "linear", "cineon", "rec709", "raw"])
def test_builtin_round_trip(space):
    rng = np.random.default_rng(0)
    values = rng.random((64, 64, 3), dtype=np.float32)
    if space == "cineon":
        values = values * 0.6 + 0.08  # mostly between the black (95) and white (685) code points
    model = to_model(values, space)
    back = from_model(model, space)
    ok = representable(model)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(back[ok], values[ok], rtol=2e-6, atol=2e-6)


def test_known_values():
    # Scene-linear 18% grey is sRGB code 0.4614; Cineon code 685 is linear 1.0 (white), 95 is 0 (black).
    assert to_model(np.float32([[0.18, 0.18, 0.18]]), "linear")[0, 0] == pytest.approx(0.4614, abs=1e-4)
    cin = np.float32([[685 / 1023] * 3, [95 / 1023] * 3])
    np.testing.assert_allclose(to_model(cin, "cineon"), [[1, 1, 1], [0, 0, 0]], atol=1e-6)


def test_ocio_colourspace_round_trip():
    rng = np.random.default_rng(1)
    values = rng.random((32, 32, 3), dtype=np.float32) * 0.8
    space, config = "ACEScg", "ocio://studio-config-latest"
    model = to_model(values, space, config)
    assert not np.allclose(model, values), "ACEScg is not display-referred: conversion must change values"
    back = from_model(model, space, config)
    ok = representable(model)
    np.testing.assert_allclose(back[ok], values[ok], rtol=1e-4, atol=1e-5)


def test_unknown_colourspace_names_the_choices():
    with pytest.raises(ParamError, match="'no-such-space' is neither built in"):
        to_model(np.zeros((1, 1, 3), np.float32), "no-such-space", "ocio://studio-config-latest")


def test_representable_flags_out_of_range():
    model = to_model(np.float32([[0.5, 0.5, 0.5], [2.0, 0.5, 0.5], [-0.1, 0.2, 0.2]]), "linear")
    assert representable(model).tolist() == [True, False, False]


# --- colorspace 'auto' -----------------------------------------------------------------------------------


def _write(path, fmt, declared=""):
    import OpenImageIO as oiio

    spec = oiio.ImageSpec(8, 6, 3, fmt)
    if declared:
        spec.attribute("oiio:ColorSpace", declared)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec)
    out.write_image(np.full((6, 8, 3), 0.25, np.float32))
    out.close()
    return str(path)


@pytest.mark.parametrize(
    ("name", "fmt", "declared", "expected"),
    [
        ("a.exr", "half", "", "linear"),
        ("a.exr", "float", "", "linear"),
        ("a.tif", "float", "", "linear"),
        ("a.tif", "uint8", "", "srgb"),
        ("a.tif", "uint16", "", "srgb"),
        ("a.png", "uint8", "", "srgb"),
        ("a.jpg", "uint8", "", "srgb"),
        ("a.dpx", "uint16", "", "cineon"),
        ("a.exr", "half", "srgb_rec709_scene", "srgb"),  # what the file says wins
        ("a.png", "uint16", "lin_rec709_scene", "linear"),
    ],
)
def test_auto_decides_by_what_the_file_says_or_its_type(tmp_path, name, fmt, declared, expected):
    from frdm.engine.color import resolve_colorspace
    from frdm.engine.frames import read_frame

    frame = read_frame(_write(tmp_path / name, fmt, declared))
    assert resolve_colorspace("auto", frame) == expected
    assert resolve_colorspace("cineon", frame) == "cineon"  # an explicit choice is obeyed


def test_auto_is_the_default_and_must_be_resolved_before_converting():
    from frdm.engine.params import SCHEMA

    assert SCHEMA["colorspace"].default == "auto"
    with pytest.raises(ValueError, match="resolved per frame"):
        to_model(np.zeros((2, 3), np.float32), "auto")


def test_restore_without_colorspace_treats_a_scene_linear_exr_as_linear(tmp_path):
    from frdm.cli import main
    from frdm.engine.frames import Frame, read_attributes, read_frame, write_frame

    rng = np.random.default_rng(4)
    # A still shot (the same textured ground in every frame, light grain on it), not fresh noise per frame: the
    # detector rightly leaves a "speck" alone where its two neighbours disagree as much as independent noise does.
    ground = rng.uniform(0.2, 0.5, (24, 32, 3)).astype(np.float32)
    for n in range(1, 4):
        px = ground + rng.normal(0.0, 0.005, ground.shape).astype(np.float32)
        px[10:13, 10:13] = 0.0 if n == 2 else px[10:13, 10:13]  # a dark speck on frame 2
        write_frame(
            tmp_path / f"s.{n:04d}.exr", Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, 32, 24), (0, 0, 32, 24))
        )
    src = str(tmp_path / "s.####.exr")
    results = {}
    for name, flags in {"auto": [], "linear": ["--colorspace", "linear"], "srgb": ["--colorspace", "srgb"]}.items():
        out = str(tmp_path / name / "o.####.exr")
        assert main(["restore", src, out, "--quiet", "--mask", "none", *flags]) == 0
        results[name] = read_frame(out.replace("####", "0002")).pixels
        assert read_attributes(out.replace("####", "0002"))["frdm:colorspace"] == (
            "srgb" if name == "srgb" else "linear"
        )
    np.testing.assert_array_equal(results["auto"], results["linear"])
    assert not np.array_equal(results["auto"], results["srgb"])


@pytest.mark.parametrize("layout", ["rgba", "gbra", "rgb"])
@pytest.mark.parametrize("space", ["srgb", "raw", "linear", "cineon"])
def test_the_view_of_halves_is_the_clipped_conversion_of_their_floats(space, layout, monkeypatch):
    from frdm.engine import color
    from frdm.engine.color import model_view

    monkeypatch.setattr(color, "_BAND_VALUES", 1000)  # looked up in many bands, the last one short

    # Every half bit pattern, NaN and Inf included, in a strided RGB view of RGBA samples (as a frame holds them;
    # also behind another channel) or contiguous RGB samples, as rows of a frame.
    rgba = np.zeros((21846, 4), np.uint16)
    start = 1 if layout == "gbra" else 0
    rgba[:, start : start + 3] = np.resize(np.arange(65536, dtype=np.uint16), (21846, 3))
    samples = rgba.view(np.float16).reshape(3641, 6, 4)
    rgb = np.ascontiguousarray(samples[..., :3]) if layout == "rgb" else samples[..., start : start + 3]
    out = np.full(rgb.shape, -1.0, np.float32)
    with np.errstate(all="ignore"):
        expected = np.clip(to_model(rgb.astype(np.float32), space), 0.0, 1.0)
        got = model_view(rgb, space, out=out)
        from_floats = model_view(rgb.astype(np.float32), space)
    assert got is out
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(from_floats.view(np.uint32), expected.view(np.uint32))
