"""The decode thread chooser picks the faster setting by measurement and follows the machine."""
from litetorch.threads import AdaptiveThreads


def _run(chooser, cost, steps):
    used = []
    for _ in range(steps):
        n = chooser.choose()
        chooser.record(n, cost(n))
        used.append(n)
    return used


def test_tries_each_candidate_then_keeps_the_faster():
    a = AdaptiveThreads(candidates=(1, 2), probe_every=16)
    used = _run(a, lambda n: {1: 0.06, 2: 0.04}[n], 40)
    assert used[:2] == [1, 2]
    assert a.best == 2 and used.count(2) > 35


def test_switches_when_the_machine_gets_busy_and_backs_off_losing_probes():
    a = AdaptiveThreads(candidates=(1, 2), probe_every=4, max_probe_every=64)
    _run(a, lambda n: {1: 0.06, 2: 0.04}[n], 20)  # quiet: two threads win
    assert a.best == 2
    busy = {1: 0.06, 2: 0.5}  # another process takes a core: two threads collapse
    used = _run(a, lambda n: busy[n], 200)
    assert a.best == 1
    assert used.count(2) <= 8, "a losing probe must back off, not be retried every few steps"


def test_single_core_machine_has_one_candidate():
    a = AdaptiveThreads(candidates=(1, 1))
    assert _run(a, lambda n: 0.01, 5) == [1] * 5
