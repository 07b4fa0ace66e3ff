"""Farm jobs (plugin/farm.py, ``frdm submit``): the bundle is a Deadline Cloud job bundle that AWS's own
client reads offline; its asset references list every frame the tasks read; the OpenJD template validates
with openjd-model, the real OpenJD runtime (openjd-cli) runs its chunk tasks on the sample shot, and the
frames are byte-identical to one whole-range ``frdm restore``; a diffusion job asks for a GPU and its chunks
talk to one resident server per session (the classical engine standing in); the Deadline 10 files run the
same command per chunk."""

from __future__ import annotations

import json
import os
import re
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
    job_dir = submit(
        tmp_path,
        *("--frames", "1001-1010", "--chunk-size", "3", "--pool", "restoration", "--group", "gpu"),
        *("--limit-groups", "frdm, nuke", "--machine-limit", "4", "--task-timeout", "600"),
    )
    info = dict(line.split("=", 1) for line in (job_dir / farm.JOB_INFO_FILE).read_text().splitlines())
    plugin = dict(line.split("=", 1) for line in (job_dir / farm.PLUGIN_INFO_FILE).read_text().splitlines())
    assert info["Plugin"] == "CommandLine" and info["Frames"] == "1001-1010" and info["ChunkSize"] == "3"
    assert info["Pool"] == "restoration" and info["OutputFilename0"] == "tr.####.exr"
    assert (info["Group"], info["LimitGroups"], info["MachineLimit"]) == ("gpu", "frdm,nuke", "4")
    assert info["TaskTimeoutMinutes"] == "10"
    # What Deadline runs for its second task (1004-1006) is the OpenJD chunk command for the same frames.
    argv = [
        plugin["Executable"],
        *shlex.split(plugin["Arguments"].replace("<STARTFRAME>", "1004").replace("<ENDFRAME>", "1006")),
    ]
    template = json.loads((job_dir / farm.TEMPLATE_FILE).read_text())
    values = json.loads((job_dir / farm.VALUES_FILE).read_text())
    on_run = template["steps"][0]["script"]["actions"]["onRun"]
    subst = {f"Param.{k}": str(v) for k, v in values.items()} | {"Task.Param.Frame": "1004-1006"}
    expanded = [re.sub(r"\{\{(.*?)\}\}", lambda m: subst[m.group(1)], a) for a in on_run["args"]]
    assert argv == [on_run["command"], *expanded]
    assert "--progress-lines" in argv and "--quiet" not in argv
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
    run = _openjd_run(job_dir, tmp_path)
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


def _deadline_read(job_dir: Path):
    """What AWS's client makes of the bundle: its parameters with our values, and the asset references."""
    from deadline.client.job_bundle.parameters import apply_job_parameters, read_job_bundle_parameters
    from deadline.client.job_bundle.submission import AssetReferences

    parameters = read_job_bundle_parameters(str(job_dir))
    assets = AssetReferences.from_dict(json.loads((job_dir / farm.ASSETS_FILE).read_text()))
    values = json.loads((job_dir / farm.CLOUD_VALUES_FILE).read_text())["parameterValues"]
    from_params = AssetReferences()
    apply_job_parameters(values, str(job_dir), parameters, from_params)
    return parameters, assets.union(from_params)


def test_the_bundle_is_a_deadline_cloud_job_bundle_with_every_input_frame(tmp_path):
    mask_dir = tmp_path / "roto"
    mask_dir.mkdir()
    for f in range(1001, 1013):
        (mask_dir / f"roto.{f}.exr").write_bytes(b"")  # the files exist; their content is not read here
    job_dir = submit(tmp_path, "--frames", "1004-1008", "--chunk-size", "2", "--mask", str(mask_dir / "roto.####.exr"))
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(
        [farm.TEMPLATE_FILE, farm.CLOUD_VALUES_FILE, farm.ASSETS_FILE, farm.VALUES_FILE, farm.PARAMS_FILE]
        + [farm.JOB_INFO_FILE, farm.PLUGIN_INFO_FILE]
    )
    info = subprocess.run(
        [str(Path(sys.executable).with_name("deadline")), "bundle", "info", str(job_dir), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},  # no AWS profile: it reads the bundle offline
    )
    assert info.returncode == 0, info.stdout + info.stderr
    assert "FRDM tr" in info.stdout and farm.STEP_NAME in info.stdout

    parameters, assets = _deadline_read(job_dir)
    kinds = {p["name"]: (p["type"], p.get("dataFlow")) for p in parameters}
    assert kinds["Source"] == ("PATH", "NONE") and kinds["Mask"] == ("PATH", "NONE")  # mapped, not uploaded
    assert kinds["OutputDir"] == ("PATH", "OUT") and kinds["Params"] == ("PATH", "IN")
    # chunks 1004-1008 with the classical context (2 frames each side): 1002-1010 of source and mask
    wanted = {str(SHOT / f"train_robbery.{f}.exr") for f in range(1002, 1011)}
    wanted |= {str(mask_dir / f"roto.{f}.exr") for f in range(1002, 1011)}
    wanted.add(str(job_dir / farm.PARAMS_FILE))
    assert assets.input_filenames == wanted
    assert all(os.path.isfile(p) for p in assets.input_filenames)  # no '####' pattern that names no file
    assert assets.output_directories == {str(tmp_path / "farm")}


def test_a_diffusion_job_asks_for_a_gpu_and_one_resident_server(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    config = tmp_path / "show.ocio"
    config.write_text("ocio_profile_version: 2\n")
    job = farm.FarmJob(
        SOURCE,
        str(tmp_path / "out" / "d.####.exr"),
        list(range(1001, 1013)),
        {"engine": "diffusion", "colorspace": "ACEScg", "ocio_config": str(config)},
        chunk_size=6,
        weights=str(weights),
        gpu_memory_gb=24,
    )
    template = farm.openjd_template(job)
    farm.validate_template(template)
    (step,) = template["steps"]
    amounts = {a["name"]: a["min"] for a in step["hostRequirements"]["amounts"]}
    assert amounts == {"amount.worker.gpu": 1, "amount.worker.gpu.memory": 24 * 1024, "amount.worker.memory": 32 * 1024}
    (env,) = step["stepEnvironments"]
    assert env["script"]["actions"]["onEnter"]["args"][:2] == ["farm", "server-start"]
    assert env["script"]["actions"]["onExit"]["args"][:2] == ["farm", "server-stop"]
    on_run = step["script"]["actions"]["onRun"]
    assert on_run["args"][:2] == ["farm", "task"] and "--weights" not in on_run["args"]  # the server holds them
    assert on_run["cancelation"]["mode"] == "NOTIFY_THEN_TERMINATE" and on_run["timeout"] == 6 * 900
    assert "--ocio-config" in on_run["args"]
    names = {p["name"]: p for p in template["parameterDefinitions"]}
    assert names["Weights"]["dataFlow"] == "IN" and names["OcioConfig"]["objectType"] == "FILE"
    values = farm.parameter_values(job, "p.json")
    assert values["OcioConfig"] == str(config) and values["Weights"] == str(weights)
    written = farm.write_job(job, str(tmp_path / "job"))
    from frdm.engine.params import load_preset

    assert "ocio_config" not in load_preset(written.params)  # one place: the OcioConfig job parameter
    classical = farm.openjd_template(farm.FarmJob(SOURCE, str(tmp_path / "c.####.exr"), [1001]))
    assert "hostRequirements" not in classical["steps"][0] and "stepEnvironments" not in classical["steps"][0]


@pytest.mark.slow
def test_resident_server_chunks_equal_one_whole_range_restore(tmp_path):
    """openjd-cli runs the resident-server template (the classical engine standing in for diffusion): the
    step environment starts one frdm serve for the session, both chunks restore through it, the environment
    stops it, and the frames equal a whole-range restore."""
    job_dir = submit(tmp_path, "--frames", "1003-1008", "--chunk-size", "3", "--resident-server")
    run = _openjd_run(job_dir, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("frdm serve ready at") == 1  # one server for the session's two chunks
    assert "Chunks run: 2" in run.stdout and "frdm serve stopped" in run.stdout
    assert "openjd_progress: 100.0" in run.stdout and "Progress: 100%" in run.stdout

    whole = tmp_path / "whole"
    assert main(["restore", SOURCE, str(whole / "tr.####.exr"), "--preset", PRESET, "--frames", "1003-1008"]) == 0
    import numpy as np

    from frdm.engine.frames import read_frame

    farm_frames = sorted(p.name for p in (tmp_path / "farm").iterdir() if p.suffix == ".exr")
    assert farm_frames == [f"tr.{f}.exr" for f in range(1003, 1009)]
    for name in farm_frames:
        np.testing.assert_array_equal(
            read_frame(tmp_path / "farm" / name).pixels, read_frame(whole / name).pixels, err_msg=name
        )


def _openjd_run(job_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "openjd",
            "run",
            str(job_dir / farm.TEMPLATE_FILE),
            "--step",
            farm.STEP_NAME,
            "-p",
            f"file://{job_dir / farm.VALUES_FILE}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.slow
def test_a_cancelled_chunk_task_stops_its_job_and_writes_nothing(tmp_path):
    """The farm's cancel (SIGTERM, NOTIFY_THEN_TERMINATE) reaches `frdm farm task`: it cancels its job on
    the resident server and exits non-zero; the chunk's frames are never handed over half-done."""
    import signal

    from test_node import write_clip
    from test_server import ServerProcess

    src = write_clip(tmp_path / "plates", count=6)
    server = ServerProcess(tmp_path / "srv", restorer="server_restorers:slow", delay=0.5).wait_ready()
    try:
        state = tmp_path / "frdm-server.json"
        state.write_text(json.dumps({"address": server.address, "pid": 0}))
        out = tmp_path / "out"
        proc = subprocess.Popen(
            [sys.executable, "-m", "frdm.cli", "farm", "task", "--state", str(state), src, str(out / "o.####.exr")]
            + ["--frames", "1-6", "--mask", "none", "--progress-lines"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the server is restoring
            if line.startswith("openjd_progress:") and float(line.split()[1]) > 0:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 2 and "cancelled" in err, err
    assert not list(out.glob("o.*.exr"))  # nothing partial in place


@pytest.mark.skipif(os.name == "nt", reason="Unix sockets")
def test_the_resident_server_listens_where_only_its_user_can_connect(tmp_path):
    """A loopback TCP port is open to every user of a shared render node (and the server has no keys on
    loopback): the session's resident server listens on a Unix socket in a folder only its user may enter,
    and server-stop removes that folder."""
    import stat

    from frdm.server.client import FrdmClient

    state = tmp_path / "session" / "frdm-server.json"
    state.parent.mkdir()
    assert main(["farm", "server-start", "--state", str(state), "--engine", "classical", "--ready-timeout", "120"]) == 0
    recorded = json.loads(state.read_text())
    try:
        assert recorded["address"].startswith("ipc://")
        folder = os.path.dirname(recorded["address"][len("ipc://") :])
        mode = os.stat(folder).st_mode
        assert stat.S_IMODE(mode) == 0o700 and os.stat(folder).st_uid == os.getuid()
        with FrdmClient(recorded["address"], timeout=10.0, retries=0) as client:
            assert client.hello()["engine"] == "classical"
    finally:
        assert main(["farm", "server-stop", "--state", str(state)]) == 0
    assert not os.path.exists(folder) and not state.exists()


@pytest.mark.skipif(os.name == "nt", reason="Unix sockets")
def test_a_long_temp_dir_still_gives_a_socket_path_that_fits_and_a_gone_server_leaves_no_state(tmp_path, monkeypatch):
    """A Unix socket path must fit sun_path (~100 bytes): under a long TMPDIR the server could not bind. And a
    server already gone must not leave its state behind, or a second stop would signal a reused pid."""
    import tempfile

    from frdm.commands import farm as farm_command

    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    address, folder = farm_command._private_endpoint()
    try:
        assert len(address[len("ipc://") :].encode()) <= farm_command.UNIX_SOCKET_PATH_MAX
        assert os.path.isdir(folder) and not os.listdir(long_tmp)
    finally:
        farm_command._remove_folder(folder)
    assert not os.path.exists(folder)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = tmp_path / "frdm-server.json"
    state.write_text(json.dumps({"address": address, "pid": gone.pid, "log": "", "folder": None}))
    assert main(["farm", "server-stop", "--state", str(state)]) == 0
    assert not state.exists()
