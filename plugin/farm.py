"""Render-farm jobs for a shot: a Deadline Cloud job bundle (an Open Job Description template with its
parameter values and asset references) and Deadline 10 job files.

The range is cut into contiguous chunks; each chunk is one task. Two ways a task restores its chunk:

* in-process (the classical engine, no GPU): ``frdm restore SOURCE OUTPUT --frames FIRST-LAST --preset P``;
* against a resident server (the diffusion engine): the step environment starts one ``frdm serve`` per
  worker session (``frdm farm server-start``), so the weights load once per worker, not once per chunk;
  each chunk task sends its frames to it (``frdm farm task``) and the environment's exit stops it.

Either way a chunk reads the temporal context it needs (the frames before ``a`` and after ``b``) from the
source and writes only frames a..b, atomically, so chunks need no coordination and together give the frames
of one whole-range run (tests/test_farm.py runs the template with the OpenJD runtime and compares bytes).
Tasks print progress for OpenJD (``openjd_progress: N``) and Deadline (``Progress: N%``).

Paths a farm maps or transfers are PATH job parameters: the source and mask patterns (``dataFlow NONE``:
a ``####`` pattern is no file; their frames are listed one by one in ``asset_references.json``), the output
folder (``OUT``), the parameter file, the weights folder and an OCIO config file (``IN``).

Torch-free: the Nuke node's "Submit to farm" and ``frdm submit`` build jobs on a workstation.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from frdm.engine.atomic import write_text
from frdm.engine.errors import InputError
from frdm.engine.frames import SequencePattern, format_frame_range
from frdm.engine.params import BUILTIN_COLORSPACES, SCHEMA, save_preset
from frdm.plugin.node import frames_needed

STEP_NAME = "Restore"
SERVER_ENVIRONMENT = "FrdmServer"
TASK_PARAM = "Frame"
PARAMS_FILE = "frdm_params.json"
# The Deadline Cloud job bundle: `deadline bundle submit DIR` / `deadline bundle info DIR`.
TEMPLATE_FILE = "template.json"
CLOUD_VALUES_FILE = "parameter_values.json"
ASSETS_FILE = "asset_references.json"
VALUES_FILE = "openjd_values.json"  # the same values as a flat mapping: openjd run TEMPLATE -p file://VALUES
JOB_INFO_FILE = "deadline_job_info.job"
PLUGIN_INFO_FILE = "deadline_plugin_info.job"
#: Where a worker session's resident server says its address (``Session.WorkingDirectory`` is per session).
SERVER_STATE = "{{Session.WorkingDirectory}}/frdm-server.json"

#: Seconds a task may run per frame of its chunk before the farm stops it (``--task-timeout`` overrides).
SECONDS_PER_FRAME = {"classical": 120, "diffusion": 900}
#: Seconds a cancelled task gets to stop before it is killed (frames are written atomically: nothing breaks).
CANCEL_GRACE = 30


@dataclass
class FarmJob:
    """One shot to restore on the farm. Paths must be visible from the render nodes (absolute)."""

    source: str  # name.####.exr (or any source frdm restore reads)
    output: str  # name.####.exr
    frames: list[int]
    params: Mapping[str, Any] = field(default_factory=dict)
    chunk_size: int = 8
    name: str = ""
    mask: str | None = None  # an artist mask sequence (params mask='artist'); None: the params' mask mode
    weights: str | None = None  # diffusion engine: the weights folder on the render nodes
    command: Sequence[str] = ("frdm",)  # how a render node runs frdm (e.g. a wrapper or python -m frdm.cli)
    priority: int = 50
    pool: str = ""
    secondary_pool: str = ""
    group: str = ""
    limit_groups: Sequence[str] = ()
    machine_limit: int = 0
    #: One resident server per worker session that every chunk talks to. None: for the diffusion engine.
    resident_server: bool | None = None
    gpu_memory_gb: float = 16.0  # diffusion host requirements: one GPU with this much memory...
    memory_gb: float = 32.0  # ...and this much system memory
    task_timeout: int = 0  # seconds per task; 0 = SECONDS_PER_FRAME x chunk size

    def __post_init__(self) -> None:
        if not self.frames:
            raise InputError("the farm job has no frames; give --frames like 1001-1100")
        if self.chunk_size < 1:
            raise InputError(f"chunk size must be at least 1, got {self.chunk_size}")
        frames = sorted(set(self.frames))
        if frames != list(range(frames[0], frames[-1] + 1)):
            # Deadline frame lists and OpenJD contiguous chunks both want one unbroken range here.
            raise InputError(f"farm frames must be one contiguous range, got {format_frame_range(frames)}")
        self.frames = frames
        self.params = SCHEMA.validate(self.params)
        self.source = os.path.abspath(self.source)
        self.output = os.path.abspath(self.output)
        # Render nodes start in another folder: every path the task reads must be absolute.
        if self.mask:
            self.mask = os.path.abspath(self.mask)
        if self.weights:
            self.weights = os.path.abspath(self.weights)
        if not SequencePattern.parse(self.output).is_sequence:
            raise InputError(f"output '{self.output}' must be a sequence such as name.####.exr")
        if not self.name:
            self.name = os.path.basename(self.output).split(".")[0] or "frdm"
        if not self.command:
            raise InputError("the farm command is empty")
        if self.resident_server is None:
            self.resident_server = self.params["engine"] == "diffusion"
        if self.task_timeout < 0 or self.machine_limit < 0:
            raise InputError("the task timeout and machine limit must not be negative")

    @property
    def frame_range(self) -> str:
        return f"{self.frames[0]}-{self.frames[-1]}"

    @property
    def ocio_file(self) -> str | None:
        """The OCIO config when it is a file (a farm maps and transfers it), not a built-in ``ocio://``."""
        config = str(self.params["ocio_config"])
        if self.params["colorspace"] in BUILTIN_COLORSPACES:
            return None  # built-in colour spaces: the config is never read
        return None if config.startswith("ocio://") else os.path.abspath(config)

    @property
    def timeout(self) -> int:
        return self.task_timeout or SECONDS_PER_FRAME[self.params["engine"]] * self.chunk_size

    def input_files(self) -> list[str]:
        """Every frame file the tasks read: the frames and their temporal context, source and mask."""
        src = SequencePattern.parse(self.source)
        if not src.is_sequence:
            return [self.source] if os.path.exists(self.source) else []
        available = src.existing()
        if not available:
            raise InputError(f"no frames of {self.source} on disk")
        missing = sorted(set(self.frames) - set(available))
        if missing:
            raise InputError(f"{self.source} lacks frames {format_frame_range(missing)} of the farm range")
        needed = frames_needed(self.frames, self.params, available)
        files = [src.path(f) for f in needed]
        if self.mask:
            msk = SequencePattern.parse(self.mask)
            have = set(msk.existing())
            lacking = [f for f in needed if f not in have]
            if lacking:
                raise InputError(f"the mask {self.mask} lacks frames {format_frame_range(lacking)}")
            files += [msk.path(f) for f in needed]
        return files


# --- the task command -----------------------------------------------------------------------------------


def _output_arg() -> str:
    return "{{Param.OutputDir}}/{{Param.OutputName}}"


def task_args(
    job: FarmJob, frames: str, *, params: str, source: str, output: str, mask: str, ocio: str, weights: str
) -> list[str]:
    """The arguments after ``command`` for one chunk, with the given spellings of the job's values (template
    references for OpenJD, literal paths for Deadline 10)."""
    if job.resident_server:
        args = ["farm", "task", "--state", SERVER_STATE, source, output]
    else:
        args = ["restore", source, output]
    args += ["--frames", frames, "--preset", params, "--progress-lines"]
    if job.mask:
        args += ["--mask", mask]
    if job.ocio_file:
        args += ["--ocio-config", ocio]
    if job.weights and not job.resident_server:  # a resident server holds the weights itself
        args += ["--weights", weights]
    return args


def _server_start_args(job: FarmJob) -> list[str]:
    args = ["farm", "server-start", "--state", SERVER_STATE, "--engine", job.params["engine"]]
    if job.weights:
        args += ["--weights", "{{Param.Weights}}"]
    # The server reads sources and writes results only under these folders (path mode on one machine).
    roots = ["{{Param.SourceDir}}", "{{Param.OutputDir}}"] + (["{{Param.MaskDir}}"] if job.mask else [])
    for root in roots:
        args += ["--allow-root", root]
    return args


def openjd_template(job: FarmJob, params_file: str = "") -> dict[str, Any]:
    """An Open Job Description (2023-09) job template with one chunked step."""
    command = list(job.command)
    chunk = f"{{{{Task.Param.{TASK_PARAM}}}}}"  # a CONTIGUOUS CHUNK[INT] expands to "first-last"
    args = command[1:] + task_args(
        job,
        chunk,
        params="{{Param.Params}}",
        source="{{Param.Source}}",
        output=_output_arg(),
        mask="{{Param.Mask}}",
        ocio="{{Param.OcioConfig}}",
        weights="{{Param.Weights}}",
    )
    # PATH parameters may only default to paths relative to the template: the shot's absolute paths travel in
    # the parameter values instead. A pattern (####) is no file: NONE keeps path mapping and asks for no
    # transfer; its frames are in the asset references.
    definitions: list[dict[str, Any]] = [
        {"name": "Source", "type": "PATH", "objectType": "FILE", "dataFlow": "NONE",
         "description": "source sequence (name.####.exr)"},
        {"name": "SourceDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "NONE",
         "description": "the source's folder"},
        {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT",
         "description": "folder of the restored frames"},
        {"name": "OutputName", "type": "STRING", "minLength": 1, "description": "file name pattern (name.####.exr)"},
        {"name": "Params", "type": "PATH", "objectType": "FILE", "dataFlow": "IN",
         "description": "the shot's parameters (an frdm preset)"},
        {"name": "Frames", "type": "STRING", "default": job.frame_range, "minLength": 1},
        {"name": "ChunkSize", "type": "INT", "default": job.chunk_size, "minValue": 1},
    ]  # fmt: skip
    if job.mask:
        definitions += [
            {"name": "Mask", "type": "PATH", "objectType": "FILE", "dataFlow": "NONE"},
            {"name": "MaskDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "NONE"},
        ]
    if job.weights:
        definitions.append({"name": "Weights", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN"})
    if job.ocio_file:
        definitions.append({"name": "OcioConfig", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"})
    on_run: dict[str, Any] = {
        "command": command[0],
        "args": args,
        "timeout": job.timeout,
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": CANCEL_GRACE},
    }
    step: dict[str, Any] = {
        "name": STEP_NAME,
        "parameterSpace": {
            "taskParameterDefinitions": [
                {
                    "name": TASK_PARAM,
                    "type": "CHUNK[INT]",
                    "range": "{{Param.Frames}}",
                    "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
                }
            ]
        },
        "script": {"actions": {"onRun": on_run}},
    }
    if job.resident_server:
        step["stepEnvironments"] = [
            {
                "name": SERVER_ENVIRONMENT,
                "description": "one resident frdm serve per worker session: the model loads once",
                "script": {
                    "actions": {
                        "onEnter": {
                            "command": command[0],
                            "args": command[1:] + _server_start_args(job),
                            "timeout": 1800,  # loading diffusion weights from a network share can be slow
                            "cancelation": {"mode": "TERMINATE"},
                        },
                        "onExit": {
                            "command": command[0],
                            "args": command[1:] + ["farm", "server-stop", "--state", SERVER_STATE],
                            "timeout": 120,
                        },
                    }
                },
            }
        ]
    if job.params["engine"] == "diffusion":
        step["hostRequirements"] = {
            "amounts": [
                {"name": "amount.worker.gpu", "min": 1},
                {"name": "amount.worker.gpu.memory", "min": int(job.gpu_memory_gb * 1024)},
                {"name": "amount.worker.memory", "min": int(job.memory_gb * 1024)},
            ]
        }
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": f"FRDM {job.name}",
        "description": (
            "FRDM film restoration. Each task restores one contiguous chunk of frames; it reads the chunk's "
            "temporal context frames from the source and writes only the chunk's own frames."
        ),
        "parameterDefinitions": definitions,
        "steps": [step],
    }


def parameter_values(job: FarmJob, params_file: str) -> dict[str, Any]:
    """The job parameter values of ``openjd_template`` for this shot."""
    out = SequencePattern.parse(job.output)
    values: dict[str, Any] = {
        "Source": job.source,
        "SourceDir": os.path.dirname(job.source),
        "OutputDir": os.path.dirname(out.path(job.frames[0])),
        "OutputName": os.path.basename(job.output),
        "Params": params_file,
        "Frames": job.frame_range,
        "ChunkSize": job.chunk_size,
    }
    if job.mask:
        values["Mask"] = job.mask
        values["MaskDir"] = os.path.dirname(job.mask)
    if job.weights:
        values["Weights"] = job.weights
    if job.ocio_file:
        values["OcioConfig"] = job.ocio_file
    return values


def asset_references(job: FarmJob) -> dict[str, Any]:
    """Deadline Cloud's asset references: every input frame file (with context), and the output folder."""
    out_dir = os.path.dirname(SequencePattern.parse(job.output).path(job.frames[0]))
    return {
        "assetReferences": {
            "inputs": {"filenames": job.input_files(), "directories": []},
            "outputs": {"directories": [out_dir]},
            "referencedPaths": [],
        }
    }


def validate_template(template: Mapping[str, Any]) -> None:
    """Decode the template with openjd-model (the ``farm`` extra); raises InputError on a bad template."""
    from openjd.model import DecodeValidationError, decode_job_template

    try:
        decode_job_template(template=dict(template), supported_extensions=["TASK_CHUNKING"])
    except DecodeValidationError as exc:
        raise InputError(f"the OpenJD template is not valid: {exc}") from None


def deadline_files(job: FarmJob, params_file: str) -> tuple[str, str]:
    """Deadline 10 JobInfo and PluginInfo for the stock CommandLine plugin. Deadline replaces <STARTFRAME>
    and <ENDFRAME> with each task's chunk, so a task runs the OpenJD chunk's in-process command (Deadline 10
    has no session environment: a diffusion job there loads the weights once per chunk)."""
    out = SequencePattern.parse(job.output)
    job_info = {
        "Plugin": "CommandLine",
        "Name": f"FRDM {job.name}",
        "Comment": "FRDM film restoration (frdm restore per chunk)",
        "Frames": job.frame_range,
        "ChunkSize": str(job.chunk_size),
        "Priority": str(job.priority),
        "TaskTimeoutMinutes": str(max(1, -(-job.timeout // 60))),
        "OnTaskTimeout": "Error",
        "OutputDirectory0": os.path.dirname(job.output),
        "OutputFilename0": os.path.basename(out.prefix) + "#" * out.padding + out.suffix,
    }
    for key, value in (
        ("Pool", job.pool),
        ("SecondaryPool", job.secondary_pool),
        ("Group", job.group),
        ("LimitGroups", ",".join(job.limit_groups)),
        ("MachineLimit", str(job.machine_limit) if job.machine_limit else ""),
    ):
        if value:
            job_info[key] = value
    command = list(job.command)
    in_process = FarmJob(**{**job.__dict__, "resident_server": False})
    args = command[1:] + task_args(
        in_process,
        "<STARTFRAME>-<ENDFRAME>",
        params=params_file,
        source=job.source,
        output=job.output,
        mask=job.mask or "",
        ocio=job.ocio_file or "",
        weights=job.weights or "",
    )
    plugin_info = {
        "Executable": command[0],
        "Arguments": " ".join(_quote_deadline(a) for a in args),
        "Shell": "default",
        "ShellExecute": "False",
    }
    return _keyvalue(job_info), _keyvalue(plugin_info)


def _quote_deadline(arg: str) -> str:
    # Deadline passes Arguments through its own tokeniser; <QUOTE> is its portable double quote.
    if arg and not any(c.isspace() or c in "\"'" for c in arg):
        return arg
    return "<QUOTE>" + arg.replace('"', '\\"') + "<QUOTE>"


def _keyvalue(values: Mapping[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


@dataclass
class WrittenJob:
    folder: str
    template: str
    values: str
    params: str
    job_info: str
    plugin_info: str
    cloud_values: str = ""
    assets: str = ""

    def openjd_command(self) -> str:
        return f"openjd run {shlex.quote(self.template)} --step {STEP_NAME} -p file://{shlex.quote(self.values)}"

    def deadline_command(self) -> str:
        return f"deadlinecommand {shlex.quote(self.job_info)} {shlex.quote(self.plugin_info)}"

    def cloud_command(self) -> str:
        return f"deadline bundle submit {shlex.quote(self.folder)}"


def write_job(job: FarmJob, folder: str, *, validate: bool = True) -> WrittenJob:
    """Write the job bundle (template, parameter values, asset references), the parameter file and the
    Deadline 10 files into ``folder``. Everything is checked before the first file is written."""
    folder = os.path.abspath(folder)
    params_file = os.path.join(folder, PARAMS_FILE)
    template = openjd_template(job, params_file)
    if validate:
        validate_template(template)
    assets = asset_references(job)  # raises on a missing frame before anything is written
    values = parameter_values(job, params_file)
    job_info, plugin_info = deadline_files(job, params_file)
    paths = WrittenJob(
        folder,
        os.path.join(folder, TEMPLATE_FILE),
        os.path.join(folder, VALUES_FILE),
        params_file,
        os.path.join(folder, JOB_INFO_FILE),
        os.path.join(folder, PLUGIN_INFO_FILE),
        os.path.join(folder, CLOUD_VALUES_FILE),
        os.path.join(folder, ASSETS_FILE),
    )
    os.makedirs(folder, exist_ok=True)
    # The OCIO config file is a job parameter (mapped, transferred): the parameter file does not repeat it.
    params = dict(job.params)
    if job.ocio_file:
        params["ocio_config"] = SCHEMA["ocio_config"].default
    save_preset(params_file, params)
    write_text(paths.template, json.dumps(template, indent=2) + "\n")
    write_text(paths.values, json.dumps(values, indent=2) + "\n")
    cloud = {"parameterValues": [{"name": k, "value": str(v)} for k, v in values.items()]}
    write_text(paths.cloud_values, json.dumps(cloud, indent=2) + "\n")
    write_text(paths.assets, json.dumps(assets, indent=2) + "\n")
    write_text(paths.job_info, job_info)
    write_text(paths.plugin_info, plugin_info)
    return paths


def chunks(frames: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Deadline's chunks of ``size`` frames: [(first, last), ...]. (OpenJD may balance its chunks
    differently; either way each chunk is contiguous and restores the same frames.)"""
    frames = sorted(frames)
    return [(frames[i], frames[min(i + size, len(frames)) - 1]) for i in range(0, len(frames), size)]


def progress_lines(done: float, total: float) -> str:
    """What a farm task prints as it goes: OpenJD's progress line and the one Deadline 10 parses."""
    percent = max(0.0, min(100.0, 100.0 * done / total)) if total else 0.0
    return f"openjd_progress: {percent:.1f}\nProgress: {int(percent)}%"


__all__ = [
    "FarmJob",
    "WrittenJob",
    "asset_references",
    "chunks",
    "deadline_files",
    "openjd_template",
    "parameter_values",
    "progress_lines",
    "task_args",
    "validate_template",
    "write_job",
]
