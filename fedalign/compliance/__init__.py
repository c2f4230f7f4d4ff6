"""Compliance: the site policy checks, the hash-chained ledger, its one verifier, the audit summary and
report, and the event log. Beside :mod:`fedalign.protocol` (what silo and aggregator speak), not in it.

One idea a module: ``entries`` (the line format: canonical bytes, hashing, signing, reading),
``ledger`` (appending, crash repair, the signed head), ``witness`` (witnessed heads and the closing
exchange), ``verifier`` (the one verifier), ``audit`` (the auditor's summary and DP statement),
``audit_report`` (its renderings), ``policy`` (config against site policy), ``eventlog`` (the
operator's event log). Importing this package is cheap and pulls in no torch.
"""
