"""Each `postroom` command is declared once, beside its handler; the parser is built from them."""

from __future__ import annotations

import argparse

from postroom.ops.cli import COMMANDS, build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_declared_once() -> None:
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names))
    assert {"serve", "up", "config", "db", "user", "queue", "dmarc", "trace"} <= set(names)


def test_the_parser_has_exactly_the_declared_commands_in_their_order() -> None:
    assert list(_subcommands(build_parser())) == [command.name for command in COMMANDS]


def test_each_command_runs_its_own_handler() -> None:
    parser = build_parser()
    for command, argv in (("config", ["config", "--check"]), ("trace", ["trace", "Q1"]),
                          ("queue", ["queue", "list"]), ("dns", ["dns", "example.org"])):
        handler = next(c.handler for c in COMMANDS if c.name == command)
        assert parser.parse_args(argv).func is handler
