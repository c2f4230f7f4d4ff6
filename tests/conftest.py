"""Test-wide settings: the process defaults every entry point applies (one torch thread per
process: 2 cores here, more threads thrash; hubs offline)."""

from fedalign.host.process import apply_process_defaults

apply_process_defaults()
