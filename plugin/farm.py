"""Render-farm jobs for ``frdm restore``: an Open Job Description template and Deadline job files.

The range is cut into contiguous chunks; each chunk is one task that runs

    frdm restore SOURCE OUTPUT --frames FIRST-LAST --preset PARAMS.json

``frdm restore --frames a-b`` reads the temporal context it needs (the frames before ``a`` and after ``b``)
from the source sequence itself and writes only frames a..b, so chunks need no coordination and together
give exactly the frames of one whole-range run (the pipeline's chunk equivalence; tests/test_farm.py runs
the template with the real OpenJD runtime and compares bytes). A retried chunk skips frames it already
wrote (restore's resume), and every frame is written atomically.

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
from frdm.engine.params import SCHEMA, save_preset

STEP_NAME = "Restore"
TASK_PARAM = "Frame"
PARAMS_FILE = "frdm_params.json"
TEMPLATE_FILE = "frdm_job.template.json"
VALUES_FILE = "frdm_job.values.json"  # openjd run TEMPLATE -p file://VALUES
CLOUD_VALUES_FILE = "parameter_values.json"  # the same, in the Deadline Cloud job-bundle format
JOB_INFO_FILE = "deadline_job_info.job"
PLUGIN_INFO_FILE = "deadline_plugin_info.job"


@dataclass
class FarmJob:
    """One shot to restore on the farm. Paths must be visible from the render nodes (absolute)."""

    source: str  # name.####.exr (or any source frdm restore reads)
    output: str  # name.####.exr
    frames: list[int]
    params: Mapping[str, Any] = field(default_factory=dict)
    chunk_size: int = 8
    name: str = ""
    mask: str | None = None  # frdm restore --mask: auto | none | an artist mask sequence
    weights: str | None = None  # diffusion engine: the weights folder on the render nodes
    command: Sequence[str] = ("frdm",)  # how a render node runs frdm (e.g. a wrapper or python -m frdm.cli)
    priority: int = 50
    pool: str = ""

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
        if self.mask not in (None, "", "auto", "none"):
            self.mask = os.path.abspath(self.mask)
        if self.weights:
            self.weights = os.path.abspath(self.weights)
        if not SequencePattern.parse(self.output).is_sequence:
            raise InputError(f"output '{self.output}' must be a sequence such as name.####.exr")
        if not self.name:
            self.name = os.path.basename(self.output).split(".")[0] or "frdm"
        if not self.command:
            raise InputError("the farm command is empty")

    @property
    def frame_range(self) -> str:
        return f"{self.frames[0]}-{self.frames[-1]}"

    def restore_args(self, frames: str, params_file: str) -> list[str]:
        """The argument list after ``command`` for one chunk (``frames`` is e.g. ``1001-1008``)."""
        args = ["restore", self.source, self.output, "--frames", frames, "--preset", params_file, "--quiet"]
        if self.mask:
            args += ["--mask", self.mask]
        if self.weights:
            args += ["--weights", self.weights]
        return args


def openjd_template(job: FarmJob, params_file: str) -> dict[str, Any]:
    """An Open Job Description (2023-09) job template with one chunked step."""
    command = list(job.command)
    # Task.Param.Frame of a CONTIGUOUS CHUNK[INT] expands to "first-last", which --frames reads.
    args = command[1:] + job.restore_args(f"{{{{Task.Param.{TASK_PARAM}}}}}", "{{Param.Params}}")
    args = ["{{Param.Source}}" if a == job.source else "{{Param.Output}}" if a == job.output else a for a in args]
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": f"FRDM {job.name}",
        "description": (
            "FRDM film restoration. Each task restores one contiguous chunk of frames; frdm restore reads the "
            "chunk's temporal context frames from the source and writes only the chunk's own frames."
        ),
        "parameterDefinitions": [
            # PATH parameters (path mapping between OSes) may only default to paths relative to the
            # template: the shot's absolute paths travel in the parameter values file instead.
            {"name": "Source", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Output", "type": "PATH", "objectType": "FILE", "dataFlow": "OUT"},
            {"name": "Params", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Frames", "type": "STRING", "default": job.frame_range, "minLength": 1},
            {"name": "ChunkSize", "type": "INT", "default": job.chunk_size, "minValue": 1},
        ],
        "steps": [
            {
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
                "script": {"actions": {"onRun": {"command": command[0], "args": args}}},
            }
        ],
    }


def parameter_values(job: FarmJob, params_file: str) -> dict[str, Any]:
    """The job parameter values of ``openjd_template`` for this shot."""
    return {
        "Source": job.source,
        "Output": job.output,
        "Params": params_file,
        "Frames": job.frame_range,
        "ChunkSize": job.chunk_size,
    }


def validate_template(template: Mapping[str, Any]) -> None:
    """Decode the template with openjd-model (the ``farm`` extra); raises InputError on a bad template."""
    from openjd.model import DecodeValidationError, decode_job_template

    try:
        decode_job_template(template=dict(template), supported_extensions=["TASK_CHUNKING"])
    except DecodeValidationError as exc:
        raise InputError(f"the OpenJD template is not valid: {exc}") from None


def deadline_files(job: FarmJob, params_file: str) -> tuple[str, str]:
    """Deadline JobInfo and PluginInfo for the stock CommandLine plugin. Deadline replaces <STARTFRAME> and
    <ENDFRAME> with each task's chunk, so a task runs the same command as the OpenJD chunk."""
    out = SequencePattern.parse(job.output)
    job_info = {
        "Plugin": "CommandLine",
        "Name": f"FRDM {job.name}",
        "Comment": "FRDM film restoration (frdm restore per chunk)",
        "Frames": job.frame_range,
        "ChunkSize": str(job.chunk_size),
        "Priority": str(job.priority),
        "OutputDirectory0": os.path.dirname(job.output),
        "OutputFilename0": os.path.basename(out.prefix) + "#" * out.padding + out.suffix,
    }
    if job.pool:
        job_info["Pool"] = job.pool
    command = list(job.command)
    args = command[1:] + job.restore_args("<STARTFRAME>-<ENDFRAME>", params_file)
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

    def openjd_command(self) -> str:
        return f"openjd run {shlex.quote(self.template)} --step {STEP_NAME} -p file://{shlex.quote(self.values)}"

    def deadline_command(self) -> str:
        return f"deadlinecommand {shlex.quote(self.job_info)} {shlex.quote(self.plugin_info)}"


def write_job(job: FarmJob, folder: str, *, validate: bool = True) -> WrittenJob:
    """Write the parameters, the OpenJD template and the Deadline files into ``folder``."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    params_file = os.path.join(folder, PARAMS_FILE)
    save_preset(params_file, job.params)
    template = openjd_template(job, params_file)
    if validate:
        validate_template(template)
    paths = WrittenJob(
        folder,
        os.path.join(folder, TEMPLATE_FILE),
        os.path.join(folder, VALUES_FILE),
        params_file,
        os.path.join(folder, JOB_INFO_FILE),
        os.path.join(folder, PLUGIN_INFO_FILE),
    )
    job_info, plugin_info = deadline_files(job, params_file)
    values = parameter_values(job, params_file)
    write_text(paths.template, json.dumps(template, indent=2) + "\n")
    write_text(paths.values, json.dumps(values, indent=2) + "\n")
    cloud = {"parameterValues": [{"name": k, "value": str(v)} for k, v in values.items()]}
    write_text(os.path.join(folder, CLOUD_VALUES_FILE), json.dumps(cloud, indent=2) + "\n")
    write_text(paths.job_info, job_info)
    write_text(paths.plugin_info, plugin_info)
    return paths


def chunks(frames: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Deadline's chunks of ``size`` frames: [(first, last), ...]. (OpenJD may balance its chunks
    differently; either way each chunk is contiguous and restores the same frames.)"""
    frames = sorted(frames)
    return [(frames[i], frames[min(i + size, len(frames)) - 1]) for i in range(0, len(frames), size)]


__all__ = [
    "FarmJob",
    "WrittenJob",
    "chunks",
    "deadline_files",
    "openjd_template",
    "parameter_values",
    "validate_template",
    "write_job",
]
