"""The cyclic garbage collector, set for a daemon whose requests make no reference cycles.

CPython runs a young-generation collection every 700 container allocations (a free only
counts back down to zero, so churn drives it, not garbage), every tenth of those also scans
the middle generation, and now and then a full collection walks every container in the
process: the modules, classes and functions of failoverd, aiohttp and the standard library,
tens of thousands of objects that live as long as the daemon. A proxied request allocates a
few hundred containers and frees all of them by reference counting (no cycles; the
benchmark's profile found none), so nearly all of that work finds nothing: about 5 % of the
daemon's CPU under load, in the benchmark.

Once the daemon is up, `settle` collects what start-up left behind, moves every object alive
then out of the collector's sight (`gc.freeze`: they are never scanned again, and freed as
usual when their last reference goes), and makes the young generation ten times larger.
Garbage cycles, should a request make some, are still collected, a little later. Only the
daemon's entry point calls it: the test suite runs many daemons in one process and must not
freeze its own heap.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["THRESHOLDS", "settle"]

logger = logging.getLogger(__name__)

# (young, middle, old): a young collection per 10,000 net container allocations instead of
# 700; the older generations keep their ratios to it
THRESHOLDS = (10_000, 10, 10)


def settle() -> int:
    """Collects start-up garbage, freezes what is alive and raises the collector's
    thresholds; returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    frozen = gc.get_freeze_count()
    logger.debug("%d start-up objects frozen; collector thresholds %s", frozen,
                 "/".join(map(str, THRESHOLDS)))
    return frozen
