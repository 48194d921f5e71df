"""An exclusive group of two managed servers (one GPU) under alternating load: never both running, a
bounded number of swaps, no request waiting past the starvation bound, both models served."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.config import Backend, BackendKind, Config, Group
from tests.support.gateway import running_gateway
from tests.support.process import REPO_ROOT

pytestmark = pytest.mark.slow

MAX_WAIT_SECONDS = 1.0
LOAD_SECONDS = 6.0
#: a generous worst case for one request: the starvation bound plus two swaps of a Python test server that
#: takes up to ~1.5 s to start on a loaded 2-core machine (see core/scheduler.py for the bound)
REQUEST_BOUND_SECONDS = MAX_WAIT_SECONDS + 2 * 3.0


def member(backend_id: str, model: str) -> Backend:
    return Backend(
        id=backend_id,
        kind=BackendKind.OPENAI,
        command=(sys.executable, "-m", "tests.support.fake_backend", "--port", "${PORT}", "--models", model),
        cwd=str(REPO_ROOT),
        models=(model,),
        group="gpu",
        max_concurrency=2,
        start_timeout_seconds=30.0,
    )


def test_alternating_load_on_a_one_gpu_group(tmp_path: Path) -> None:
    config = Config(
        backends=(member("a", "model-a"), member("b", "model-b")),
        groups=(Group(name="gpu", max_running=1, max_wait_seconds=MAX_WAIT_SECONDS),),
    )
    config = replace(config, limits=replace(config.limits, queue_timeout_seconds=60.0))
    records = tmp_path / "state" / "backends"
    latencies: dict[str, list[float]] = {"model-a": [], "model-b": []}
    failures: list[str] = []
    most_running = 0
    stop = threading.Event()

    with running_gateway(config, state_dir=tmp_path / "state") as gw:

        def client(model: str) -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    started = time.monotonic()
                    response = http.post(
                        gw.openai_url + "/chat/completions",
                        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    )
                    if response.status_code != 200:
                        failures.append(f"{model}: {response.status_code} {response.text[:200]}")
                    latencies[model].append(time.monotonic() - started)

        def watch_residency() -> None:
            nonlocal most_running
            while not stop.is_set():
                most_running = max(most_running, len(list(records.glob("*.json"))))
                time.sleep(0.01)

        threads = [threading.Thread(target=watch_residency)]
        threads += [threading.Thread(target=client, args=(model,)) for model in latencies for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_SECONDS)
        stop.set()
        for thread in threads:
            thread.join(60)
        swaps = gw.call(lambda: gw.factory.manager.groups["gpu"].swaps)
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text

    assert failures == []
    assert most_running == 1  # never two models on the one GPU
    assert all(latencies[model] for model in latencies)  # neither model starved
    assert max(max(values) for values in latencies.values()) < REQUEST_BOUND_SECONDS
    served = sum(len(values) for values in latencies.values())
    # each model keeps the GPU for a turn of at least max_wait_seconds: far fewer swaps than requests
    assert 2 <= swaps <= LOAD_SECONDS / MAX_WAIT_SECONDS + 2
    assert served > 4 * swaps
    scraped = [sample for family in text_string_to_metric_families(metrics) for sample in family.samples]
    assert [s.value for s in scraped if s.name == "gatewayd_group_swaps_total"] == [swaps]
    assert next(s for s in scraped if s.name == "gatewayd_group_swaps_total").labels == {"group": "gpu"}
    waits = sum(s.value for s in scraped if s.name == "gatewayd_group_wait_seconds_count")
    assert waits == served
    depth = {"group": "gpu", "backend": "a"}
    assert [s.value for s in scraped if s.name == "gatewayd_group_queue_depth" and s.labels == depth] == [0]
