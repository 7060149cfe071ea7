"""One tiny model folder per architecture per session, shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.models.config import ARCHS
from tests.factories import make_tiny_model


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parametrised over every architecture: a test using it runs once per arch."""
    return make_tiny_model(tmp_path_factory, request.param)
