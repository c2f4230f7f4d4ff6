"""What every fedalign process needs: atomic file writes, process defaults, the exit-code table."""
