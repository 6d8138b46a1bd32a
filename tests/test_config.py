"""YAML/JSON config files + flags over dataclasses."""

from dataclasses import dataclass, field

import pytest

from whisper_pipeline.config import parse_config
from whisper_pipeline.errors import ConfigError


@dataclass
class Settings:
    output_dir: str = "processed_data"
    seed: int = 42
    exclude_labels: list[str] = field(default_factory=lambda: ["noise"])


def test_flags_override_the_file_and_dashes_work(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 7\noutput-dir: from_file\n")
    (settings,) = parse_config([Settings], [str(config), "--output-dir", "from_flag"])
    assert settings == Settings(output_dir="from_flag", seed=7)


def test_json_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"exclude_labels": ["noise", "music"]}')
    (settings,) = parse_config([Settings], [str(config)])
    assert settings.exclude_labels == ["noise", "music"]


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("sede: 7\n")
    with pytest.raises(ConfigError, match=r"sede \(did you mean seed\?\)"):
        parse_config([Settings], [str(config)])


@pytest.mark.parametrize(
    ("content", "message"),
    [("seed: [1\n", "cannot parse config file"), ("- a\n- b\n", "must hold a mapping")],
)
def test_malformed_config_files(tmp_path, content, message):
    config = tmp_path / "run.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        parse_config([Settings], [str(config)])


def test_missing_config_file_and_unknown_flag(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config([Settings], [str(tmp_path / "absent.yaml")])
    with pytest.raises(ConfigError):
        parse_config([Settings], ["--no-such-flag", "1"])
