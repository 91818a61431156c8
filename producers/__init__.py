"""Event producers: load generation and benchmarks."""
