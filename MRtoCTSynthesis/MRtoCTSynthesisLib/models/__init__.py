"""Layer 2, models: networks, diffusion processes, samplers, synthesis methods and their checkpoint format."""
