"""What silo and aggregator both speak: errors, config schemas, wire messages, transport, key files.

Importing this package is cheap and pulls in no torch. The Fed-CMP math and the strategies live
apart, in :mod:`fedalign.fedcmp`.
"""
