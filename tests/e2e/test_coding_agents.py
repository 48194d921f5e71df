"""The real coding agents through gatewayd: Claude Code on /v1/messages and Codex CLI on /v1/responses, each
against a scripted backend of every kind (OpenAI chat, Ollama, Anthropic) that speaks only its own dialect.

The backend answers the agent's first turn with one tool call that writes a file (Claude Code's ``Write``
tool; Codex's ``exec_command`` running ``printf hi > out.txt``) and the turn that brings the tool's result
with a final text; a test passes when the agent wrote the file and printed that text. The CLIs are
installed by .ci/run (``npm install --prefix .ci/node``); without them these tests are skipped, except in
CI (``GATEWAYD_REQUIRE_AGENTS=1``), where that is a failure. Nothing leaves loopback: every telemetry and
update switch is off, and a proxy that points at a closed loopback port catches whatever still tries.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gatewayd.config import Backend, BackendKind, Config
from tests.support.fake_scripted import Script, ScriptedBackend, running_scripted_backend
from tests.support.gateway import RunningGateway, running_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = REPO_ROOT / ".ci" / "node" / "node_modules" / ".bin"
MODEL = "local-coder"
FINAL = "FINISHED-WRITING"
#: one agent run, both turns; they take 1-5 s here
CLI_TIMEOUT_SECONDS = 90

KINDS = pytest.mark.parametrize("kind", ["openai", "ollama", "anthropic"])


def _binary(name: str) -> str:
    found = NODE_BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    reason = f"the {name} CLI is not installed (run .ci/run, or npm install --prefix .ci/node ...)"
    if os.environ.get("GATEWAYD_REQUIRE_AGENTS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env(home: Path) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{_closed_port()}"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # whatever tries to reach a vendor goes to a closed loopback port and fails at once
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exits:
        yield exits


def _start(
    stack: ExitStack, kind: str, script: Script, state_dir: Path
) -> tuple[RunningGateway, ScriptedBackend]:
    """A scripted backend of ``kind`` serving MODEL, and a gateway in front of it."""
    fake = stack.enter_context(running_scripted_backend(kind, models=(MODEL,), script=script))
    config = Config(backends=(Backend(id="b", url=fake.url, kind=BackendKind(kind)),))
    return stack.enter_context(running_gateway(config, state_dir=state_dir)), fake


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{args[0]} did not finish within {CLI_TIMEOUT_SECONDS} s: {error.stderr!r}")


@KINDS
def test_claude_code_writes_a_file_through_gatewayd(kind: str, tmp_path: Path, stack: ExitStack) -> None:
    claude = _binary("claude")
    work = tmp_path / "work"
    work.mkdir()
    target = work / "out.txt"
    script = Script(
        tool_name="Write", tool_arguments={"file_path": str(target), "content": "hi"}, final_text=FINAL
    )
    gw, fake = _start(stack, kind, script, tmp_path / "state")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **_base_env(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_AUTH_TOKEN": "test-token",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    for name in (
        "ANTHROPIC_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "CLAUDE_CODE_SUBAGENT_MODEL",
    ):
        env[name] = MODEL
    done = _run(
        [claude, "-p", "write hi to out.txt", "--output-format", "json", "--allowedTools", "Bash,Write"],
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert FINAL in result["result"]
    assert target.read_text() == "hi"
    assert len(fake.requests) >= 2  # the tool call, then the turn with its result


@KINDS
def test_codex_runs_a_command_through_gatewayd(kind: str, tmp_path: Path, stack: ExitStack) -> None:
    codex = _binary("codex")
    work = tmp_path / "work"
    work.mkdir()
    script = Script(tool_name="exec_command", tool_arguments={"cmd": "printf hi > out.txt"}, final_text=FINAL)
    gw, fake = _start(stack, kind, script, tmp_path / "state")
    home = tmp_path / "home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "gatewayd"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "danger-full-access"\n'
        "check_for_update_on_startup = false\n"
        "[analytics]\nenabled = false\n"
        "[feedback]\nenabled = false\n"
        "[model_providers.gatewayd]\n"
        'name = "gatewayd"\n'
        f'base_url = "{gw.openai_url}"\n'
        'env_key = "GATEWAYD_TEST_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {**_base_env(home), "CODEX_HOME": str(codex_home), "GATEWAYD_TEST_KEY": "test-key"}
    done = _run(
        [codex, "exec", "--skip-git-repo-check", "--ephemeral", "--json", "write hi to out.txt"],
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    messages = [e["item"]["text"] for e in events if e.get("item", {}).get("type") == "agent_message"]
    assert any(FINAL in text for text in messages), done.stdout[-2000:]
    assert (work / "out.txt").read_text() == "hi"
    assert len(fake.requests) >= 2
