"""The command table (reconciler/commands/__init__.py): the command line dispatches by name and imports only
the chosen command's module, so the table must name a handler for every subcommand the parser accepts."""

from __future__ import annotations

import argparse
import inspect

from reconciler import cli, commands


def test_every_subcommand_of_the_parser_has_a_handler_and_nothing_else_does() -> None:
    (subcommands,) = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]

    assert sorted(subcommands.choices) == sorted(commands.COMMANDS)
    for name in commands.COMMANDS:
        assert inspect.iscoroutinefunction(commands.handler(name)), name
