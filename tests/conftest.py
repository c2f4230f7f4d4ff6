"""Test-wide settings: one torch thread per process (2 cores here; more threads thrash)."""

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # crypto tests need no torch
    pass
