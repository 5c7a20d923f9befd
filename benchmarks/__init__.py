"""Benchmarks of lightning_autolrs: quality (``python -m benchmarks.quality``), overhead
(``python -m benchmarks.overhead``) and memory (``python -m benchmarks.memory``).

Results live in ``benchmarks/results``.
"""
