"""Group commit: concurrent callers' items are committed together, each caller returns
once its own items were committed, and a failing commit fails every caller it took."""

from __future__ import annotations

import threading
import time

import pytest

from dicomweb_server.services.group_commit import GroupCommit

WAIT = 10.0  # seconds; every wait below is bounded


class Recorder:
    """A commit that records its batches; the first one blocks until released."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self._first = True

    def __call__(self, items: list[str]) -> None:
        self.batches.append(list(items))
        if self._first:
            self._first = False
            self.entered.set()
            assert self.release.wait(WAIT)
        if self.fail_on in items:
            raise RuntimeError(f"cannot commit {self.fail_on}")


def _queued(group: GroupCommit[str], count: int) -> None:
    """Until ``count`` callers are queued behind the running commit."""
    deadline = time.monotonic() + WAIT
    while len(group._queue) < count:
        assert time.monotonic() < deadline, "callers never queued"
        time.sleep(0.001)


def _start(
    group: GroupCommit[str], items: list[str], errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            group.run(items)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_idle_group_commits_at_once() -> None:
    seen: list[list[int]] = []
    group: GroupCommit[int] = GroupCommit(seen.append, limit=10)
    group.run([1, 2])
    group.run([3])
    group.run([])  # nothing to commit: no call
    assert seen == [[1, 2], [3]]


def _behind_a_running_commit(
    commit: Recorder, limit: int, later: list[list[str]]
) -> tuple[GroupCommit[str], list[BaseException]]:
    """``["a"]`` starts a commit that blocks; the ``later`` batches queue behind it from
    their own threads; then it is released and every caller returns. The group, and
    what the callers raised."""
    group: GroupCommit[str] = GroupCommit(commit, limit=limit)
    errors: list[BaseException] = []
    first = _start(group, ["a"], errors)
    assert commit.entered.wait(WAIT)
    others = [_start(group, items, errors) for items in later]
    _queued(group, len(later))
    commit.release.set()
    for thread in [first, *others]:
        thread.join(WAIT)
        assert not thread.is_alive()
    return group, errors


def test_callers_waiting_for_a_commit_share_the_next_one() -> None:
    commit = Recorder()
    _, errors = _behind_a_running_commit(commit, 100, [[f"{n}1", f"{n}2"] for n in "bcd"])
    assert errors == []
    assert commit.batches[0] == ["a"]
    assert len(commit.batches) == 2
    assert sorted(commit.batches[1]) == ["b1", "b2", "c1", "c2", "d1", "d2"]


def test_a_group_takes_no_more_than_its_limit() -> None:
    commit = Recorder()
    _, errors = _behind_a_running_commit(commit, 4, [[f"{n}{k}" for k in "123"] for n in "bcd"])
    assert errors == []
    # Each later commit holds one caller of three items: two would exceed four.
    assert [len(b) for b in commit.batches] == [1, 3, 3, 3]
    assert sorted(i for b in commit.batches for i in b) == sorted(
        ["a"] + [f"{n}{k}" for n in "bcd" for k in "123"]
    )


def test_a_failed_commit_fails_every_caller_it_took_and_no_other() -> None:
    commit = Recorder(fail_on="c1")
    group, errors = _behind_a_running_commit(commit, 100, [["b1"], ["c1"]])
    assert len(errors) == 2 and all("cannot commit c1" in str(e) for e in errors)
    group.run(["e1"])  # the group still works
    assert commit.batches[-1] == ["e1"]


def test_an_exception_of_the_leader_reaches_the_leader() -> None:
    def boom(items: list[int]) -> None:
        raise ValueError("index gone")

    group: GroupCommit[int] = GroupCommit(boom, limit=10)
    with pytest.raises(ValueError, match="index gone"):
        group.run([1])
    with pytest.raises(ValueError, match="index gone"):
        group.run([2])  # not left busy by the failure


def test_a_follower_gets_a_new_exception_caused_by_the_leaders() -> None:
    commit = Recorder(fail_on="c1")
    group, errors = _behind_a_running_commit(commit, 100, [["b1"], ["c1"]])
    # One of b and c led the failed commit and raises its error; the other raises a new
    # one caused by it, so that no exception object is raised in two threads at once.
    assert len(errors) == 2
    led = [e for e in errors if e.__cause__ is None]
    followed = [e for e in errors if e.__cause__ is not None]
    assert len(led) == 1 and len(followed) == 1
    assert followed[0].__cause__ is led[0]
    assert group._queue == [] and not group._busy
