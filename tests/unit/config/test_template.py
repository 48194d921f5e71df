from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import yaml

from gatewayd.config import BackendKind, Config
from gatewayd.config.loader import load, template_text


def test_the_template_ships_with_the_package() -> None:
    assert resources.files("gatewayd.config").joinpath("template.yaml").is_file()


def test_the_template_loads_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(template_text())
    loaded = load(path, environ={})
    assert loaded.warnings == ()
    assert dataclasses.replace(loaded.config, source=None) == Config()


def test_the_template_shows_every_setting() -> None:
    written = yaml.safe_load(template_text())
    config = Config()
    lists = ("backends", "groups", "keys", "routes")
    sections = [f.name for f in dataclasses.fields(config) if f.name not in (*lists, "source")]
    assert set(written) == {*sections, *lists}
    for section in sections:
        assert set(written[section]) == {f.name for f in dataclasses.fields(getattr(config, section))}, (
            section
        )


def uncommented_examples(template: str) -> str:
    """The template with its example blocks ("#backends:" / "#routes:" up to the next blank line)
    uncommented in place of the empty lists."""
    lines: list[str] = []
    in_example = False
    for line in template.splitlines():
        if line in ("backends: []", "groups: []", "keys: []", "routes: []"):
            continue
        if re.fullmatch(r"#\w+:", line):
            in_example = True
        elif not line.strip():
            in_example = False
        lines.append(line.removeprefix("#") if in_example else line)
    return "\n".join(lines)


def test_the_commented_examples_load_when_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(uncommented_examples(template_text()))
    environ = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test", "GATEWAYD_CI_KEY": "gwd-test"}
    config = load(path, environ=environ).config
    assert {backend.kind for backend in config.backends} == set(BackendKind)
    assert any(len(route.targets) > 1 for route in config.routes)
    assert any(backend.api_key == "sk-test" for backend in config.backends)
    assert any(backend.group == "gpu" for backend in config.backends)
    assert any(backend.always_on for backend in config.backends)
    assert any(backend.wake is not None for backend in config.backends)
    assert [key.key for key in config.keys] == ["gwd-test"]
