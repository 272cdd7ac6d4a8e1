"""Benchmarks: rlhf-ray against the raw engines and a peer."""
