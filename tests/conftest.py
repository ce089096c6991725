"""Shared fixtures: a real embedded broker and a real MLflow registry (SQLite) per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.kafka.embedded import EmbeddedBroker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help="run long soak tests")


#: Fixtures that mean a test talks to real services (the embedded broker, an MLflow
#: registry): such a test is marked ``integration``, so ``pytest -m "not integration"``
#: is the fast unit run.
INTEGRATION_FIXTURES = frozenset({"broker", "tracking_uri"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration = pytest.mark.integration
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(integration)
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local SQLite registry shared by the session (schema migrations cost seconds once)."""
    path: Path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{path}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and model names."""
    return uuid.uuid4().hex[:8]
