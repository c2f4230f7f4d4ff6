"""Secure aggregation: a small recipe API over a hazmat layer (needs no torch)."""
