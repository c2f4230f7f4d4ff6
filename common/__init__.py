"""What silo and aggregator both speak: errors, config schemas, wire messages, the Fed-CMP math.

Importing this package is cheap and pulls in no torch; the torch-based modules
(``common.fedcmp``, ``common.strategy``, ``common.strategies``) are imported explicitly.
"""
