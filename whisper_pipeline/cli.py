"""The pipeline commands' command-line parser: HfArgumentParser with readable help and one-line errors.

HfArgumentParser lists every field twice (`--a_b` and `--a-b`), shows booleans as `--x [X]`, prints a
usage of every option with each mistake and lets unknown flags through. This parser shows dashes only
(underscores are still accepted), booleans as `--x, --no-x` (`--x false` still works), options in titled
groups (ours first), each default once, and turns a mistake into one ConfigError line; an unknown flag gets
the nearest known one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_type_hints

from transformers import HfArgumentParser

from whisper_pipeline.errors import ConfigError

MAX_CHOICES_SHOWN = 40  # characters of {a,b,c} beside a flag; longer lists go into its help text
CONFIG_USAGE = "%(prog)s [CONFIG.yaml] [--setting VALUE ...]"
CONFIG_NOTE = "A setting is a flag or a key of CONFIG.yaml (a flag wins)."


def as_typed(console_script: str, otherwise: str) -> str:
    """The command as the user typed it, for its usage line: the console script (pyproject.toml) where that
    is what runs, else `otherwise` (the checkout's script, or `python -m module`)."""
    return console_script if Path(sys.argv[0]).name == console_script else otherwise


class _HelpFormatter(argparse.HelpFormatter):
    """Booleans as `--x, --no-x`; each default once (not when the help already names it)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # keep --flag-names whole

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if getattr(action, "negation", None):
            return f"{action.option_strings[0]}, {action.negation}"
        return super()._format_action_invocation(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = re.sub(r"%%|%(?!\()", "%%", action.help or "")  # argparse %-formats the help it is given
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS, [], ""):
            return text
        if getattr(action, "negation", None):
            shown = action.option_strings[0] if action.default else action.negation
        elif isinstance(action.default, list):
            shown = " ".join(str(item) for item in action.default)
        else:
            shown = getattr(action.default, "value", action.default)
        return f"{text} (default: {str(shown).replace('%', '%%')})"


class PipelineArgumentParser(HfArgumentParser):
    """HfArgumentParser over `dataclass_types`; `groups` maps a help title to the fields shown under it, in
    that order (fields of a dataclass with an `_argument_group_name` go under that title, after any listed
    there; the rest under `other_title`)."""

    def __init__(
        self,
        dataclass_types: Sequence[type],
        *,
        prog: str | None = None,
        usage: str = CONFIG_USAGE,
        description: str = "",
        groups: Mapping[str, Sequence[str]] | None = None,
        other_title: str = "settings",
    ) -> None:
        self._titles = {name: title for title, names in (groups or {}).items() for name in names}
        self._group_order = list(groups or {})
        self._other_title = other_title
        self._groups: dict[str, Any] = {}
        super().__init__(
            dataclass_types,
            prog=prog,
            usage=usage,
            description=description,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # among hundreds of flags a prefix is a typo more often than a shorthand
        )
        listed = {name: index for names in (groups or {}).values() for index, name in enumerate(names)}
        for group in self._groups.values():  # a group's fields in the order given, not the dataclasses'
            group._group_actions.sort(key=lambda action: listed.get(action.dest, len(listed)))

    def _group(self, title: str):
        if not self._groups:  # every titled group first, in the order given, whatever the dataclasses' order
            for name in self._group_order:
                self._groups[name] = self.add_argument_group(name)
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        return self._groups[title]

    def _add_dataclass_arguments(self, dtype: type) -> None:
        hints = get_type_hints(dtype)
        default_title = getattr(dtype, "_argument_group_name", self._other_title)
        for field in dataclasses.fields(dtype):
            if not field.init:
                continue
            field.type = hints[field.name]
            group = self._group(self._titles.get(field.name, default_title))
            before = len(group._group_actions)
            self._parse_dataclass_field(group, field)
            self._tidy(group, group._group_actions[before:], field)

    def _tidy(self, group, actions: list[argparse.Action], field: dataclasses.Field) -> None:
        """Dashes only in the help, and one `--x, --no-x` entry per boolean flag."""
        main, *negations = actions
        dashed = f"--{field.name.replace('_', '-')}"
        main.option_strings = [dashed]  # `--a_b` stays registered with the parser, only hidden
        if main.choices and len(",".join(map(str, main.choices))) > MAX_CHOICES_SHOWN:
            main.metavar = field.name.upper()
            named = [re.search(rf"\b{re.escape(str(choice))}\b", main.help or "") for choice in main.choices]
            if not all(named):  # the help names them all already
                main.help = f"{main.help or ''} One of: {', '.join(map(str, main.choices))}."
        if main.nargs != "?" or main.const is not True:  # not a flag (an optional boolean takes a value)
            return
        negation = f"--no-{field.name.replace('_', '-')}"
        for action in negations:
            action.help = argparse.SUPPRESS
        if not negations:
            hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
            group.add_argument(negation, action="store_false", dest=field.name, **hidden)
        main.negation = negation
        main.metavar = None

    def error(self, message: str):
        """argparse prints the whole usage and exits; here a mistake is one line (exit 2 at the edge)."""
        raise ConfigError(message)

    def parse(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """One instance per dataclass; an unknown flag is an error naming the nearest known one."""
        *instances, remaining = self.parse_args_into_dataclasses(
            args=list(argv), return_remaining_strings=True, look_for_args_file=False
        )
        if remaining:
            raise ConfigError(self._describe_unknown(remaining))
        return tuple(instances)

    def known_flags(self) -> list[str]:
        return [
            option
            for action in self._actions
            if action.help != argparse.SUPPRESS
            for option in (*action.option_strings, getattr(action, "negation", None) or "")
            if option.startswith("--")
        ]

    def _describe_unknown(self, remaining: Iterable[str]) -> str:
        known = self.known_flags()
        described = []
        previous = ""
        for argument in remaining:
            name = argument.split("=", 1)[0]
            if not name.startswith("-"):
                if not previous.startswith("-") or "=" in previous:  # else the unknown flag's own value
                    described.append(f"{argument} (a value without a flag, or a config file not given first)")
                previous = argument
                continue
            previous = argument
            hint = difflib.get_close_matches(name.replace("_", "-"), known, n=1)
            described.append(f"{name} (did you mean {hint[0]}?)" if hint else name)
        return f"unknown argument(s): {', '.join(described)}; see --help"
