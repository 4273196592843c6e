"""Layer 0, the conventions every module shares: errors, atomic file writes, precision, statistics, the run directory."""
