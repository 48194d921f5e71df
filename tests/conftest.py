import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.gateway"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
