"""``corestate config``: show or save the defaults that commands fall back to (the
config file described in :mod:`corestate.cli.defaults`)."""

from __future__ import annotations

import os

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.defaults import Defaults, absolute_location, config_path
from corestate.cli.main import cli
from corestate.errors import PermanentError


def _sources(ctx: Context) -> dict[str, str | None]:
    """Where the repository and the password come from, as a user would name them."""
    defaults = ctx.defaults()
    if ctx.repo_url:
        repo_from = ("CORESTATE_REPOSITORY" if ctx.repo_url == os.environ.get("CORESTATE_REPOSITORY")
                     else "--repo")
        repo: str | None = ctx.repo_url
    elif defaults.repository:
        repo, repo_from = defaults.repository, defaults.path
    else:
        repo, repo_from = None, None
    pw_file: str | None = None
    if "CORESTATE_PASSWORD" in os.environ:
        pw_from = "CORESTATE_PASSWORD"
    elif ctx.password_file:
        pw_file = ctx.password_file
        pw_from = ("CORESTATE_PASSWORD_FILE"
                   if ctx.password_file == os.environ.get("CORESTATE_PASSWORD_FILE")
                   else "--password-file")
    elif repo and ctx.default_password_file():
        pw_file, pw_from = defaults.password_file, defaults.path
    else:
        pw_from = "a prompt (on a terminal)"
    return {"config_file": defaults.path, "repository": repo, "repository_from": repo_from,
            "password_file": pw_file, "password_from": pw_from}


@cli.command("config")
@click.option("--save", is_flag=True,
              help="Write the repository and password file given to this command (--repo or "
                   "CORESTATE_REPOSITORY, --password-file or CORESTATE_PASSWORD_FILE) to the "
                   "config file as the defaults, replacing what it held.")
@pass_ctx
def config(ctx: Context, save: bool) -> None:
    """Show where the repository and password come from, or save defaults (--save).

    Commands take the repository from --repo, else CORESTATE_REPOSITORY, else the config
    file; the password from CORESTATE_PASSWORD, else --password-file (or
    CORESTATE_PASSWORD_FILE), else the config file's password file when the repository
    is the config file's, else a prompt on a terminal.

    The config file is $CORESTATE_CONFIG, else $XDG_CONFIG_HOME/corestate/config.toml,
    else ~/.config/corestate/config.toml. It is TOML with two optional settings
    (relative paths are relative to its directory):

    \b
        repository = "/home/me/.local/share/corestate/repo"
        password-file = "/home/me/.config/corestate/password"

    deploy/quickstart.sh writes it for the repository it creates.
    """
    if save:
        if not ctx.repo_url:
            raise PermanentError("config --save: give the repository to save with --repo "
                                 "(or CORESTATE_REPOSITORY)")
        here = os.getcwd()
        saved = Defaults(config_path(), absolute_location(ctx.repo_url, here),
                         ctx.password_file and os.path.abspath(os.path.expanduser(ctx.password_file)))
        saved.save()
        ctx.result({"config_file": saved.path, "repository": saved.repository,
                    "password_file": saved.password_file},
                   f"saved to {saved.path}: repository {saved.repository}"
                   + (f", password file {saved.password_file}" if saved.password_file else ""))
        return
    where = _sources(ctx)
    if ctx.json:
        ctx.emit(where)
        return
    exists = "" if os.path.exists(where["config_file"] or "") else " (does not exist)"
    ctx.info(f"config file: {where['config_file']}{exists}")
    ctx.info(f"repository: {where['repository'] or 'none'}"
             + (f" (from {where['repository_from']})" if where["repository_from"] else ""))
    ctx.info(f"password: from {where['password_from']}"
             + (f": {where['password_file']}" if where["password_file"] else ""))
