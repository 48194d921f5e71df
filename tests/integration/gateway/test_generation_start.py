"""Building a generation of the real gateway: whatever fails while it starts is one StartupError that says
what failed (naming the backend when one did) and how to fix it, never a task group's exception group."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio
import httpx

from gatewayd.config import Backend, Config, HealthSettings
from gatewayd.errors import StartupError
from gatewayd.gateway.service import GatewayFactory
from tests.support.fixtures import FakeBackendFactory

MODEL = "m"


class _Instance:
    def snapshot(self) -> Mapping[str, object]:
        return {"pid": 0, "generation": 1}


def start_generation(factory: GatewayFactory, config: Config) -> BaseException | None:
    """Start a generation inside the factory's lifetime, as the run loop does, and close it again; return
    what starting it raised."""
    raised: list[BaseException] = []

    async def main() -> None:
        async with factory.lifetime():
            try:
                async with factory.generation(config, number=1, instance=_Instance()):
                    pass
            except Exception as error:
                raised.append(error)

    anyio.run(main)
    return raised[0] if raised else None


def credentials_and_key(url: str) -> Backend:
    # The loader refuses this pair (test_loader); built directly here, it stands for any backend setting
    # the HTTP client refuses when the first probe is sent.
    return Backend(
        id="cloud", url=url.replace("http://", "http://user:pw@"), api_key="sk-test", models=(MODEL,)
    )


def test_a_backend_the_http_client_refuses_fails_the_start_with_its_name_and_the_fix(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    fake = fake_backend_factory(models=(MODEL,))
    config = Config(backends=(credentials_and_key(fake.url),))
    error = start_generation(GatewayFactory(state_dir=tmp_path), config)
    assert isinstance(error, StartupError), repr(error)
    message = str(error)
    assert "backend 'cloud' cannot be used" in message
    assert "AUTHORIZATION" in message  # what the HTTP client said
    assert "gatewayd check" in message
    assert "TaskGroup" not in message
    assert "pw@" not in message


def test_the_same_fault_after_the_generation_serves_is_a_failed_probe_not_a_dead_generation(
    tmp_path: Path, fake_backend_factory: FakeBackendFactory
) -> None:
    # a generation that serves must not die of one backend's probe: the backend is reported down instead
    fake = fake_backend_factory(models=(MODEL,))
    good = Backend(id="good", url=fake.url, models=(MODEL,))
    factory = GatewayFactory(state_dir=tmp_path)
    config = Config(
        health=HealthSettings(probe_interval_busy_seconds=0.02, probe_interval_idle_seconds=0.02),
        backends=(good,),
    )
    states: list[str] = []

    async def main() -> None:
        async with factory.lifetime(), factory.generation(config, number=1, instance=_Instance()) as gen:
            # once it serves, the backend's settings turn into ones the HTTP client refuses
            runtime = gen.pool.runtimes["good"]
            runtime.config = credentials_and_key(fake.url)
            with anyio.fail_after(10):
                while runtime.health.state.value != "down":
                    await anyio.sleep(0.02)
            states.append(runtime.health.state.value)

    anyio.run(main)
    assert states == ["down"]
    assert httpx.get(fake.url + "/v1/models").status_code == 200  # the fake itself was fine all along
