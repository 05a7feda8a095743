"""Unit tests: pure logic and single processes; no servers."""
