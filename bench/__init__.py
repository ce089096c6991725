"""Benchmarks: ``python -m bench`` runs the side-by-side performance table (see README)."""
