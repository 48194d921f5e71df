from pathlib import Path

from click.testing import CliRunner

from gatewayd.cli.main import cli


def test_models_without_an_instance_lists_what_the_config_declares(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        """
backends:
  - {id: a, url: "http://127.0.0.1:9", models: [m1, m2]}
  - {id: b, url: "http://127.0.0.1:10", kind: ollama}
routes:
  - model: fast
    targets: [{backend: a, model: m2}, b]
"""
    )
    result = CliRunner().invoke(
        cli, ["models", "--json", "--config", str(config), "--state-dir", str(tmp_path / "state")]
    )
    assert result.exit_code == 0, result.output
    payload = result.stdout[result.stdout.index("{") :]
    import json

    rows = {row["name"]: row for row in json.loads(payload)["models"]}
    assert rows["fast"]["backends"] == [{"backend": "a", "model": "m2"}, {"backend": "b", "model": "fast"}]
    assert rows["fast"]["routed"] is True
    assert set(rows) == {"fast", "m1", "m2"}
    assert rows["m1"]["state"] == "not running"


def test_models_table_names_the_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["models", "--state-dir", str(tmp_path / "state"), "--config", "/nonexistent.yaml"]
    )
    assert result.exit_code == 1
    assert "gatewayd init" in result.output
