"""heap.settle: start-up objects frozen, larger young generation, cycles still collected.

Each test runs in a fresh interpreter: freezing the test process's own heap would keep
every later test's garbage cycles alive.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import gc, weakref
from failoverd import heap
class Node:
    pass
junk = Node(); junk.me = junk; del junk  # start-up garbage: collected, not frozen
frozen = heap.settle()
assert frozen == gc.get_freeze_count() > 1000, frozen
assert gc.get_threshold() == heap.THRESHOLDS, gc.get_threshold()
assert gc.garbage == []
# a cycle made after start-up is still collected, by allocation alone (no gc.collect())
cycle = Node(); cycle.me = cycle
alive = weakref.ref(cycle)
del cycle
assert alive() is not None  # garbage until the young generation next runs
held = [[] for _ in range(3 * heap.THRESHOLDS[0])]
assert alive() is None, "the young generation never ran"
print("ok", frozen)
"""


def test_settle_freezes_start_up_and_still_collects_cycles() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
