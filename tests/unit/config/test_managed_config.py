"""Config of managed and wakeable backends and their exclusive groups: forms and the mistakes reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.config import Group, Wake
from tests.unit.config.helpers import issues_of, load_text

MANAGED = """
groups:
  - name: gpu
    max_running: 1
    max_wait_seconds: 30
backends:
  - id: coder
    kind: llama-server
    command: [llama-server, --port, "${PORT}", -m, "${MODEL_PATH}"]
    model_path: /models/coder.gguf
    models: [coder]
    group: gpu
    idle_ttl_seconds: 0
    env: {CUDA_VISIBLE_DEVICES: "0", A: b}
  - id: box
    url: http://10.0.0.7:11434
    kind: ollama
    models: [big]
    wake: {command: [wakeonlan, "aa:bb"], url: "http://power/on"}
"""


def test_managed_and_wakeable_backends_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, MANAGED).config
    coder, box = config.backends
    assert coder.managed
    assert coder.wakeable
    assert coder.url == ""
    assert coder.command == ("llama-server", "--port", "${PORT}", "-m", "${MODEL_PATH}")
    assert coder.env == (("CUDA_VISIBLE_DEVICES", "0"), ("A", "b"))
    assert coder.idle_ttl_seconds == 0
    assert config.groups == (Group(name="gpu", max_running=1, max_wait_seconds=30.0),)
    assert not box.managed
    assert box.wakeable
    assert box.wake == Wake(url="http://power/on", command=("wakeonlan", "aa:bb"))


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("backends:\n  - id: a\n    kind: openai\n", "backends[0]", "missing required key 'url'"),
        (
            "backends:\n  - id: a\n    command: [srv]\n",
            "backends[0]",
            "a managed or wakeable backend must declare models:",
        ),
        (
            "backends:\n  - id: a\n    url: http://127.0.0.1:${PORT}\n    models: [m]\n",
            "backends[0].url",
            "${PORT} in the url of a backend with no command",
        ),
        (
            "backends:\n  - id: a\n    command: [srv, '${PROT}']\n    models: [m]\n",
            "backends[0].command",
            "unknown placeholder ${PROT}",
        ),
        (
            "backends:\n  - id: a\n    command: [srv, '${MODEL_PATH}']\n    models: [m]\n",
            "backends[0]",
            "the command uses ${MODEL_PATH} but model_path is not set",
        ),
        (
            "backends:\n  - id: a\n    command: [srv]\n    models: [m]\n    stop_signal: SIGTREM\n",
            "backends[0].stop_signal",
            "'SIGTREM' is not a signal name",
        ),
        (
            "backends:\n  - id: a\n    command: [srv]\n    models: [m]\n    group: gpu\n",
            "backends[0].group",
            "unknown group 'gpu'",
        ),
        (
            "groups: [{name: gpu}]\nbackends:\n  - id: a\n    command: [srv]\n    models: [m]\n"
            "    group: gpu\n    always_on: true\n",
            "backends[0].always_on",
            "always_on and group exclude each other",
        ),
        (
            "backends:\n  - id: a\n    url: http://h:1\n    models: [m]\n    wake: {method: POST}\n",
            "backends[0].wake",
            "the wake action needs a url:, a command: or both",
        ),
        (
            "backends:\n  - id: a\n    command: [srv]\n    models: [m]\n    idle_ttl_seconds: -1\n",
            "backends[0].idle_ttl_seconds",
            "must be 0 or more, found -1.0",
        ),
        (
            "groups: [{name: gpu}, {name: gpu}]\n",
            "groups[1].name",
            "duplicate group 'gpu' (also groups[0])",
        ),
    ],
)
def test_mistakes_are_reported_at_their_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    issues = issues_of(tmp_path, text)
    assert [(issue.key, issue.message) for issue in issues] == [(key, message)], issues
