"""``scripts/bench``: speed figures (boots, restores, exec, the default matrix, scale)."""
