from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gatewayd.config import Backend, BackendKind, Config, LogFormat, RestartMode, RouteTarget, Timeouts
from gatewayd.config.loader import (
    HOST_ENV,
    PORT_ENV,
    is_loopback_host,
    load,
    redacted,
)
from gatewayd.errors import ConfigError
from tests.unit.config.helpers import BACKEND, issues_of, load_text, write_config


def test_no_file_gives_the_defaults() -> None:
    loaded = load(None, environ={})
    assert loaded.config == Config()
    assert loaded.warnings == ()


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n", "~\n", "\n\n  \n"])
def test_a_file_that_holds_no_settings_is_refused_not_taken_for_defaults(tmp_path: Path, text: str) -> None:
    # a file cut short must not become the defaults (every route dropped, auth off)
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    (issue,) = caught.value.issues
    assert issue.source == str(path)
    assert "holds no settings" in issue.message
    assert "gatewayd init" in (issue.hint or "")
    assert "{}" in (issue.hint or "")


def test_an_empty_mapping_asks_for_the_defaults_on_purpose(tmp_path: Path) -> None:
    path = write_config(tmp_path, "{}  # the built-in defaults\n")
    assert load(path, environ={}).config == Config(source=str(path))


@pytest.mark.parametrize(("text", "found"), [("8080\n", "an integer (8080)"), ("- a\n- b\n", "a list")])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, found: str) -> None:
    (issue,) = issues_of(tmp_path, text)
    assert issue.message == f"expected a mapping at the top level, found {found}"


def test_every_form_is_built_into_typed_values(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        server:
          port: 9000
        restart:
          mode: respawn
        timeouts:
          connect_seconds: 2          # an integer where a float is expected
          total_seconds: null         # no bound
        discovery:
          enabled: false
          ports: {11434: ollama, 8081: llama-server}
        logging:
          level: debug
          format: json
        backends:
          - id: gpu.box-1
            url: http://10.0.0.2:8080/v1
            kind: llama-server
            models: llama3               # one string is a list of one
            max_concurrency: 2
            weight: 3
            timeouts:
              idle_seconds: 7
          - id: cloud
            url: https://api.example.com/v1
            models: [gpt-4o-mini, gpt-4o]
        routes:
          - model: llama3
            targets:
              - gpu.box-1                # a plain string names the backend
              - backend: cloud
                model: gpt-4o-mini
        """,
    ).config

    assert config.server.port == 9000
    assert config.restart.mode is RestartMode.RESPAWN
    assert config.timeouts == Timeouts(connect_seconds=2.0, total_seconds=None)
    assert isinstance(config.timeouts.connect_seconds, float)
    assert config.discovery.enabled is False
    assert config.discovery.ports == ((11434, BackendKind.OLLAMA), (8081, BackendKind.LLAMA_SERVER))
    assert config.logging.format is LogFormat.JSON
    gpu, cloud = config.backends
    assert gpu == Backend(
        id="gpu.box-1",
        url="http://10.0.0.2:8080/v1",
        kind=BackendKind.LLAMA_SERVER,
        models=("llama3",),
        max_concurrency=2,
        weight=3.0,
        # the backend's own key overlays the top-level timeouts
        timeouts=Timeouts(connect_seconds=2.0, idle_seconds=7.0, total_seconds=None),
    )
    assert cloud.kind is BackendKind.OPENAI
    assert cloud.models == ("gpt-4o-mini", "gpt-4o")
    assert cloud.timeouts == config.timeouts
    (route,) = config.routes
    assert route.targets == (RouteTarget("gpu.box-1"), RouteTarget("cloud", "gpt-4o-mini"))


def test_empty_sections_and_lists_mean_nothing_given(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\nbackends:\nroutes:\n")
    assert load(path, environ={}).config == Config(source=str(path))


# (file, line, key, part of the message, part of the hint or None for no hint)
READING_ERRORS = {
    "unknown key with a close match": (
        "server:\n  prot: 8080\n",
        2,
        "server.prot",
        "unknown key 'prot'",
        "did you mean 'port'?",
    ),
    "unknown key without a close match": (
        "server:\n  colour: blue\n",
        2,
        "server.colour",
        "unknown key 'colour'",
        "valid keys: host, port, backlog, max_body_bytes, keep_alive_timeout_seconds",
    ),
    "unknown section": ("sever:\n  port: 1\n", 1, "sever", "unknown key 'sever'", "did you mean 'server'?"),
    "the config's source is not a setting": (
        "source: x\n",
        1,
        "source",
        "unknown key 'source'",
        "did you mean 'store'?",  # the nearest section; "source" itself is never offered
    ),
    "duplicate key": (
        "server:\n  port: 8080\n  host: 127.0.0.1\n  port: 8081\n",
        4,
        "server.port",
        "duplicate key 'port' (first set on line 2)",
        "remove one",
    ),
    "quoted number": (
        'server:\n  port: "8080"\n',
        2,
        "server.port",
        "expected an integer, found a string ('8080')",
        "remove the quotes",
    ),
    "boolean for an integer": (
        "limits:\n  queue_size: true\n",
        2,
        "limits.queue_size",
        "expected an integer, found a boolean (true)",
        None,
    ),
    "boolean for a float": (
        "limits:\n  queue_timeout_seconds: yes\n",
        2,
        "limits.queue_timeout_seconds",
        "expected a number, found a boolean (yes)",
        None,
    ),
    "fraction for an integer": (
        "limits:\n  max_attempts: 2.5\n",
        2,
        "limits.max_attempts",
        "expected an integer, found a decimal number (2.5)",
        None,
    ),
    "number for a string": (
        "backends:\n  - id: 7\n    url: http://127.0.0.1:8080\n",
        2,
        "backends[0].id",
        "expected a string, found an integer (7)",
        'quote it: "7"',
    ),
    "invalid enum value": (
        "backends:\n  - id: a\n    url: http://127.0.0.1:8080\n    kind: olama\n",
        4,
        "backends[0].kind",
        "'olama' is not one of: openai, llama-server, ollama, vllm",
        "did you mean 'ollama'?",
    ),
    "invalid enum value in the discovery ports": (
        "discovery:\n  ports:\n    11434: olama\n",
        3,
        "discovery.ports.11434",
        "'olama' is not one of",
        "did you mean 'ollama'?",
    ),
    "discovery port that is no number": (
        "discovery:\n  ports:\n    http: ollama\n",
        3,
        "discovery.ports.http",
        "expected an integer, found a string ('http')",
        None,
    ),
    "empty value": (
        "server:\n  port:\n",
        2,
        "server.port",
        "expected an integer, found an empty value",
        "give it a value, or remove the line to use the default",
    ),
    "infinite number": ("timeouts:\n  idle_seconds: .inf\n", 2, "timeouts.idle_seconds", "finite", None),
    "section that is not a mapping": (
        "server: 8080\n",
        1,
        "server",
        "expected a mapping, found an integer (8080)",
        None,
    ),
    "list that is a mapping": (
        "backends:\n  id: a\n",
        2,
        "backends",
        "expected a list, found a mapping",
        None,
    ),
    "list of models that is a number": (
        BACKEND + "    models: 3\n",
        4,
        "backends[0].models",
        "expected a string or a list of strings, found an integer (3)",
        None,
    ),
    "missing required key": (
        "backends:\n  - url: http://127.0.0.1:8080\n",
        2,
        "backends[0]",
        "missing required key 'id'",
        None,
    ),
    "route target that is neither a name nor a mapping": (
        BACKEND + "routes:\n  - model: m\n    targets: [[a]]\n",
        6,
        "routes[0].targets[0]",
        "expected a mapping or a backend name, found a list",
        None,
    ),
    "top level that is not a mapping": (
        "- server\n",
        1,
        None,
        "expected a mapping at the top level, found a list",
        "the file is a mapping of sections",
    ),
    "YAML syntax error": (
        "server:\n  port: 8080\n   host: x\n",
        3,
        None,
        "invalid YAML: mapping values are not allowed here",
        None,
    ),
    "unterminated quote": (
        'server:\n  host: "127.0.0.1\nlogging:\n  level: info\n',
        5,
        None,
        "while scanning a quoted scalar (from line 2)",
        None,
    ),
}


@pytest.mark.parametrize(
    ("text", "line", "key", "message", "hint"), list(READING_ERRORS.values()), ids=list(READING_ERRORS)
)
def test_a_reading_error_names_its_line_key_and_fix(
    tmp_path: Path, text: str, line: int, key: str | None, message: str, hint: str | None
) -> None:
    (issue,) = issues_of(tmp_path, text)
    assert issue.source == str(tmp_path / "config.yaml")
    assert (issue.line, issue.key) == (line, key)
    assert message in issue.message
    if hint is None:
        assert issue.hint is None
    else:
        assert issue.hint is not None
        assert hint in issue.hint


SEMANTIC_ERRORS = {
    "port out of range": ("server:\n  port: 70000\n", 2, "server.port", "70000 is not a port number", None),
    "zero duration": (
        "limits:\n  queue_timeout_seconds: 0\n",
        2,
        "limits.queue_timeout_seconds",
        "must be greater than 0",
        None,
    ),
    "negative size": ("server:\n  max_body_bytes: -1\n", 2, "server.max_body_bytes", "greater than 0", None),
    "no concurrency": (
        BACKEND + "    max_concurrency: 0\n",
        4,
        "backends[0].max_concurrency",
        "must be greater than 0, found 0",
        None,
    ),
    "negative weight": (BACKEND + "    weight: -1\n", 4, "backends[0].weight", "greater than 0", None),
    "zero backend timeout": (
        BACKEND + "    timeouts:\n      connect_seconds: 0\n",
        5,
        "backends[0].timeouts.connect_seconds",
        "greater than 0",
        None,
    ),
    "discovery port out of range": (
        "discovery:\n  ports:\n    0: ollama\n",
        3,
        "discovery.ports.0",
        "0 is not a port number from 1 to 65535",
        None,
    ),
    "forced exit before the drain ends": (
        "shutdown:\n  drain_timeout_seconds: 30\n",
        1,
        "shutdown.force_exit_seconds",
        "force_exit_seconds (25.0) must be greater than drain_timeout_seconds (30.0)",
        "drain",
    ),
    "invalid backend id": (
        "backends:\n  - id: -gpu\n    url: http://127.0.0.1:8080\n",
        2,
        "backends[0].id",
        "invalid backend id '-gpu'",
        "letters, digits",
    ),
    "duplicate backend id": (
        BACKEND + "  - id: a\n    url: http://127.0.0.1:8081\n",
        4,
        "backends[1].id",
        "duplicate backend id 'a' (also backends[0])",
        "own id",
    ),
    "url scheme": (
        "backends:\n  - id: a\n    url: ftp://h\n",
        3,
        "backends[0].url",
        "must start with http:// or https://",
        "for example",
    ),
    "url without host": (
        "backends:\n  - id: a\n    url: http://\n",
        3,
        "backends[0].url",
        "names no host",
        "for example",
    ),
    "url with a bad port": (
        "backends:\n  - id: a\n    url: http://h:99999\n",
        3,
        "backends[0].url",
        "invalid url",
        "for example",
    ),
    "empty list of models": (BACKEND + "    models: []\n", 4, "backends[0].models", "empty", "discover"),
    "duplicate route": (
        BACKEND + "routes:\n  - model: m\n    targets: [a]\n  - model: m\n    targets: [a]\n",
        7,
        "routes[1].model",
        "duplicate route for model 'm' (also routes[0])",
        "one route",
    ),
    "route without targets": (
        BACKEND + "routes:\n  - model: m\n    targets: []\n",
        6,
        "routes[0].targets",
        "a route needs at least one target",
        "add at least one target",
    ),
    "unknown backend with a close match": (
        BACKEND.replace("id: a", "id: gpu-1") + "routes:\n  - model: m\n    targets: [gpu1]\n",
        6,
        "routes[0].targets[0].backend",
        "unknown backend 'gpu1'",
        "did you mean 'gpu-1'?",
    ),
    "unknown backend without backends": (
        "routes:\n  - model: m\n    targets:\n      - backend: x\n",
        4,
        "routes[0].targets[0].backend",
        "unknown backend 'x'",
        "no backends are declared",
    ),
    "log level": (
        "logging:\n  level: INFO\n",
        2,
        "logging.level",
        "'INFO' is not one of",
        "did you mean 'info'?",
    ),
    "instance name with a control character": (
        'server:\n  instance_name: "gw\\n1"\n',
        2,
        "server.instance_name",
        "is not a usable instance name",
        "printable ASCII",
    ),
    "empty instance name": (
        'server:\n  instance_name: ""\n',
        2,
        "server.instance_name",
        "is not a usable instance name",
        "null for host:port",
    ),
    "public listen address": (
        "server:\n  host: 0.0.0.0\n",
        2,
        "server.host",
        "host '0.0.0.0': listening on a public address requires authentication, and auth.mode is off",
        "set auth.mode: keys (and create keys with 'gatewayd keys create'), or keep host 127.0.0.1",
    ),
}


@pytest.mark.parametrize(
    ("text", "line", "key", "message", "hint"), list(SEMANTIC_ERRORS.values()), ids=list(SEMANTIC_ERRORS)
)
def test_a_semantic_error_names_its_line_key_and_fix(
    tmp_path: Path, text: str, line: int, key: str, message: str, hint: str | None
) -> None:
    (issue,) = issues_of(tmp_path, text)
    assert (issue.line, issue.key) == (line, key)
    assert message in issue.message
    if hint is None:
        assert issue.hint is None
    else:
        assert issue.hint is not None
        assert hint in issue.hint


def test_an_instance_name_and_the_fleet_settings_are_read(tmp_path: Path) -> None:
    text = "server:\n  instance_name: gw-a:8484\nfleet:\n  heartbeat_interval_seconds: 2\n"
    config = load_text(tmp_path, text).config
    assert config.server.instance_name == "gw-a:8484"
    assert config.fleet.heartbeat_interval_seconds == 2.0


def test_port_zero_means_any_free_port(tmp_path: Path) -> None:
    assert load_text(tmp_path, "server:\n  port: 0\n").config.server.port == 0


def test_every_problem_in_a_file_is_reported_in_file_order(tmp_path: Path) -> None:
    issues = issues_of(
        tmp_path,
        """
        server:
          port: "8484"
          hots: 127.0.0.1
        backends:
          - id: gpu
            url: ftp://gpu
            max_concurrency: 0
        routes:
          - model: llama
            targets: [gpu, cpu]
        logging:
          level: loud
        """,
    )
    assert [(issue.line, issue.key) for issue in issues] == [
        (2, "server.port"),
        (3, "server.hots"),
        (6, "backends[0].url"),
        (7, "backends[0].max_concurrency"),
        (10, "routes[0].targets[1].backend"),
        (12, "logging.level"),
    ]


def test_a_broken_backend_stops_the_cross_checks_that_would_mislead(tmp_path: Path) -> None:
    # Without its url the backend cannot be built; "unknown backend 'a'" would then be false.
    issues = issues_of(tmp_path, "backends:\n  - id: a\nroutes:\n  - model: m\n    targets: [a]\n")
    assert [(issue.line, issue.message) for issue in issues] == [(2, "missing required key 'url'")]


def test_a_target_outside_the_backends_models_is_unreachable(tmp_path: Path) -> None:
    backend = BACKEND + "    models: [llama3, qwen]\n"
    (issue,) = issues_of(tmp_path, backend + "routes:\n  - model: mistral\n    targets: [a]\n")
    assert (issue.line, issue.key) == (7, "routes[0].targets[0].backend")
    assert issue.message == (
        "unreachable: backend 'a' declares the models llama3, qwen and 'mistral' is not among them"
    )
    (issue,) = issues_of(
        tmp_path, backend + "routes:\n  - model: m\n    targets:\n      - {backend: a, model: mistral}\n"
    )
    assert (issue.line, issue.key) == (8, "routes[0].targets[0].model")

    renamed = load_text(
        tmp_path, backend + "routes:\n  - model: m\n    targets: [{backend: a, model: qwen}]\n"
    )
    assert renamed.config.routes[0].targets == (RouteTarget("a", "qwen"),)


def test_a_backend_without_models_can_serve_any_route(tmp_path: Path) -> None:
    config = load_text(tmp_path, BACKEND + "routes:\n  - model: anything\n    targets: [a]\n").config
    assert config.routes[0].model == "anything"


def test_max_concurrency_left_out_or_null_is_learned_from_the_backend(tmp_path: Path) -> None:
    assert load_text(tmp_path, BACKEND).config.backends[0].max_concurrency is None
    null = load_text(tmp_path, BACKEND + "    max_concurrency: null\n").config.backends[0]
    assert null.max_concurrency is None
    given = load_text(tmp_path, BACKEND + "    max_concurrency: 4\n").config.backends[0]
    assert given.max_concurrency == 4


def test_backend_timeouts_overlay_the_top_level_ones(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        timeouts:
          connect_seconds: 1
          total_seconds: null
        backends:
          - id: a
            url: http://127.0.0.1:8080
          - id: b
            url: http://127.0.0.1:8081
            timeouts:
              total_seconds: 60
        """,
    ).config
    a, b = config.backends
    assert a.timeouts == Timeouts(connect_seconds=1.0, total_seconds=None)
    assert b.timeouts == Timeouts(connect_seconds=1.0, total_seconds=60.0)


def test_a_bad_top_level_timeout_is_reported_once_not_per_backend(tmp_path: Path) -> None:
    issues = issues_of(
        tmp_path, "timeouts:\n  idle_seconds: -5\n" + BACKEND + "  - id: b\n    url: http://h\n"
    )
    assert [issue.key for issue in issues] == ["timeouts.idle_seconds"]


# -- API keys ---------------------------------------------------------------------------------------------


def test_an_env_api_key_is_read_from_the_environment(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, BACKEND + "    api_key: env:UPSTREAM_KEY\n", {"UPSTREAM_KEY": "sk-from-env"})
    assert loaded.config.backends[0].api_key == "sk-from-env"


def test_a_literal_api_key_is_kept(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, BACKEND + "    api_key: sk-literal\n")
    assert loaded.config.backends[0].api_key == "sk-literal"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "environment variable UPSTREAM_KEY is not set"),
        ({"UPSTREAM_KEY": ""}, "environment variable UPSTREAM_KEY is empty"),
    ],
)
def test_an_unusable_env_api_key_names_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    (issue,) = issues_of(tmp_path, BACKEND + "    api_key: env:UPSTREAM_KEY\n", environ)
    assert (issue.line, issue.key, issue.message) == (4, "backends[0].api_key", message)


def test_env_without_a_name_is_an_error(tmp_path: Path) -> None:
    (issue,) = issues_of(tmp_path, BACKEND + "    api_key: 'env:'\n")
    assert (issue.key, issue.hint) == ("backends[0].api_key", "write env:NAME")


@pytest.mark.parametrize(
    "text",
    [
        BACKEND + "    api_key: 123456789\n",  # wrong type: the value is not echoed
        BACKEND + "    api_key: sk-123456789\n    api_key: sk-123456789\n",  # duplicate
        BACKEND + '    api_key: "sk-123456789\n',  # syntax error on the key's line
        BACKEND + "    api_key: sk-123456789\n    weight: -1\n    kind: olama\nrouts: []\n",
    ],
    ids=["wrong type", "duplicate", "syntax error", "other problems"],
)
def test_no_message_shows_an_api_key(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert "123456789" not in str(caught.value)


def test_credentials_in_the_url_and_an_api_key_are_refused_naming_the_backend(tmp_path: Path) -> None:
    # both would become the Authorization header: the HTTP client refuses that at the first probe
    text = "backends:\n  - id: cloud\n    url: http://user:s3cret@127.0.0.1:8080\n    api_key: sk-x\n"
    (issue,) = issues_of(tmp_path, text)
    assert (issue.line, issue.key) == (3, "backends[0].url")
    assert "backend 'cloud'" in issue.message
    assert "remove api_key" in (issue.hint or "")
    assert "remove 'user:password@'" in (issue.hint or "")
    assert "s3cret" not in str(issue)


def test_credentials_in_the_url_alone_are_kept(tmp_path: Path) -> None:
    text = "backends:\n  - id: cloud\n    url: http://user:s3cret@127.0.0.1:8080\n"
    assert load_text(tmp_path, text).config.backends[0].url == "http://user:s3cret@127.0.0.1:8080"


def test_short_keys_and_admin_tokens_are_warned_about_not_refused(tmp_path: Path) -> None:
    text = """
    auth:
      mode: keys
      admin_token: env:ADMIN
    keys:
      - name: short
        key: gwd-abc
      - name: long
        key: gwd-0123456789abcdef
    """
    loaded = load_text(tmp_path, text, {"ADMIN": "tiny-token"})
    assert [(w.key, w.line) for w in loaded.warnings] == [("keys[0].key", 6), ("auth.admin_token", 3)]
    short, admin = loaded.warnings
    assert "key 'short' is 7 characters long, under 16" in short.message
    assert "the admin token is 10 characters long" in admin.message
    assert "gwd-abc" not in str(short)
    assert "tiny-token" not in str(admin)
    long_enough = load_text(tmp_path, "auth:\n  admin_token: 0123456789abcdef\n")
    assert long_enough.warnings == ()


# -- environment and CLI overrides ------------------------------------------------------------------------


def test_environment_overrides_the_listen_address(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "server:\n  port: 8000\n", {HOST_ENV: "localhost", PORT_ENV: "9000"})
    assert (loaded.config.server.host, loaded.config.server.port) == ("localhost", 9000)
    assert loaded.warnings == ()
    assert load(None, environ={PORT_ENV: " 0 "}).config.server.port == 0


@pytest.mark.parametrize("value", ["80a", "70000", "-1", "", "8_080", "\uff18\uff10"])
def test_an_unusable_port_variable_is_a_warning_and_ignored(tmp_path: Path, value: str) -> None:
    loaded = load_text(tmp_path, "server:\n  port: 8000\n", {PORT_ENV: value})
    assert loaded.config.server.port == 8000
    (warning,) = loaded.warnings
    assert (warning.source, warning.key) == (PORT_ENV, "server.port")
    assert "ignored" in warning.message


def test_an_empty_host_variable_is_a_warning_and_ignored() -> None:
    loaded = load(None, environ={HOST_ENV: "  "})
    assert loaded.config.server.host == "127.0.0.1"
    (warning,) = loaded.warnings
    assert (warning.source, warning.message) == (HOST_ENV, "is empty; ignored")


def test_a_public_host_from_the_environment_is_a_warning_and_ignored() -> None:
    loaded = load(None, environ={HOST_ENV: "0.0.0.0"})
    assert loaded.config.server.host == "127.0.0.1"
    (warning,) = loaded.warnings
    assert (warning.source, warning.key, warning.line) == (HOST_ENV, "server.host", None)
    assert "requires authentication" in warning.message
    assert warning.message.endswith("ignored")


def test_a_loopback_host_from_the_environment_replaces_a_public_one_in_the_file(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "server:\n  host: 0.0.0.0\n", {HOST_ENV: "127.0.0.1"})
    assert loaded.config.server.host == "127.0.0.1"


def test_listen_overrides_from_the_command_line_win_over_file_and_environment(tmp_path: Path) -> None:
    assert load(None, environ={}, listen_host=None, listen_port=None).config == Config()
    changed = load_text(
        tmp_path, "server:\n  port: 8000\n  backlog: 7\n", {HOST_ENV: "localhost", PORT_ENV: "9000"}, "::1", 0
    ).config
    assert (changed.server.host, changed.server.port, changed.server.backlog) == ("::1", 0, 7)


def test_a_loopback_host_flag_replaces_a_public_host_in_the_file(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "server:\n  host: 0.0.0.0\n", {}, "127.0.0.1")
    assert loaded.config.server.host == "127.0.0.1"


def test_with_keys_required_a_public_host_is_allowed(tmp_path: Path) -> None:
    text = "auth:\n  mode: keys\nserver:\n  host: 0.0.0.0\n  allowed_hosts: [gateway.lan]\n"
    loaded = load_text(tmp_path, text, {HOST_ENV: "::"})
    assert loaded.config.server.host == "::"
    assert loaded.warnings == ()


def test_declared_keys_and_the_admin_token_may_come_from_the_environment(tmp_path: Path) -> None:
    text = "auth:\n  admin_token: env:ADMIN\nkeys:\n  - name: ci\n    key: env:CI_KEY\n    rpm: 5\n"
    config = load_text(tmp_path, text, {"ADMIN": "adm-1", "CI_KEY": "gwd-2"}).config
    assert config.auth.admin_token == "adm-1"
    assert [(k.name, k.key, k.rpm) for k in config.keys] == [("ci", "gwd-2", 5)]
    issues = issues_of(tmp_path, text, {"ADMIN": "adm-1"})
    assert [(issue.key, issue.message) for issue in issues] == [
        ("keys[0].key", "environment variable CI_KEY is not set")
    ]


def test_a_public_host_in_the_file_is_an_error_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "server:\n  port: 8000\n  host: 0.0.0.0\n")
    (issue,) = caught.value.issues
    assert (issue.key, issue.line) == ("server.host", 3)
    assert "requires authentication" in issue.message


@pytest.mark.parametrize(
    ("host", "port", "source", "message"),
    [
        ("0.0.0.0", None, "--host", "requires authentication"),
        ("", None, "--host", "must not be empty"),
        (None, 65536, "--port", "65536 is not a port number"),
        (None, -1, "--port", "-1 is not a port number"),
    ],
)
def test_bad_listen_overrides_raise(host: str | None, port: int | None, source: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={}, listen_host=host, listen_port=port)
    (issue,) = caught.value.issues
    assert issue.source == source
    assert message in issue.message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("gateway.example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# -- files that cannot be read ----------------------------------------------------------------------------


def test_a_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    (issue,) = caught.value.issues
    assert (issue.source, issue.message) == (str(path), "no such file")
    assert issue.hint == f"run 'gatewayd init {path}' to write a commented example"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, environ={})
    assert caught.value.issues[0].message.startswith("cannot read it:")


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"server:\n  host: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert caught.value.issues[0].message == "cannot read it: it is not UTF-8 text"


# -- redacted ---------------------------------------------------------------------------------------------


def test_redacted_hides_every_api_key_and_is_plain_data(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        BACKEND + "    api_key: sk-literal-secret\n  - id: b\n    url: http://h\n    api_key: env:KEY\n"
        "  - id: c\n    url: http://h\n",
        {"KEY": "sk-env-secret"},
    ).config
    plain = redacted(config)
    assert [backend["api_key"] for backend in plain["backends"]] == ["***", "***", None]
    text = json.dumps(plain)
    assert "secret" not in text
    assert plain["source"] == str(tmp_path / "config.yaml")
    assert plain["server"] == json.loads(json.dumps(dataclasses.asdict(config.server)))  # tuples as lists
    assert plain["restart"]["mode"] == "in-process"
    assert plain["discovery"]["ports"][0] == [11434, "ollama"]
