"""The command line as a new user meets it: every --help works, flags come from the one schema, bad values
are one clear line with exit 2, and parameters are validated once where they enter."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frdm.cli import COMMANDS, main
from frdm.engine import params as P
from frdm.engine.errors import ParamError
from frdm.engine.frames import Frame, write_frame

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_working_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and f"frdm {command}" in out


def test_help_shows_percent_signs_of_the_schema(capsys):
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    assert "90% of the card" in capsys.readouterr().out


def test_mask_flag_is_generated_from_the_schema():
    parser = argparse.ArgumentParser()
    P.add_cli_arguments(parser)
    for value, mask, paths in [
        ("none", "none", {}),
        ("artist", "artist", {}),
        ("roto.####.exr", "artist", {"mask": "roto.####.exr"}),
    ]:
        args = parser.parse_args(["--mask", value])
        assert P.from_cli_args(args)["mask"] == mask and P.cli_paths(args) == paths
    assert P.from_cli_args(parser.parse_args([]))["mask"] == P.SCHEMA["mask"].default


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-inf"])
def test_integer_parameters_refuse_non_finite_values(value):
    with pytest.raises(ParamError, match="parameter 'temporal_radius' must be a finite integer"):
        P.validate({"temporal_radius": value})
    with pytest.raises(ParamError, match="parameter 'seed' must be a finite integer"):
        P.validate({"seed": float(value)})
    with pytest.raises(ParamError, match="parameter 'steps' must be <= 1000"):
        P.validate({"steps": 10**400})
    with pytest.raises(ParamError, match="parameter 'feather' must be a finite number"):
        P.validate({"feather": 10**400})


def _clip(folder: Path, count: int = 3) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, count + 1):
        px = np.full((16, 16, 3), 0.3 + 0.01 * n, np.float32)
        write_frame(
            folder / f"c.{n:04d}.exr", Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, 16, 16), (0, 0, 16, 16))
        )
    return str(folder / "c.####.exr")


def test_integer_overflow_on_the_command_line_is_one_line_exit_2(tmp_path):
    src = _clip(tmp_path / "in")
    proc = subprocess.run(
        [sys.executable, "-m", "frdm.cli", "restore", src, str(tmp_path / "o.####.exr"), "--temporal-radius", "1e999"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "parameter 'temporal_radius'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("o.*"))


def test_parameters_are_validated_once_per_run(tmp_path, monkeypatch):
    """Each value given is checked once (at the CLI boundary), not again by every function it passes."""
    src = _clip(tmp_path / "in")
    counts: dict[str, int] = {}
    real = P.Param.coerce

    def counting(self, value):
        counts[self.name] = counts.get(self.name, 0) + 1
        return real(self, value)

    monkeypatch.setattr(P.Param, "coerce", counting)
    out = str(tmp_path / "out" / "o.####.exr")
    assert main(["restore", src, out, "--quiet", "--feather", "3", "--colorspace", "raw", "--mask", "none"]) == 0
    assert len(os.listdir(tmp_path / "out")) == 3
    assert counts and max(counts.values()) == 1, counts


def test_an_artist_mask_given_as_the_output_is_refused_and_kept(tmp_path, capsys):
    """`frdm restore SRC OUT --mask OUT` would overwrite the artist's mask files: refused, nothing written."""
    src = _clip(tmp_path / "in")
    masks = _clip(tmp_path / "roto")
    before = {p.name: p.read_bytes() for p in (tmp_path / "roto").iterdir()}
    assert main(["restore", src, masks, "--quiet", "--mask", masks]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the mask frame" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "roto").iterdir()} == before


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_unwritable_output_folder_is_one_clear_line(tmp_path, dry_run):
    src = _clip(tmp_path / "in")
    (tmp_path / "file").write_text("not a folder")
    cmd = ["restore", src, str(tmp_path / "file" / "out" / "o.####.exr"), "--quiet", *(["--dry-run"] * dry_run)]
    proc = subprocess.run(
        [sys.executable, "-m", "frdm.cli", *cmd], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot make the output folder" in proc.stderr
