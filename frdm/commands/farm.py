"""Render-farm task helpers, called by the job templates `frdm submit` writes (not by hand):

  frdm farm server-start --state S/frdm-server.json --engine diffusion --weights W --allow-root DIR ...
  frdm farm task --state S/frdm-server.json SRC OUT --frames 1001-1008 --preset P --progress-lines
  frdm farm server-stop --state S/frdm-server.json

server-start (a step environment's onEnter) starts one `frdm serve` for the worker session, detached from the
action, on a socket only the worker's user can reach (see _private_endpoint), waits until it answers and records
its address and process id; task (each
chunk) sends its frames to that server (paths on the worker's storage: nothing is copied) and writes the
chunk's frames atomically; server-stop (onExit, also after a cancel) ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from frdm.engine import params as P


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="farm_command", metavar="ACTION", required=True)
    start = sub.add_parser("server-start", help="start the worker session's resident frdm serve")
    start.add_argument("--state", required=True, help="file recording the server's address and process")
    start.add_argument("--engine", default="classical", choices=("classical", "diffusion"))
    start.add_argument("--weights", default=None, help="weights folder (diffusion)")
    start.add_argument("--device", default=None, help="torch device, e.g. cuda:0")
    start.add_argument("--allow-root", action="append", default=[], metavar="DIR", help="as for frdm serve")
    start.add_argument("--ready-timeout", type=float, default=1500.0, help="seconds to wait for the server")
    stop = sub.add_parser("server-stop", help="stop the worker session's resident server")
    stop.add_argument("--state", required=True)
    task = sub.add_parser("task", help="restore one chunk through the session's resident server")
    task.add_argument("src", metavar="SRC")
    task.add_argument("out", metavar="OUT")
    task.add_argument("--state", required=True)
    task.add_argument("--frames", required=True, help="the chunk, e.g. 1001-1008")
    task.add_argument("--preset", help="the shot's parameter file")
    task.add_argument("--progress-lines", action="store_true", help="print openjd_progress / Progress lines")
    task.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server per reply")
    P.add_cli_arguments(task)


def run(args: argparse.Namespace) -> int:
    return {"server-start": _server_start, "server-stop": _server_stop, "task": _task}[args.farm_command](args)


UNIX_SOCKET_PATH_MAX = 100  # bytes: sun_path holds 108 on Linux, 104 on macOS, the terminating NUL included


def _private_endpoint() -> tuple[str, str | None]:
    """An endpoint for the session's resident server that other users of the render node cannot reach, and the
    private folder it lives in (None on Windows).

    A loopback TCP port is open to every local user, and the server has no keys on loopback: on a shared render
    node anyone could send it jobs that read and write under the job's roots. A Unix socket in a folder only this
    user may enter (mkdtemp makes it 0700) keeps them out. The folder is under the system temp dir, not the
    session's working directory: a Unix socket path must stay under ~100 bytes. Windows has no such socket for
    ZeroMQ, so there it stays on a loopback port (a Windows render node is usually one user's)."""
    if os.name == "nt":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{int(s.getsockname()[1])}", None
    folder = tempfile.mkdtemp(prefix="frdm-serve-")
    if len(f"{folder}/socket".encode()) > UNIX_SOCKET_PATH_MAX:  # a long TMPDIR on the render node
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="frdm-serve-", dir="/tmp")
    return f"ipc://{folder}/socket", folder


def _server_start(args: argparse.Namespace) -> int:
    from frdm.engine.atomic import write_text
    from frdm.engine.errors import InputError
    from frdm.server.client import FrdmClient

    address, folder = _private_endpoint()
    log_path = f"{os.path.splitext(args.state)[0]}.log"
    cmd = [sys.executable, "-m", "frdm.cli", "serve", "--bind", address, "--engine", args.engine]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.device:
        cmd += ["--device", args.device]
    for root in args.allow_root:
        os.makedirs(root, exist_ok=True)  # the output folder may not exist before the first chunk
        cmd += ["--allow-root", root]
    with open(log_path, "ab") as log:
        # Its own session: it outlives this action (the environment's onEnter) and holds none of its pipes,
        # so the action ends as soon as the server answers.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    print(f"openjd_status: starting frdm serve ({args.engine}) at {address}", flush=True)
    deadline = time.monotonic() + args.ready_timeout
    while True:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                tail = fh.read()[-2000:]
            _remove_folder(folder)
            raise InputError(f"frdm serve exited with {proc.returncode} before answering:\n{tail}")
        try:
            with FrdmClient(address, timeout=2.0, retries=0) as client:
                info = client.hello()
            break
        except Exception:  # not listening yet (loading its model)
            if time.monotonic() > deadline:
                proc.kill()
                _remove_folder(folder)
                raise InputError(
                    f"frdm serve did not answer within {args.ready_timeout:.0f} s (log: {log_path})"
                ) from None
            time.sleep(0.5)
    write_text(args.state, json.dumps({"address": address, "pid": proc.pid, "log": log_path, "folder": folder}))
    print(f"openjd_status: frdm serve ready at {address} (engine {info.get('engine')})", flush=True)
    return 0


def _remove_folder(folder: str | None) -> None:
    # Only a folder _private_endpoint made: the state file names it, and a state file is not trusted to name
    # anything else for deletion.
    if (
        folder
        and os.path.dirname(folder) in (tempfile.gettempdir(), "/tmp")
        and os.path.basename(folder).startswith("frdm-serve-")
    ):
        shutil.rmtree(folder, ignore_errors=True)


def _read_state(path: str) -> dict:
    from frdm.engine.errors import InputError

    try:
        with open(path, encoding="utf-8") as fh:
            return dict(json.load(fh))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"no resident frdm server recorded in {path} ({exc}); the step environment starts it"
        ) from None


def _server_stop(args: argparse.Namespace) -> int:
    if not os.path.exists(args.state):
        return 0  # never started (onEnter failed or was cancelled): nothing to stop
    state = _read_state(args.state)
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        # Gone already: the state goes too, or a second stop would signal whatever process has the pid by then.
        _remove_folder(state.get("folder"))
        os.remove(args.state)
        return 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)  # a child of ours only when start and stop share a process
        except ChildProcessError:
            waited = 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if waited == pid:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    _remove_folder(state.get("folder"))
    os.remove(args.state)
    print("openjd_status: frdm serve stopped", flush=True)
    return 0


def _task(args: argparse.Namespace) -> int:
    from frdm.engine.frames import parse_frame_range
    from frdm.plugin.farm import progress_lines
    from frdm.plugin.node import FrdmNode, Inputs

    state = _read_state(args.state)
    preset = P.load_preset(args.preset) if args.preset else None
    params = P.from_cli_args(args, preset)
    mask = P.cli_paths(args).get("mask")
    frames = parse_frame_range(args.frames)
    node = FrdmNode(str(state["address"]), params, timeout=args.timeout)
    last = [""]

    def progress(done: float, total: float, message: str) -> None:
        line = progress_lines(done, total) if args.progress_lines else ""
        if line and line != last[0]:
            print(line, flush=True)
            last[0] = line

    # The farm's cancel (NOTIFY) stops the job on the server. The handler goes in before the job is submitted:
    # a cancel that arrives while it is being submitted is kept and applied as soon as the job exists.
    job = None
    cancelled = [False]

    def cancel(signum: int, frame: object) -> None:
        cancelled[0] = True
        if job is not None:
            job.cancel()

    signal.signal(signal.SIGTERM, cancel)
    job = node.render(frames, Inputs.from_sequence(args.src, mask), args.out, progress=progress, use_cache=False)
    if cancelled[0]:
        job.cancel()
    result = job.wait()
    print(
        f"restored {len(result.frames)} frame(s) through {state['address']} ({result.seconds:.1f} s)", file=sys.stderr
    )
    return 0
