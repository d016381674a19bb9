"""One progress option: every command that can draw a progress bar takes ``--progress`` / ``--no-progress`` from
``testbed.cli_types.add_progress_option`` (no ``--quiet``, no lone ``--no-progress`` flags)."""
from __future__ import annotations

import argparse

from pipelines.main import build_parser

#: the commands whose work can show a progress bar (tqdm in physical.loop, pipelines.experiment, worlds.signs)
WITH_PROGRESS = {"patch", "sticker", "eyeglass", "evade-detector", "evade-persons", "evaluate", "demo", "signs dataset", "signs train"}


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found[full] = sub
                found.update(_commands(sub, full))
    return found


def test_every_progress_option_is_the_shared_one():
    commands = _commands(build_parser())
    assert WITH_PROGRESS <= set(commands)
    having = set()
    for name, sub in commands.items():
        options = {s for a in sub._actions for s in a.option_strings}
        assert "--quiet" not in options, name
        progress = [a for a in sub._actions if a.dest == "progress"]
        if not progress:
            assert "--no-progress" not in options, name
            continue
        having.add(name)
        (action,) = progress
        assert isinstance(action, argparse.BooleanOptionalAction), name
        assert action.option_strings == ["--progress", "--no-progress"], name
    assert having == WITH_PROGRESS


def test_progress_parses_on_and_off():
    commands = _commands(build_parser())
    sub = commands["signs dataset"]
    assert sub.parse_args(["--no-progress"]).progress is False
    assert sub.parse_args(["--progress"]).progress is True
    assert sub.parse_args([]).progress is False  # stderr is not a terminal under pytest: no bar by default
