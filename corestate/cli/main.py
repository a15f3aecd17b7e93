"""The ``corestate`` command: global options, command registry, and error handling.

Every command module registers itself on :data:`cli`. Errors derived from
:class:`~corestate.errors.CoreStateError` are printed as one line and exit with their
code; a *usage error* (unknown command or option, missing or bad argument: click's
:class:`~click.UsageError`) is one line too, with the nearest command for a typo, and
exits 2; an interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM), after the same clean-up
(locks released), unless the command handles the signal itself (protect, agent, worker).
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
import types

import click

from corestate import __version__
from corestate.cli.context import Context
from corestate.errors import CoreStateError
from corestate.kernel.memory import tune_gc, tune_malloc

# Command name -> the module that defines it. A module is imported only when one of its
# commands runs (or `--help` lists them all), so a command starts without loading the
# others' dependencies.
COMMANDS = {"init": "repo", "key": "repo", "unlock": "repo", "config": "config",
            "backup": "backup", "protect": "protect", "snapshots": "snapshots",
            "restore": "restore", "ls": "ls", "find": "find", "check": "check",
            "forget": "forget", "prune": "prune", "repair": "repair", "stats": "stats",
            "diff": "diff", "tiering": "tiering", "alerts": "alerts", "topics": "topics",
            "agent": "agent", "worker": "worker"}


class CommandGroup(click.Group):
    """A command group whose unknown-command error names the nearest command; the top
    group imports a command's module when the command is asked for (:data:`COMMANDS`)."""

    group_class = type  # subgroups (key, topics, alerts...) are CommandGroups too

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if self is cli and cmd_name not in self.commands and cmd_name in COMMANDS:
            _load(COMMANDS[cmd_name])
        cmd = super().get_command(ctx, cmd_name)
        if self is cli and cmd is not None:
            _add_common(cli)  # also for a command module imported before main() ran
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(self.commands)
        if self is cli:
            names |= set(COMMANDS)
        return sorted(names)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = self.list_commands(ctx)
            prefixed = [c for c in known if c.startswith(name)]
            near = prefixed if len(prefixed) == 1 else difflib.get_close_matches(name, known, 1)
            hint = (f"did you mean {near[0]!r}?" if near
                    else f"`{ctx.command_path} --help` lists the commands")
            raise click.UsageError(f"no such command {name!r} ({hint})", ctx)
        return super().resolve_command(ctx, args)


def usage_error_line(exc: click.UsageError) -> str:
    """A usage error as one line: the command, the problem, where to read more.

    >>> ctx = click.Context(click.Command("restore"), info_name="corestate restore")
    >>> usage_error_line(click.UsageError("Missing option '-t' / '--target'.", ctx))
    "corestate restore: error: missing option '-t' / '--target' (see `corestate restore --help`)"
    """
    path = exc.ctx.command_path if exc.ctx is not None else "corestate"
    if isinstance(exc, click.NoSuchOption):
        near = sorted(exc.possibilities or ())
        message = f"no such option: {exc.option_name}"
        if near:
            message += f" (did you mean {' or '.join(near)}?)"
    else:
        message = " ".join(exc.format_message().split()).rstrip(".")
        if message[:1].isupper() and message[1:2].islower():
            message = message[0].lower() + message[1:]
    if "did you mean" not in message and "--help" not in message:
        message += f" (see `{path} --help`)"
    return f"{path}: error: {message}"


@click.group(cls=CommandGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-r", "--repo", "repo_url", envvar="CORESTATE_REPOSITORY", metavar="URL",
              help="Repository: a path, local:PATH, s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX], "
                   "s3:s3.amazonaws.com/BUCKET, azure:CONTAINER:/PREFIX or gs:BUCKET:/PREFIX "
                   "(env CORESTATE_REPOSITORY). Object-store credentials come from AWS_*, "
                   "AZURE_* or GOOGLE_APPLICATION_CREDENTIALS.")
@click.option("-p", "--password-file", envvar="CORESTATE_PASSWORD_FILE", metavar="FILE",
              help="Read the password from FILE, as restic does: the whole file, white space "
                   "trimmed at both ends (env CORESTATE_PASSWORD_FILE; CORESTATE_PASSWORD "
                   "takes precedence).")
@click.option("--json", "json_", is_flag=True, help="Print results as JSON for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and warnings.")
@click.option("-v", "--verbose", count=True, help="More detail; repeat for debug logging.")
@click.version_option(__version__, prog_name="corestate")
@click.pass_context
def cli(ctx: click.Context, repo_url: str | None, password_file: str | None, json_: bool,
        quiet: bool, verbose: int) -> None:
    """CoreState: continuous data protection into restic-compatible repositories.

    Start with `corestate init --repo DIR`, then `corestate backup PATH --repo DIR`;
    `corestate config --save --repo DIR` makes DIR the default, so --repo can be left
    out. The password comes from CORESTATE_PASSWORD, --password-file, the config file,
    or a prompt.

    Exit codes: 0 success; 1 error; 2 usage error (unknown command or option, missing
    or bad argument); 3 backup saved but some files could not be read; 130
    interrupted (Ctrl-C); 143 terminated (SIGTERM). Errors are one line on stderr.
    """
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(repo_url, password_file, json_, quiet, verbose)


def _setter(attr: str):  # type: ignore[no-untyped-def]
    def set_on_context(ctx: click.Context, _param: click.Parameter, value: object) -> None:
        if value not in (None, False, 0):
            setattr(ctx.find_object(Context), attr, value)
    return set_on_context


def _common_params() -> list[click.Parameter]:
    """The global options, accepted after the command name too (`backup X --repo R`)."""
    return [
        click.Option(["-r", "--repo"], callback=_setter("repo_url"), expose_value=False,
                     metavar="URL", help="Repository (env CORESTATE_REPOSITORY)."),
        click.Option(["-p", "--password-file"], callback=_setter("password_file"),
                     expose_value=False, metavar="FILE", help="Read the password from FILE."),
        click.Option(["--json"], is_flag=True, callback=_setter("json"), expose_value=False,
                     help="Print results as JSON."),
        click.Option(["-q", "--quiet"], is_flag=True, callback=_setter("quiet"),
                     expose_value=False, help="Print only errors and warnings."),
    ]


def _add_common(group: click.Group) -> None:
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _add_common(cmd)
        elif not any(p.name == "repo" for p in cmd.params):
            cmd.params.extend(_common_params())


def _load(module: str) -> None:
    """Import a command module (it adds its commands to :data:`cli`)."""
    import importlib

    importlib.import_module(f"corestate.cli.{module}")
    _add_common(cli)


def _register() -> None:
    """Import every command module."""
    for module in sorted(set(COMMANDS.values())):
        _load(module)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that clean-up (``finally``, ``with``)
    runs as for Ctrl-C; not an Exception, so nothing on the way swallows it."""


def _terminate(signum: int, frame: types.FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    tune_malloc()
    tune_gc()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=argv, prog_name="corestate", standalone_mode=False)
    except Terminated:
        click.echo("corestate: terminated", err=True)
        sys.exit(128 + signal.SIGTERM)
    except CoreStateError as exc:
        click.echo(f"corestate: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("corestate: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("corestate: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # a group without its command
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(usage_error_line(exc), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        os._exit(0)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"corestate: error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)

