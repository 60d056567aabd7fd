"""Benchmark scripts (print a table, optionally write JSON)."""
