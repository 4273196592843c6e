"""Layer 0, shared by every module: errors, atomic file writes, precision, statistics, the run directory."""
