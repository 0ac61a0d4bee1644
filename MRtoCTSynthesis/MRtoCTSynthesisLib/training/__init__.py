"""Layer 5, training: configs, the resumable loop, train state and multi-process runs."""
