"""Fixtures for model tests. embedded_cache, embedded and model_server (one ``atlas serve-model``
subprocess per test session) live in tests/conftest.py, shared with the integration tests."""
