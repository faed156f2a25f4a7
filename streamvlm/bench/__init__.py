"""Benchmarks run by ``streamvlm bench …``: each compares against a baseline in the same run."""
