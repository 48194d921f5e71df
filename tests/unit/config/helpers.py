"""Writing a config file and collecting the issues loading it reports."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from gatewayd.config.loader import LoadedConfig, load
from gatewayd.errors import ConfigError, ConfigIssue

#: a backend that passes every check, for files that need one
BACKEND = """
backends:
  - id: a
    url: http://127.0.0.1:8080
"""


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_text(
    directory: Path,
    text: str,
    environ: Mapping[str, str] | None = None,
    listen_host: str | None = None,
    listen_port: int | None = None,
) -> LoadedConfig:
    return load(
        write_config(directory, text), environ=environ or {}, listen_host=listen_host, listen_port=listen_port
    )


def issues_of(directory: Path, text: str, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_text(directory, text, environ)
    return caught.value.issues
