"""Aggregator side: the round state machine, secure-sum unmasking, Fed-CMP fusion, checkpoints."""
