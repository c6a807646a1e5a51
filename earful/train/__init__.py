"""Pre-training engine: batch size in seconds, exact accumulation, DDP, exact resume, monitoring."""
