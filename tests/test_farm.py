"""Farm jobs (plugin/farm.py, ``frdm submit``): the OpenJD template validates with openjd-model, the real
OpenJD runtime (openjd-cli) runs its chunk tasks on the sample shot, and the frames are byte-identical to one
whole-range ``frdm restore``; the Deadline files run the same command per chunk."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from frdm.cli import main
from frdm.engine.errors import InputError
from frdm.plugin import farm

REPO = Path(__file__).resolve().parent.parent
SHOT = REPO / "samples" / "train_robbery"
SOURCE = str(SHOT / "train_robbery.####.exr")
PRESET = str(SHOT / "shot.json")
PY_FRDM = f"{shlex.quote(sys.executable)} -m frdm.cli"


def submit(tmp_path: Path, *extra: str) -> Path:
    job_dir = tmp_path / "job"
    rc = main(
        [
            "submit",
            SOURCE,
            str(tmp_path / "farm" / "tr.####.exr"),
            "--job-dir",
            str(job_dir),
            "--preset",
            PRESET,
            "--frdm-command",
            PY_FRDM,
            *extra,
        ]
    )
    assert rc == 0
    return job_dir


def test_template_is_valid_openjd_with_contiguous_chunks(tmp_path):
    job_dir = submit(tmp_path, "--frames", "1001-1012", "--chunk-size", "4", "--feather", "3")
    template = json.loads((job_dir / farm.TEMPLATE_FILE).read_text())
    farm.validate_template(template)  # openjd-model decodes it (TASK_CHUNKING opted in)
    assert template["extensions"] == ["TASK_CHUNKING"]
    (task,) = template["steps"][0]["parameterSpace"]["taskParameterDefinitions"]
    assert task["type"] == "CHUNK[INT]" and task["chunks"]["rangeConstraint"] == "CONTIGUOUS"
    values = json.loads((job_dir / farm.VALUES_FILE).read_text())
    assert values["Frames"] == "1001-1012" and values["ChunkSize"] == 4
    # the shot's preset and the command-line knob both reach the farm's parameter file
    params = json.loads((job_dir / farm.PARAMS_FILE).read_text())["params"]
    from frdm.engine.params import load_preset

    assert params == {**load_preset(PRESET), "feather": 3.0}

    broken = {k: v for k, v in template.items() if k != "extensions"}  # CHUNK[INT] needs the extension
    with pytest.raises(InputError, match="TASK_CHUNKING"):
        farm.validate_template(broken)


def test_deadline_files_run_the_same_command_per_chunk(tmp_path):
    job_dir = submit(tmp_path, "--frames", "1001-1010", "--chunk-size", "3", "--pool", "restoration")
    info = dict(line.split("=", 1) for line in (job_dir / farm.JOB_INFO_FILE).read_text().splitlines())
    plugin = dict(line.split("=", 1) for line in (job_dir / farm.PLUGIN_INFO_FILE).read_text().splitlines())
    assert info["Plugin"] == "CommandLine" and info["Frames"] == "1001-1010" and info["ChunkSize"] == "3"
    assert info["Pool"] == "restoration" and info["OutputFilename0"] == "tr.####.exr"
    # What Deadline runs for its second task (1004-1006) is the OpenJD chunk command for the same frames.
    argv = [
        plugin["Executable"],
        *shlex.split(plugin["Arguments"].replace("<STARTFRAME>", "1004").replace("<ENDFRAME>", "1006")),
    ]
    template = json.loads((job_dir / farm.TEMPLATE_FILE).read_text())
    values = json.loads((job_dir / farm.VALUES_FILE).read_text())
    on_run = template["steps"][0]["script"]["actions"]["onRun"]
    subst = {f"{{{{Param.{k}}}}}": str(v) for k, v in values.items()} | {"{{Task.Param.Frame}}": "1004-1006"}
    assert argv == [on_run["command"], *(subst.get(a, a) for a in on_run["args"])]
    assert argv[argv.index("--frames") + 1] == "1004-1006"
    assert farm.chunks(range(1001, 1011), 3) == [(1001, 1003), (1004, 1006), (1007, 1009), (1010, 1010)]


def test_bad_farm_jobs_are_refused(tmp_path):
    with pytest.raises(InputError, match="contiguous"):
        farm.FarmJob(SOURCE, str(tmp_path / "o.####.exr"), [1001, 1002, 1005])
    with pytest.raises(InputError, match="chunk size"):
        farm.FarmJob(SOURCE, str(tmp_path / "o.####.exr"), [1001], chunk_size=0)
    with pytest.raises(InputError, match="sequence"):
        farm.FarmJob(SOURCE, str(tmp_path / "single.exr"), [1001])
    with pytest.raises(SystemExit):  # a misspelt knob is an argparse error, never silently ignored
        main(["submit", SOURCE, str(tmp_path / "o.####.exr"), "--job-dir", str(tmp_path), "--fether", "1"])


@pytest.mark.slow
def test_openjd_runtime_chunks_equal_one_whole_range_restore(tmp_path):
    """openjd-cli runs the template's chunk tasks (1003-1005, 1006-1008: each reads context frames outside
    its chunk from the source); the frames equal a whole-range restore byte for byte."""
    job_dir = submit(tmp_path, "--frames", "1003-1008", "--chunk-size", "3")
    values = job_dir / farm.VALUES_FILE
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "openjd",
            "run",
            str(job_dir / farm.TEMPLATE_FILE),
            "--step",
            farm.STEP_NAME,
            "-p",
            f"file://{values}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Frame(CHUNK[INT]) = 1003-1005" in run.stdout and "Frame(CHUNK[INT]) = 1006-1008" in run.stdout
    assert "Chunks run: 2" in run.stdout

    whole = tmp_path / "whole"
    assert (
        main(["restore", SOURCE, str(whole / "tr.####.exr"), "--preset", PRESET, "--frames", "1003-1008", "--quiet"])
        == 0
    )
    farm_frames = sorted(p.name for p in (tmp_path / "farm").iterdir())
    assert farm_frames == [f"tr.{f}.exr" for f in range(1003, 1009)]  # only the chunks' own frames
    for name in farm_frames:
        assert (tmp_path / "farm" / name).read_bytes() == (whole / name).read_bytes(), name


def test_submit_defaults_to_the_frames_on_disk_and_explains_a_missing_deadline(tmp_path, monkeypatch, capsys):
    job_dir = submit(tmp_path)
    assert json.loads((job_dir / farm.VALUES_FILE).read_text())["Frames"] == "1001-1012"
    monkeypatch.setenv("PATH", str(tmp_path))  # no deadlinecommand here
    assert main(["submit", SOURCE, str(tmp_path / "o.####.exr"), "--job-dir", str(tmp_path / "j2"), "--deadline"]) == 2
    assert "deadlinecommand is not on PATH" in capsys.readouterr().err
