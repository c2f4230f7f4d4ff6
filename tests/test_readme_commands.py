"""Every command line in the README's bash blocks parses against the installed command as written:
the subcommand exists and every option and argument is accepted (click's own parser, nothing run).
Tried as a new user would, `fedalign-lab simulate --scenario label ...` once failed with "Got
unexpected extra argument (simulate)"; this test fails on that. The commands themselves run in
tests/e2e/test_quickstart.py (keygen, describe, init, serve, train, audit) and tests/lab."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _app(name: str) -> typer.Typer:
    if name == "silo":
        from fedalign.silo.cli import app  # its audit group is mounted on import

        return app
    if name == "aggregator":
        from fedalign.aggregator.cli import build_app

        return build_app()
    if name == "fedalign-lab":
        from fedalign.lab.cli import build_app

        return build_app()
    raise AssertionError(f"README command {name!r} is not one of this project's commands")


COMMANDS = _readme_commands()


def test_the_readme_has_the_commands_this_test_reads():
    assert len(COMMANDS) >= 10 and any(c.startswith("fedalign-lab simulate") for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_a_readme_command_parses_as_written(line):
    argv = shlex.split(line)
    if argv[0] == "make":
        targets = re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), (line, targets)
        return
    cmd = typer.main.get_command(_app(argv[0]))
    args = argv[1:]
    ctx = cmd.make_context(argv[0], list(args), resilient_parsing=False)
    while hasattr(cmd, "commands") and _rest(ctx):  # a group: descend into the subcommand
        rest = _rest(ctx)
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"{line}: no subcommand {rest[0]!r}"
        cmd, ctx = sub, sub.make_context(rest[0], rest[1:], parent=ctx, resilient_parsing=False)
    assert not _rest(ctx), f"{line}: left over {_rest(ctx)}"
    assert not hasattr(cmd, "commands"), f"{line}: names a group, not a command"


def _rest(ctx) -> list[str]:
    """What a group left for its subcommand (click keeps the subcommand's name apart from its args)."""
    protected = getattr(ctx, "_protected_args", None)
    if protected is None:
        protected = getattr(ctx, "protected_args", [])
    return list(protected) + list(ctx.args)
