"""Unit tests of the core and the local loop: spec, ops, arch, metrics, morph, policy, search, store, CLI (epnas/)."""
