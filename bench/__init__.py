"""Benchmarks: each compares this project with a named peer in the same run (docs/benchmarks.md)."""
