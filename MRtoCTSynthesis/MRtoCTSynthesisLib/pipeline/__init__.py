"""Layer 3, the synthesis pipeline: one synthesis call, measurement embedding, registration, uncertainty, metrics."""
