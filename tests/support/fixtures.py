"""Pytest fixtures for the fake model server; registered for the whole suite by tests/conftest.py
(``pytest_plugins = ["tests.support.fixtures"]``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Protocol

import pytest

from tests.support.fake_backend import FakeBackend, Kind, running_fake_backend


class FakeBackendFactory(Protocol):
    def __call__(
        self, *, models: Sequence[str] = ..., kind: Kind | str = ..., **behaviour: Any
    ) -> FakeBackend: ...


@pytest.fixture
def fake_backend() -> Iterator[FakeBackend]:
    """One running fake server (OpenAI kind) serving the model ``fake-model``."""
    with running_fake_backend() as backend:
        yield backend


@pytest.fixture
def fake_backend_factory() -> Iterator[FakeBackendFactory]:
    """Start any number of fake servers: ``fake_backend_factory(models=("a",), kind="ollama", hang=True)``.
    All are closed when the test ends."""
    with ExitStack() as stack:

        def start(
            *, models: Sequence[str] = ("fake-model",), kind: Kind | str = Kind.OPENAI, **behaviour: Any
        ) -> FakeBackend:
            return stack.enter_context(running_fake_backend(models=models, kind=kind, **behaviour))

        yield start
