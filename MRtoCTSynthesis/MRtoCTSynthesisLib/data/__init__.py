"""Layer 4, data: case folders, splits, slice datasets and the phantom generator."""
