"""The report server's short-lived answers (actors/server/app.py Recent): the first computed once
by one thread while the others wait, given again within the period, renewed after it by one
thread while the others get the previous one; a failure is not kept."""

from __future__ import annotations

import threading

import pytest

from actors.server.app import Recent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_many_threads_asking_at_once_compute_it_once():
    recent = Recent(Clock())
    started, release = threading.Event(), threading.Event()
    calls = []

    def compute():
        calls.append(threading.get_ident())
        started.set()
        assert release.wait(10)
        return "page"
    got = []
    first = threading.Thread(target=lambda: got.append(recent.get("k", 2, compute)))
    first.start()
    assert started.wait(10)  # the first is computing: the others must wait for it, not compute
    others = [threading.Thread(target=lambda: got.append(recent.get("k", 2, compute))) for _ in range(8)]
    for t in others:
        t.start()
    release.set()
    for t in (first, *others):
        t.join(10)
    assert got == ["page"] * 9 and len(calls) == 1


def test_given_again_within_the_period_then_computed_again():
    clock = Clock()
    recent = Recent(clock)
    n = iter(range(100))
    assert recent.get("k", 2, lambda: next(n)) == 0
    clock.now += 1.9
    assert recent.get("k", 2, lambda: next(n)) == 0
    assert recent.get("other", 2, lambda: next(n)) == 1  # a key of its own
    clock.now += 0.2
    assert recent.get("k", 2, lambda: next(n)) == 2


def test_a_failure_is_not_kept_and_frees_the_waiters():
    recent = Recent(Clock())

    def fail():
        raise RuntimeError("database down")
    with pytest.raises(RuntimeError):
        recent.get("k", 2, fail)
    assert recent.get("k", 2, lambda: "back") == "back"
    assert recent.computing == {}


def test_it_keeps_at_most_size_answers():
    recent = Recent(Clock(), size=3)
    for i in range(10):
        recent.get(i, 60, lambda i=i: i)
    assert len(recent.items) == 3 and recent.get(9, 60, lambda: "new") == 9


def test_while_one_thread_renews_an_old_answer_the_others_get_the_old_one_at_once():
    clock = Clock()
    recent = Recent(clock)
    assert recent.get("k", 2, lambda: "old") == "old"
    clock.now += 5
    started, release = threading.Event(), threading.Event()

    def renew():
        started.set()
        assert release.wait(10)
        return "new"
    got = []
    renewer = threading.Thread(target=lambda: got.append(recent.get("k", 2, renew)))
    renewer.start()
    assert started.wait(10)
    assert recent.get("k", 2, lambda: "never") == "old"  # not waiting for the renewal
    release.set()
    renewer.join(10)
    assert got == ["new"] and recent.get("k", 2, lambda: "never") == "new"
