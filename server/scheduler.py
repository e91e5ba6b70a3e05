"""The daemon's queue: which jobs its worker runs next. Fair between clients (round robin, the
client that waited longest first); a newer request for the same document supersedes the older
one of its lane (completions, or edits); compatible completions of different clients run as
one batch; completions are taken from anywhere in the queues to run between a rewrite's steps.
Thread-safe: the socket's event loop adds and cancels jobs, the worker thread takes them."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from diffill.infill.api import DocumentKey, InfillRequest, InfillSettings

MAX_BATCH = 4
"""Most jobs run as one batch."""


@dataclass
class DaemonJob:
    """One request a client sent the daemon, from its arrival to its answer."""
    id: int
    client: Any
    """The daemon's ``Client`` connection that sent it (its ``id`` names the job's queue)."""
    method: str
    """``infill`` or ``load``."""
    model_key: tuple
    request: InfillRequest | None = None
    """An infill's request, decoded when it arrived."""
    settings: InfillSettings = InfillSettings()
    """Jobs batch together only under equal settings."""
    preview: bool = False
    """The client asked for the committed text as it grows (completions only)."""
    document: DocumentKey | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    why: str = "cancelled"
    queued_at: float = field(default_factory=time.monotonic)
    cache_key: str | None = None

    @property
    def action(self) -> str:
        return self.request.action if self.request is not None else "complete"

    @property
    def interactive(self) -> bool:
        """A completion (ghost text): short, and someone is waiting on every keystroke."""
        return self.method == "infill" and self.action == "complete"

    @property
    def lane(self) -> tuple[DocumentKey, str] | None:
        """What a newer job supersedes this one in: its document's completions, or its
        document's edits (a rewrite the user asked for is not dropped because typing elsewhere
        in the file asked for ghost text)."""
        if self.document is None:
            return None
        return self.document, "complete" if self.interactive else "edit"


class Scheduler:
    def __init__(self, on_cancelled: Callable[[DaemonJob], None]) -> None:
        self.queues: collections.OrderedDict[int, collections.deque[DaemonJob]] = \
            collections.OrderedDict()
        """Per client, its jobs in order; the first client is the next to be served."""
        self.latest: dict[tuple[DocumentKey, str], DaemonJob] = {}
        """The newest job of each lane, until it is answered."""
        self.cv = threading.Condition()
        self.stopping = False
        self.on_cancelled = on_cancelled
        """Answers a cancelled job taken off a queue."""

    def add(self, job: DaemonJob) -> None:
        with self.cv:
            self.supersede(job)
            if job.lane is not None:
                self.latest[job.lane] = job
            self.queues.setdefault(job.client.id, collections.deque()).append(job)
            self.cv.notify()

    def supersede(self, job: DaemonJob) -> None:
        """Cancel the older job of ``job``'s lane, if any."""
        older = self.latest.get(job.lane) if job.lane is not None else None
        if older is not None:
            self.cancel(older, "superseded by a newer request for the same document")

    def cancel(self, job: DaemonJob, why: str) -> None:
        if not job.cancelled.is_set():
            job.why = why
            job.cancelled.set()
            with self.cv:
                self.cv.notify()

    def answered(self, job: DaemonJob) -> None:
        """``job`` has its answer: a newer job of its lane has nothing left to supersede."""
        if job.lane is not None and self.latest.get(job.lane) is job:
            del self.latest[job.lane]

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def waiting(self) -> bool:
        """Whether any job waits (the worker's batch is contended)."""
        with self.cv:
            return any(self.queues.values())

    def stop(self, running: list[DaemonJob]) -> None:
        """Cancel every queued and running job, and wake the worker to find none."""
        self.stopping = True
        with self.cv:
            for q in self.queues.values():
                for job in q:
                    job.cancelled.set()
            for job in running:
                self.cancel(job, "the daemon is stopping")
            self.cv.notify_all()

    def take_batch(self) -> list[DaemonJob]:
        """Next jobs, fairly: the client that waited longest goes first, then compatible jobs
        of other clients (same model and settings) join its batch. Waits for one; empty when
        the daemon stops."""
        with self.cv:
            while True:
                self._drop_cancelled()
                if self.queues or self.stopping:
                    break
                self.cv.wait(timeout=1.0)
            if self.stopping and not self.queues:
                return []
            cid = next(iter(self.queues))
            self.queues.move_to_end(cid)  # round robin
            first = self.queues[cid].popleft()
            batch = [first]
            if first.method == "infill" and first.action != "refine":
                for other in list(self.queues):
                    if len(batch) >= MAX_BATCH:
                        break
                    q = self.queues[other]
                    if q and self._joins(q[0], first):
                        batch.append(q.popleft())
            for cid in [c for c, q in self.queues.items() if not q]:
                del self.queues[cid]
            return batch

    def take_completions(self, model_key: tuple) -> list[DaemonJob]:
        """Queued completions for ``model_key`` (one settings group, up to MAX_BATCH), from any
        place in any queue: they go before the long jobs queued with them."""
        batch: list[DaemonJob] = []
        with self.cv:
            if self.stopping:
                return batch
            for cid in list(self.queues):
                q = self.queues[cid]
                for job in list(q):
                    if len(batch) >= MAX_BATCH:
                        break
                    if job.cancelled.is_set():
                        q.remove(job)
                        self.on_cancelled(job)
                    elif job.interactive and job.model_key == model_key and \
                            (not batch or job.settings == batch[0].settings):
                        q.remove(job)
                        batch.append(job)
                if not q:
                    del self.queues[cid]
        return batch

    def _drop_cancelled(self) -> None:
        """Answer the cancelled jobs at the heads of the queues; drop emptied queues."""
        for cid in list(self.queues):
            q = self.queues[cid]
            while q and q[0].cancelled.is_set():
                self.on_cancelled(q.popleft())
            if not q:
                del self.queues[cid]

    @staticmethod
    def _joins(job: DaemonJob, first: DaemonJob) -> bool:
        """Whether ``job`` may run in one batch with ``first``."""
        return job.model_key == first.model_key and job.settings == first.settings \
            and job.method == "infill" and job.interactive == first.interactive \
            and not job.cancelled.is_set()
