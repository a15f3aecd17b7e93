"""Tests of the services that deploy/ starts: each test module runs the real service."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Also meant for pyproject.toml's marker list; registering it here keeps
    # --strict-markers happy either way (a repeated registration is harmless).
    config.addinivalue_line(
        "markers", "kafka: starts a real Apache Kafka broker (deploy/kafka/broker.sh; needs Java 17+ and Maven)")
