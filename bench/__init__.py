"""Benchmarks of voiceclf on the shared reference data (``python -m bench.run``)."""
