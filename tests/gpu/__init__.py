"""The GPU tier (see conftest.py). A package, so its conftest is `gpu.conftest` and never shadows tests/conftest.py."""
