"""The broker's entry point (broker.cli): what it sets up for the process."""

from __future__ import annotations


def test_the_broker_entry_point_tunes_the_gc_and_leaves_it_collecting() -> None:
    import gc

    from broker import cli

    before = gc.get_threshold()
    enabled = gc.isenabled()
    try:
        cli._tune_gc()
        assert gc.get_threshold() == (cli.GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0  # start-up objects out of the collector's reach
        assert gc.isenabled() == enabled  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
