"""Group commit: the batches of concurrent callers are committed together.

Most of what storing a small instance costs is paid once per commit whatever its size:
the duplicate lookup, the index transaction and its WAL fsync, the writer lock the
processes share, and the two ``syncfs`` rounds. With several STOW requests at once, each
committing its own few instances pays those costs again and again, and the requests
wait for each other's commits anyway. So a caller that finds a commit running queues
its items; when that commit ends, the first caller still waiting leads the next one,
taking what has been queued meanwhile (up to ``limit`` items). Nobody waits for
company: an idle store commits at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Job(Generic[T]):
    items: Sequence[T]
    finished: bool = False
    error: BaseException | None = field(default=None)


class GroupCommit(Generic[T]):
    """Runs ``commit`` on the items of one or more concurrent ``run`` calls at a time."""

    def __init__(self, commit: Callable[[list[T]], None], limit: int) -> None:
        self._commit = commit
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: list[_Job[T]] = []
        self._busy = False

    def run(self, items: Sequence[T]) -> None:
        """Returns once ``items`` were committed (by this thread or another); raises if
        the commit that took them failed."""
        if not items:
            return
        job: _Job[T] = _Job(items)
        jobs: list[_Job[T]] = []
        error: BaseException | None = None
        try:
            with self._cond:
                self._queue.append(job)
                try:
                    while self._busy and not job.finished:
                        self._cond.wait()
                except BaseException:
                    if job in self._queue:  # not taken: nobody commits it now
                        self._queue.remove(job)
                    raise
                if job.finished:
                    failed = job.error
                    if failed is not None:
                        # A new exception: the leader's own is being raised in its thread.
                        raise RuntimeError(f"the shared commit failed: {failed!r}") from failed
                    return
                self._busy = True
                jobs = self._take(job)
            self._commit([item for j in jobs for item in j.items])
        except BaseException as exc:
            error = exc
            raise
        finally:
            if jobs:  # this thread led a commit: its followers learn how it went
                with self._cond:
                    for j in jobs:
                        j.finished = True
                        j.error = error
                    self._busy = False
                    self._cond.notify_all()

    def _take(self, leader: _Job[T]) -> list[_Job[T]]:
        """The leader's job and, oldest first, the queued ones that fit (lock held)."""
        self._queue.remove(leader)
        jobs, size, rest = [leader], len(leader.items), []
        for job in self._queue:
            if size + len(job.items) <= self._limit:
                jobs.append(job)
                size += len(job.items)
            else:
                rest.append(job)
        self._queue = rest
        return jobs
