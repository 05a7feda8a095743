"""Unit tests of the benchmarks' own logic (bench/)."""
