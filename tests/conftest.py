import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.gateway", "tests.support.postgres"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
