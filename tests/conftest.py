"""Top-level test configuration: registers the harness fixtures (see tests/harness/__init__.py)."""

pytest_plugins = ["harness.plugin"]
