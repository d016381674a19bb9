"""Every ``testbed`` subcommand's ``--help`` (nested ones included): each option has help text, and its default is
shown where it has one (one formatter, set in ``testbed.cli_types.OneLineArgumentParser``); ``testbed --version``."""
from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from pipelines.main import build_parser, main
from testbed.cli_types import DefaultsHelpFormatter


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("testbed",)):
    """(command path, parser) for the parser and every subcommand below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


COMMANDS = list(_walk(build_parser()))


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _shows_default(action: argparse.Action) -> bool:
    """Whether the action has a default a reader needs to see (not None, not an off flag)."""
    if action.default is None or action.default is argparse.SUPPRESS:
        return False
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction)):
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


def test_the_walk_reaches_nested_subcommands():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"testbed patch", "testbed models list", "testbed signs train", "testbed defences evaluate",
            "testbed report"} <= paths
    assert len(paths) > 25


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_default(path, parser):
    assert parser.formatter_class is DefaultsHelpFormatter, "one formatter for every parser"
    assert parser.description or len(path) == 1 or _help_of(path), f"{' '.join(path)} has no help line"
    visible = {a.dest for a in _options(parser) if a.help is not argparse.SUPPRESS}
    formatter = parser._get_formatter()
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        if action.help is argparse.SUPPRESS:  # a hidden deprecated spelling of a visible option only
            assert action.dest in visible, f"{' '.join(path)} {name}: hidden, and not an alias of a visible option"
            continue
        assert action.help and action.help.strip(), f"{' '.join(path)} {name}: no help text"
        text = formatter._expand_help(action)
        if _shows_default(action):
            assert "default" in text.lower(), f"{' '.join(path)} {name}: default {action.default!r} not shown"
    parser.format_help()  # renders without a formatting error (a stray % in a help text)


def _help_of(path: tuple[str, ...]) -> str | None:
    """The one-line help a parent command gives for ``path``'s subcommand."""
    parent = dict(COMMANDS)[path[:-1]]
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == path[-1] or choice.metavar == path[-1]:
                    return choice.help
    return None


def test_help_exits_zero_and_shows_defaults(capsys):
    assert main(["patch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 0.05)" in out and "(default 500)" in out  # --lr, --steps
    assert out.count("(default:") > 10


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"testbed {version('physical-testbed')}"
