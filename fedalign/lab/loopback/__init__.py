"""Federations of real processes on loopback (ZeroMQ + CURVE, real ``aggregator serve``), over the toy
problem: what the end-to-end tests and ``benchmarks/bench_faults.py`` run.

- :mod:`.federation`: keys, roster, θ_0 and configs of a toy federation in a folder, and the
  bookkeeping of the processes started on it (:class:`LoopbackProcesses`);
- :mod:`.silo`: a silo process over the toy (``python -m fedalign.lab.loopback.silo``), optionally
  dying after a given message; :mod:`.reference`: ``silo reference``'s line protocol over the toy;
- :mod:`.fault_aggregator` / :mod:`.fault_silo`: the real CLIs that SIGKILL themselves at one step;
- :mod:`.faults`: the fault-injection harness (kill, restart, check that nothing committed is lost).
"""
