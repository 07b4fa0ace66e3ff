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
