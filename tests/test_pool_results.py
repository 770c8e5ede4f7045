"""The workers hand each job's result to the caller as soon as the job ends (``on_result``), so that
the daemon catalogues one parsed file while the workers parse the next ones; the jobs a result makes
possible (the lights a new master serves) join the same map."""

from __future__ import annotations

import os
import time

import pytest

from ccdwatch.jobs.pool import WorkerFailure, Workers


def _sleep_then_time(seconds: float) -> float:
    time.sleep(seconds)
    return time.time()


def _die_on_minus_one(x: int) -> int:
    if x == -1:
        os._exit(3)
    time.sleep(0.05)
    return x * 10


def test_each_result_is_handed_over_while_the_later_jobs_still_run():
    workers = Workers(processes=2, memory_limit=0)
    seen: list[tuple[int, float, bool]] = []
    try:
        futures = workers.map(_sleep_then_time, [0.05, 2.0, 0.05, 0.05], timeout=60,
                              on_result=lambda i, fut: seen.append((i, time.time(), fut.done())))
    finally:
        workers.close()
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]  # each job once, in order
    assert all(done for _, _, done in seen)
    handed = {i: t for i, t, _ in seen}
    slow_ended = futures[1].result()
    # the first result reached the caller while the long job ran, not once the batch was over
    assert handed[0] < slow_ended - 1.0
    assert all(f.result() <= handed[i] + 0.01 for i, f in enumerate(futures))


def test_a_worker_that_dies_still_hands_over_every_job_once():
    workers = Workers(processes=2, memory_limit=0)
    seen: dict[int, object] = {}

    def take(i, fut):
        assert i not in seen, f"job {i} handed over twice"
        seen[i] = fut.exception() or fut.result()

    try:
        futures = workers.map(_die_on_minus_one, [1, 2, -1, 4, 5], timeout=60, on_result=take)
    finally:
        workers.close()
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert isinstance(seen[2], WorkerFailure)
    assert [seen[i] for i in (0, 1, 3, 4)] == [10, 20, 40, 50]
    assert [f.exception() or f.result() for f in futures] == [seen[i] for i in range(5)]


def test_jobs_run_here_are_handed_over_in_order():
    workers = Workers(processes=0, memory_limit=0)  # ``workers.processes = 0``: jobs run in the daemon
    order: list[int] = []
    futures = workers.map(_die_on_minus_one, [1, 2, 3], timeout=None, on_result=lambda i, fut: order.append(i))
    assert order == [0, 1, 2]
    assert [f.result() for f in futures] == [10, 20, 30]


def _started_then_slept(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _mapped(fn, specs, take):
    """``specs`` through ``fn`` on two fresh workers, ``take`` as the map's ``on_result``."""
    workers = Workers(processes=2, memory_limit=0)
    try:
        return workers.map(fn, specs, timeout=60, on_result=take)
    finally:
        workers.close()


def test_jobs_a_result_makes_possible_run_in_the_same_map_beside_the_others():
    """``on_result`` may return more jobs (the lights a new master serves), of any function: they
    join the map, their futures are returned and they are handed over too, after the map's own."""
    seen: list[int] = []

    def take(i, fut):
        seen.append(i)
        if i == 0:  # the quick first job's result: two more jobs, of another function
            return [(_die_on_minus_one, 7), (_die_on_minus_one, 8)]
        return None

    futures = _mapped(_started_then_slept, [0.05, 0.3], take)
    assert seen == [0, 1, 2, 3]  # the added jobs are handed over too, after the map's own, in order
    assert len(futures) == 4
    assert [f.result() for f in futures[2:]] == [70, 80]


def test_added_jobs_start_before_a_long_job_of_the_map_ends():
    futures = _mapped(_started_then_slept, [0.05, 2.0],
                      lambda i, fut: [(_started_then_slept, 0.05)] if i == 0 else None)
    added_start = futures[2].result()[0]
    long_end = futures[1].result()[1]
    assert added_start < long_end - 1.0  # on the worker the first job freed, beside the long one


def test_added_jobs_survive_a_worker_that_dies_and_run_once():
    seen: dict[int, object] = {}

    def take(i, fut):
        assert i not in seen, f"job {i} handed over twice"
        seen[i] = fut.exception() or fut.result()
        return [(_die_on_minus_one, 6)] if i == 0 else None

    _mapped(_die_on_minus_one, [1, 2, -1, 4], take)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert isinstance(seen[2], WorkerFailure)
    assert [seen[i] for i in (0, 1, 3, 4)] == [10, 20, 40, 60]


def test_jobs_run_here_run_what_their_results_add_in_turn():
    workers = Workers(processes=0, memory_limit=0)
    order: list[int] = []

    def take(i, fut):
        order.append(i)
        return [(_die_on_minus_one, fut.result() // 10 + 10)] if i < 2 else None

    futures = workers.map(_die_on_minus_one, [1, 2], timeout=None, on_result=take)
    assert order == [0, 1, 2, 3]
    assert [f.result() for f in futures] == [10, 20, 110, 120]


def test_jobs_added_after_a_worker_died_run_side_by_side_once_the_suspects_are_done():
    """A dead pool's unfinished jobs run one at a time, to find the one that kills; the jobs their
    results add are no suspects: they run side by side again afterwards."""
    seen: dict[int, object] = {}

    def take(i, fut):
        seen[i] = fut.exception() or fut.result()
        return [(_started_then_slept, 0.8), (_started_then_slept, 0.8)] if i == 1 else None

    futures = _mapped(_die_on_minus_one, [-1, 2, 3], take)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert isinstance(seen[0], WorkerFailure) and (seen[1], seen[2]) == (20, 30)
    (start_a, end_a), (start_b, end_b) = futures[3].result(), futures[4].result()
    assert start_b < end_a and start_a < end_b  # side by side, not one after the other


def _first_dies_once_after_the_others(spec: tuple[int, str]) -> int:
    """Job 0 outlives the others, then its worker is killed, once (``marker`` exists)."""
    x, marker = spec
    if x == 0:
        time.sleep(1.0)
        if os.path.exists(marker):
            os.unlink(marker)
            os.kill(os.getpid(), 9)
    return x * 10


def _first_finds_its_worker_full_once(spec: tuple[int, str]) -> int:
    from ccdwatch.jobs import memory

    x, marker = spec
    if x == 0 and os.path.exists(marker):
        time.sleep(0.5)
        os.unlink(marker)
        raise memory.WorkerFull("the worker holds too much from earlier jobs")
    return x * 10


@pytest.mark.parametrize("job", [_first_dies_once_after_the_others, _first_finds_its_worker_full_once])
def test_results_are_handed_over_in_order_when_a_job_runs_again(tmp_path, job):
    """A job run again (its worker died with others in flight, or it went to fresh workers for
    memory) ends after the jobs behind it: their results wait for it, for the caller commits in
    order and takes what it was handed as "everything before this is committed" (the last rank
    of masters: a dark run again came after the flats, and the lights were planned without it)."""
    marker = tmp_path / "once"
    marker.touch()
    order: list[tuple[int, object]] = []
    futures = _mapped(job, [(i, str(marker)) for i in range(3)],
                      lambda i, fut: order.append((i, fut.exception() or fut.result())))
    assert not marker.exists()  # it did run into its fault
    assert order == [(0, 0), (1, 10), (2, 20)]
    assert [f.result() for f in futures] == [0, 10, 20]


class _Interrupted(BaseException):
    pass


def test_a_map_left_by_an_exception_does_not_leave_its_jobs_running():
    """An interrupt raised while results are handed over leaves the map at once; the jobs still
    running are killed with their workers, so the next map's jobs start on fresh ones rather than
    queue behind them."""
    workers = Workers(processes=2, memory_limit=0)

    def take(i, fut):
        if i == 0:
            raise _Interrupted()

    try:
        with pytest.raises(_Interrupted):
            workers.map(_sleep_then_time, [0.05, 20.0, 20.0], timeout=60, on_result=take)
        t0 = time.time()
        ended = workers.map(_sleep_then_time, [0.05, 0.05], timeout=15)
        assert all(f.result() - t0 < 10 for f in ended)  # not behind the 20 s jobs of the map left
    finally:
        workers.close()


def _die_once_or_fail(spec: tuple[str, str, str]) -> str:
    """``"dies"``: killed once (``marker``) after a moment; ``"fails"``: its own error at once.
    Each run is logged in ``runs``."""
    what, marker, runs = spec
    with open(runs, "a") as fh:
        fh.write(what + "\n")
    if what == "dies":
        time.sleep(0.6)
        if os.path.exists(marker):
            os.unlink(marker)
            os.kill(os.getpid(), 9)
        return what
    raise ValueError(what)


def test_a_job_that_ended_with_its_own_error_is_not_run_again_when_a_worker_dies(tmp_path):
    """A worker dies while another job has already ended with its own error: that job is done
    (handed over with its error, once); only the jobs the broken pool cut short run again."""
    marker, runs = tmp_path / "once", tmp_path / "runs.log"
    marker.touch()
    futures = _mapped(_die_once_or_fail, [("dies", str(marker), str(runs)), ("fails", str(marker), str(runs))],
                      None)
    assert not marker.exists()
    assert sorted(runs.read_text().split()) == ["dies", "dies", "fails"]
    assert futures[0].result() == "dies"
    assert isinstance(futures[1].exception(), ValueError)
