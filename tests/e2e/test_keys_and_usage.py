"""Keys and usage with a real gatewayd and the real CLI: the key lifecycle, a revoke that a running instance
honours at once, keys declared in the config (import, resync, orphan warning), the usage summary, a kill -9
under load, and a public address without auth."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatewayd.gateway.guard import DB_FILE
from gatewayd.store.db import Store
from tests.support.fake_backend import spawned_fake_backend
from tests.support.process import GatewaydProcess, free_port, wait_for
from tests.support.process import gatewayd_cli as cli

pytestmark = pytest.mark.slow

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "stream": False}


@pytest.fixture
def upstream() -> Iterator[str]:
    with spawned_fake_backend(models=(MODEL,)) as (_, url):
        yield url


def write_config(path: Path, upstream: str, keys: str = "") -> Path:
    path.write_text(
        "auth:\n  mode: keys\n"
        "usage:\n  flush_interval_seconds: 0.1\n"
        f"backends:\n  - id: b\n    url: {upstream}\n    models: [{MODEL}]\n"
        f"{keys}"
    )
    return path


def new_key(gw: GatewaydProcess, name: str) -> str:
    created = cli("keys", "create", "--name", name, "--json", state_dir=gw.state_dir)
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["key"])


def recorded(state_dir: Path) -> int:
    store = Store.open(state_dir / DB_FILE, busy_timeout_seconds=5)
    try:
        return sum(row.requests for row in store.usage_summary(by="model"))
    finally:
        store.close()


def chat(gw: GatewaydProcess, key: str) -> httpx.Response:
    return httpx.post(gw.url("/v1/chat/completions"), json=CHAT, headers={"Authorization": f"Bearer {key}"},
                      timeout=30)  # fmt: skip


def test_key_lifecycle_through_the_cli_with_a_running_instance(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    with GatewaydProcess.gatewayd(tmp_path, config, env={"GATEWAYD_CONFIG": str(config)}) as gw:
        gw.wait_ready()
        created = cli("keys", "create", "--name", "ci", "--rpm", "100", "--json", state_dir=gw.state_dir)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        assert key.startswith("gwd-")
        assert chat(gw, key).status_code == 200
        listed = cli("keys", "list", state_dir=gw.state_dir)
        assert listed.returncode == 0
        assert "ci" in listed.stdout
        assert "active" in listed.stdout
        assert key not in listed.stdout
        revoked = cli("keys", "revoke", "ci", state_dir=gw.state_dir, env={"GATEWAYD_CONFIG": str(config)})
        assert revoked.returncode == 0, revoked.stderr
        assert "the running instance refuses it now" in revoked.stdout
        assert chat(gw, key).status_code == 401  # at once: no waiting for the cache to notice
        missing = cli("keys", "revoke", "nope", state_dir=gw.state_dir)
        assert missing.returncode == 1
        assert "keys list" in missing.stderr
        db = (gw.state_dir / DB_FILE).read_bytes()
        assert key.encode() not in db
        assert gw.stop() == 0


def test_keys_in_the_config_are_imported_resynced_and_orphans_named(tmp_path: Path, upstream: str) -> None:
    keys = (
        "keys:\n"
        "  - name: alpha\n    key: gwd-alpha-0123456789abcdefghijklmnop\n    rpm: 10\n"
        "  - name: beta\n    key: env:BETA_KEY\n"
    )
    config = write_config(tmp_path / "config.yaml", upstream, keys)
    env = {"BETA_KEY": "gwd-beta-0123456789abcdefghijklmnopq"}
    with GatewaydProcess.gatewayd(tmp_path, config, env=env) as gw:
        gw.wait_ready()
        assert "imported alpha, beta" in gw.logs()
        assert chat(gw, "gwd-alpha-0123456789abcdefghijklmnop").status_code == 200
        assert chat(gw, env["BETA_KEY"]).status_code == 200
        # alpha's limits change, beta leaves the file
        write_config(
            config,
            upstream,
            "keys:\n  - name: alpha\n    key: gwd-alpha-0123456789abcdefghijklmnop\n    rpm: 20\n",
        )
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "updated alpha" in gw.logs(), timeout=20, what="the resync")
        # the orphan warning is logged after the import's own line, once the generation is built
        wait_for(lambda: "key 'beta'" in gw.logs(), timeout=20, what="the orphan warning")
        logs = gw.logs()
        assert "no longer in the config but is still valid" in logs
        assert env["BETA_KEY"] not in logs  # never a key in the logs
        assert "gwd-alpha-0123456789abcdefghijklmnop" not in logs
        assert gw.stop() == 0


def test_usage_is_summarised_by_the_cli(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        key = new_key(gw, "team")
        for _ in range(3):
            assert chat(gw, key).status_code == 200
        assert gw.stop() == 0  # a clean stop writes what is buffered
    by_key = cli("usage", "--by", "key", "--since", "1h", "--json", state_dir=gw.state_dir)
    assert by_key.returncode == 0, by_key.stderr
    rows = {row["group"]: row for row in json.loads(by_key.stdout)}
    assert rows["team"]["requests"] == 3
    assert rows["team"]["completion_tokens"] > 0
    table = cli("usage", "--by", "model", state_dir=gw.state_dir)
    assert table.returncode == 0
    assert MODEL in table.stdout


def test_after_a_kill_9_under_load_the_store_opens_cleanly(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        key = new_key(gw, "load")
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    try:
                        client.post(gw.url("/v1/chat/completions"), json=CHAT,
                                    headers={"Authorization": f"Bearer {key}"})  # fmt: skip
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: recorded(gw.state_dir) >= 20, timeout=20, what="usage writes under load")
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait_exit()
        stop.set()
        for thread in threads:
            thread.join(10)
    store = Store.open(gw.state_dir / DB_FILE)
    try:
        assert [record.name for record in store.list_keys()] == ["load"]
        assert sum(row.requests for row in store.usage_summary(by="model")) >= 20
    finally:
        store.close()
    again = GatewaydProcess.gatewayd(tmp_path, config, name="again", port=free_port())
    with again:
        again.wait_ready()
        assert chat(again, key).status_code == 200
        assert again.stop() == 0


def test_a_public_address_without_auth_refuses_to_start(tmp_path: Path) -> None:
    result = cli("run", "--host", "0.0.0.0", "--port", str(free_port()), state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "listening on a public address requires authentication" in result.stderr
    assert "auth.mode: keys" in result.stderr


def test_a_keys_limits_survive_a_respawn(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    config.write_text(
        config.read_text() + "restart:\n  respawn_ready_timeout_seconds: 30\n  handoff_close_seconds: 0.5\n"
    )
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        created = cli("keys", "create", "--name", "few", "--rpm", "3", "--json", state_dir=gw.state_dir)
        key = json.loads(created.stdout)["key"]
        assert [chat(gw, key).status_code for _ in range(3)] == [200, 200, 200]
        wait_for(lambda: recorded(gw.state_dir) >= 3, timeout=10, what="the usage to be written")
        respawn = cli("restart", "--respawn", "--port", str(gw.port), state_dir=gw.state_dir)
        assert respawn.returncode == 0, respawn.stderr
        assert gw.wait_exit() == 0
        refused = chat(gw, key)  # served by the new process, which restored the key's window
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert gw.stop() == 0


def test_a_reload_cannot_turn_auth_off_on_a_public_socket(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path / "config.yaml", upstream)
    config.write_text(config.read_text() + "server:\n  host: 0.0.0.0\n")
    with GatewaydProcess.gatewayd(tmp_path, config) as gw:
        gw.wait_ready()
        config.write_text(
            config.read_text().replace("mode: keys", 'mode: "off"').replace("0.0.0.0", "127.0.0.1")
        )
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "turns auth off while gatewayd listens on 0.0.0.0" in gw.logs(), timeout=20,
                 what="the rejected reload")  # fmt: skip
        assert httpx.post(gw.url("/v1/chat/completions"), json=CHAT).status_code == 401  # keys still required
        assert gw.stop() == 0
