"""Jobs and who runs next: a restore request once accepted, the fair queue the worker takes chunks from,
and the table of live jobs both threads look at."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from frdm.server.protocol import RawImage, RestoreRequest
from frdm.server.storage import RootedPath


@dataclass
class Job:
    req: RestoreRequest
    identity: bytes
    blobs: list[bytes]
    real_sources: dict[int, RootedPath]  # path mode: frame -> resolved path
    real_masks: dict[int, RootedPath]
    output_paths: dict[int, RootedPath]  # path mode output: frame -> resolved path
    remaining: collections.deque[int]
    state: str = "queued"  # queued | running
    done: float = 0.0
    message: str = "queued"
    finished_frames: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    hashes: dict[tuple[str, int], str] = field(default_factory=dict)
    recalled: dict[int, RawImage] = field(default_factory=dict)  # sources named by id, found in memory
    keys: dict[int, str] = field(default_factory=dict)  # finished frame -> cache key (for re-attach replay)

    @property
    def id(self) -> str:
        return self.req.job_id

    @property
    def total(self) -> int:
        return len(self.req.frames)

    @property
    def inline_bytes(self) -> int:
        return sum(len(b) for b in self.blobs)


class FairQueue:
    """Jobs per client, clients served round-robin, a chunk at a time."""

    def __init__(self) -> None:
        self._clients: collections.OrderedDict[bytes, collections.deque[Job]] = collections.OrderedDict()
        self._cond = threading.Condition()

    def put(self, job: Job, *, front: bool = False) -> None:
        with self._cond:
            jobs = self._clients.setdefault(job.identity, collections.deque())
            if front:
                jobs.appendleft(job)
            else:
                jobs.append(job)
            self._cond.notify()

    def take(self, timeout: float) -> Job | None:
        """The head job of the client whose turn it is; that client goes to the back of the line."""
        with self._cond:
            if not self._clients and not self._cond.wait(timeout):
                return None
            if not self._clients:
                return None
            identity, jobs = self._clients.popitem(last=False)
            job = jobs.popleft()
            if jobs:
                self._clients[identity] = jobs  # re-inserted last: its next turn comes after the others
            return job

    def remove(self, job_id: str) -> Job | None:
        with self._cond:
            for identity, jobs in list(self._clients.items()):
                for job in jobs:
                    if job.id == job_id:
                        jobs.remove(job)
                        if not jobs:
                            del self._clients[identity]
                        return job
        return None

    def drain(self) -> list[Job]:
        with self._cond:
            out = [j for jobs in self._clients.values() for j in jobs]
            self._clients.clear()
            return out

    def __len__(self) -> int:
        with self._cond:
            return sum(len(j) for j in self._clients.values())

    def order(self) -> list[Job]:
        """Jobs in the order the worker will reach them (first chunk of each)."""
        with self._cond:
            queues = [list(j) for j in self._clients.values()]
        out: list[Job] = []
        while any(queues):
            for q in queues:
                if q:
                    out.append(q.pop(0))
        return out


class JobBoard:
    """The live jobs (queued or running) by id, the fair queue and the job the worker is on.

    The socket loop and the worker share this one object; ``lock`` guards ``jobs`` and ``current``."""

    def __init__(self) -> None:
        self.queue = FairQueue()
        self.jobs: dict[str, Job] = {}
        self.current: Job | None = None
        self.lock = threading.Lock()

    def get(self, job_id: object) -> Job | None:
        if not isinstance(job_id, str):
            return None
        with self.lock:
            return self.jobs.get(job_id)

    def add(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job
        self.queue.put(job)

    def forget(self, job_id: str) -> None:
        with self.lock:
            self.jobs.pop(job_id, None)

    def unqueue(self, job_id: str) -> Job | None:
        """Take a job out of the queue (and the table) if it has not started; None if it is not queued."""
        job = self.queue.remove(job_id)
        if job is not None:
            self.forget(job_id)
        return job

    def start(self, job: Job) -> None:
        with self.lock:
            self.current = job
            job.state = "running"

    def finish(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
            self.current = None

    def inline_bytes(self) -> int:
        """Inline data the live jobs hold (until a job ends, its blobs stay in memory)."""
        with self.lock:
            return sum(j.inline_bytes for j in self.jobs.values())

    def live(self) -> list[Job]:
        with self.lock:
            return list(self.jobs.values())

    def status(self) -> dict[str, object]:
        with self.lock:
            jobs = {
                j.id: {"state": j.state, "done": j.done, "total": j.total, "message": j.message}
                for j in self.jobs.values()
            }
            current = self.current.id if self.current is not None else None
        return {"current": current, "queue": [j.id for j in self.queue.order()], "jobs": jobs}
