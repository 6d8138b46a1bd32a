"""Benchmarks of the pipeline against the seed's approach (run from the repository root: python -m ...)."""
