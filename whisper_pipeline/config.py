"""Command-line + YAML/JSON configuration over typed dataclasses (HfArgumentParser, see cli.py).

`python script.py [CONFIG.yaml] [--flags]`: the file gives values, the flags override them, and a key the
dataclasses do not know is an error naming it (a typo must not be silently ignored). A run's own record of
its settings (a mapping with `arguments:` beside what the run resolved, as train_config.yaml) is read for its
`arguments`: fed back, it repeats the run.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from whisper_pipeline.cli import PipelineArgumentParser
from whisper_pipeline.errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
RECORD_ARGUMENTS = "arguments"  # the key under which a run's record keeps the arguments it was given


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of settings; a missing or malformed file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot parse config file {path}: {first_line}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    if isinstance(values.get(RECORD_ARGUMENTS), dict):
        values = values[RECORD_ARGUMENTS]
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str], *, parser: PipelineArgumentParser | None = None
) -> tuple[Any, ...]:
    """Parse an optional leading config file, then flags, into one instance of each dataclass type
    (`parser`: a PipelineArgumentParser over the same types, for the command's usage line and help groups;
    by default one with all flags under one heading)."""
    argv = list(argv)
    parser = parser or PipelineArgumentParser(list(dataclass_types))
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        values = load_config_file(Path(argv.pop(0)))
        known = {f.name for dataclass_type in dataclass_types for f in fields(dataclass_type) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = [difflib.get_close_matches(key, known, n=1) for key in unknown]
            described = ", ".join(
                f"{key} (did you mean {hint[0]}?)" if hint else key
                for key, hint in zip(unknown, hints, strict=True)
            )
            raise ConfigError(f"unknown setting(s) in config file: {described}")
        parser.set_defaults(**values)
    return parser.parse(argv)


def to_plain_dict(instance: Any) -> dict[str, Any]:
    """A dataclass as JSON/YAML-friendly values (paths as strings), for reports and saved configs."""
    if not is_dataclass(instance):
        raise TypeError(f"not a dataclass: {instance!r}")
    return {key: _plain(value) for key, value in asdict(instance).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value
