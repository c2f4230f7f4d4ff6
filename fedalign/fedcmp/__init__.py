"""Fed-CMP and the baselines: the strategy interface, the pure math, and the one phase loop.

Pure torch, no I/O, no networking: the aggregator's Coordinator and the simulator both drive
:func:`fedalign.fedcmp.phases.run_phases`, so a results table measures what ``aggregator serve``
runs.
"""
