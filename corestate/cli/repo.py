"""Repository-level commands: ``init``, ``key list|add|remove|passwd``, ``unlock``."""

from __future__ import annotations

import shlex
import sys

import click
from rich.table import Table

from corestate.cli.context import Context, ask_password, pass_ctx, read_password_file
from corestate.cli.main import cli
from corestate.connectors import immutable
from corestate.connectors.url import open_backend
from corestate.errors import PermanentError
from corestate.repository import keys as keyfiles
from corestate.repository.keys import Password
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository


@cli.command()
@click.option("--immutable", "immutable_days", type=int, metavar="DAYS",
              help="Lock every pack, index, snapshot, key and config file for DAYS days "
                   "after it is written (S3 Object Lock; s3: locations only). A bucket init "
                   "creates gets Object Lock; an existing one must have it.")
@click.option("--immutable-mode", type=click.Choice(["governance", "compliance"]),
              default="governance", show_default=True,
              help="governance: users allowed s3:BypassGovernanceRetention may still remove "
                   "locked files; compliance: nobody can until the date passes.")
@pass_ctx
def init(ctx: Context, immutable_days: int | None, immutable_mode: str) -> None:
    """Create a new, empty repository (restic format v2, encrypted).

    On an object store (s3:, azure:, gs:) a missing bucket or container is created;
    when the credentials may not create it, init says so and changes nothing.
    """
    backend = open_backend(ctx.url())
    policy = None
    if immutable_days is not None:
        policy = immutable.prepare(backend, immutable_days, immutable_mode)
    repo = Repository.init(backend, ctx.password(confirm=True))
    if policy is not None:
        immutable.save(repo, policy)
    locked = (f"; every file is locked for {policy.days} days ({policy.mode.lower()} mode)"
              if policy else "")
    ctx.result({"message_type": "initialized", "id": repo.config.id,
                "repository": repo.backend.location(),
                "immutable": {"mode": policy.mode, "days": policy.days} if policy else None},
               f"created repository {repo.config.id[:10]} at {repo.backend.location()}{locked}")
    try:
        has_default = bool(ctx.defaults().repository)
    except PermanentError:  # a broken config file is reported when it is needed
        has_default = True
    if not has_default:  # offer to make it the default
        pwfile = f" --password-file {shlex.quote(ctx.password_file)}" if ctx.password_file else ""
        ctx.info("to use it without --repo from now on: corestate config --save --repo "
                 f"{shlex.quote(ctx.url())}{pwfile}")


def _new_password(new_password_file: str | None) -> Password:
    if new_password_file:
        pw = read_password_file(new_password_file)
        if not pw:
            raise PermanentError(f"{new_password_file}: an empty password is not a password")
        return pw
    if not sys.stdin.isatty():
        raise PermanentError("no new password given: use --new-password-file FILE (or "
                             "CORESTATE_NEW_PASSWORD_FILE), or run on a terminal to be asked")
    return ask_password("enter new password: ", confirm=True)


@cli.group()
def key() -> None:
    """Manage the passwords (key files) that open the repository."""


@key.command("list")
@pass_ctx
def key_list(ctx: Context) -> None:
    """List key files; the one in use is marked with *."""
    repo = ctx.open_repo()
    files = keyfiles.list_key_files(repo.backend)
    if ctx.json:
        ctx.emit([{"current": k.id == repo.key_id, "id": k.id, "userName": k.username,
                   "hostName": k.hostname, "created": k.created, "damage": k.damage or None}
                  for k in files])
        return
    table = Table(box=None, header_style="bold")
    for col in (" ", "ID", "User", "Host", "Created"):
        table.add_column(col)
    for k in files:
        table.add_row("*" if k.id == repo.key_id else "", k.id[:8], k.username, k.hostname,
                      k.created[:19].replace("T", " "))
    ctx.out.print(table)
    for k in files:
        if k.damage:
            ctx.warn(f"key file {k.id[:8]} is damaged ({k.damage}); `corestate key remove "
                     f"{k.id[:8]}` removes it")


@key.command("add")
@click.option("--new-password-file", metavar="FILE", envvar="CORESTATE_NEW_PASSWORD_FILE",
              help="Read the new password from FILE (env CORESTATE_NEW_PASSWORD_FILE); "
                   "without it the new password is asked for on the terminal.")
@pass_ctx
def key_add(ctx: Context, new_password_file: str | None) -> None:
    """Add a password that opens the repository."""
    repo = ctx.open_repo()
    new_id = keyfiles.create_key_file(repo.backend, repo.key, _new_password(new_password_file))
    ctx.result({"id": new_id}, f"saved new key as {new_id[:8]}")


@key.command("remove")
@click.argument("key_id")
@pass_ctx
def key_remove(ctx: Context, key_id: str) -> None:
    """Remove the key file KEY_ID (not the one in use)."""
    repo = ctx.open_repo()
    removed = keyfiles.remove_key_file(repo.backend, key_id, repo.key_id)
    ctx.result({"removed": removed}, f"removed key {removed[:8]}")


@key.command("passwd")
@click.option("--new-password-file", metavar="FILE", envvar="CORESTATE_NEW_PASSWORD_FILE",
              help="Read the new password from FILE (env CORESTATE_NEW_PASSWORD_FILE); "
                   "without it the new password is asked for on the terminal.")
@pass_ctx
def key_passwd(ctx: Context, new_password_file: str | None) -> None:
    """Change the password of the key in use (adds a new key, removes the old one)."""
    repo = ctx.open_repo()
    new_id = keyfiles.create_key_file(repo.backend, repo.key, _new_password(new_password_file))
    repo.backend.delete(Kind.KEYS, repo.key_id)
    ctx.result({"id": new_id}, f"password changed; key is now {new_id[:8]}")


@cli.command()
@click.option("--remove-all", is_flag=True, help="Remove all locks, even live ones.")
@pass_ctx
def unlock(ctx: Context, remove_all: bool) -> None:
    """Remove stale locks (older than 30 minutes, or left by a dead process here)."""
    repo = ctx.open_repo()
    n = repo.remove_stale_locks(all_locks=remove_all)
    ctx.result({"removed": n}, f"removed {n} lock(s)")
