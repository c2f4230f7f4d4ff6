"""Silo side: train the cross-modal projector on local data, with frozen vision tower and LLM."""
