"""What the ``epnas`` commands that live outside ``epnas`` share: how ``epnas`` finds them, and how
they report a bad flag.

``epnas train`` (``child_trainer.cli:train``) and ``epnas controller`` (``controller.main:controller``)
are click commands registered as package entry points of the group ``ENTRY_POINT_GROUP``
(pyproject.toml, ``[project.entry-points."epnas.commands"]``).  The ``epnas`` group
(``epnas.cli.EpnasGroup``) loads one only when it is asked for, so ``epnas`` never imports
``child_trainer`` or ``controller``, and an image that lacks one of them (the trainer image has no
``controller``) simply has no such command.  ``python -m child_trainer`` and ``python -m controller``
run the same command objects directly.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click

from epnas.errors import EpnasError, InvalidInput, message_lines, one_line

ENTRY_POINT_GROUP = "epnas.commands"
"""The entry-point group of the commands ``epnas`` finds in other packages."""


class OneLineCommand(click.Command):
    """A click command whose usage errors (an unknown flag, a bad value, a missing or conflicting
    option) are invalid input: ``report`` turns the ``InvalidInput`` into its one line on stderr
    and its exit code (2), instead of click's usage block.  ``--help`` and ``-h`` print the help.

    ``prog`` is how the command's error lines begin (``epnas controller``, ``epnas-trainer``).
    Subclasses may add ``check`` (checks across flags, raising ``click.UsageError``) and replace
    ``report`` (the trainer also writes its termination log).
    """

    prog: str = "epnas"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {}).setdefault("help_option_names", ["-h", "--help"])
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            rest = super().parse_args(ctx, args)
            self.check(ctx)
            return rest
        except click.UsageError as err:
            problem = InvalidInput(one_line(err.format_message()))
        self.bad_flags(ctx, problem)

    def check(self, ctx: click.Context) -> None:
        """Checks across the parsed flags (``ctx.params``); raise ``click.UsageError`` for a bad combination."""

    def bad_flags(self, ctx: click.Context, err: InvalidInput) -> NoReturn:
        """Report ``err`` (``report``) and exit with its code: nothing of the command runs."""
        ctx.exit(self.report(err))

    def report(self, err: EpnasError) -> int:
        """Print ``err``'s lines (``epnas.errors.message_lines``) on stderr; return its exit code."""
        for line in message_lines(err, self.prog):
            click.echo(line, err=True)
        return err.exit_code


def run_command(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run ``command`` on ``argv`` (default ``sys.argv[1:]``) as the program ``prog_name`` and return
    its exit code instead of exiting: what ``python -m child_trainer`` and ``python -m controller``
    (and in-process callers such as the trainer's warm workers) use.  ``--help`` returns 0.
    A ``KeyboardInterrupt`` (click turns it into ``click.Abort``) propagates as itself, as it
    did before click: a warm worker interrupted by Ctrl-C stops instead of reporting a fault."""
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.Abort as abort:
        if isinstance(abort.__cause__, KeyboardInterrupt):
            raise abort.__cause__ from None
        raise
    return code if isinstance(code, int) else 0
