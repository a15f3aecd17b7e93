"""``corestate ls``: list the nodes of a snapshot."""

from __future__ import annotations

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.output import Skipped, echo_raw
from corestate.cli.main import cli
from corestate.errors import NotFoundError
from corestate.maintenance.listing import local_time, long_line, node_json, show
from corestate.repository.walk import find_node, walk


@cli.command()
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.argument("path", required=False)
@click.option("-l", "--long", "long_", is_flag=True,
              help="Show permissions, uid, gid, size and modification time too.")
@click.option("--recursive", is_flag=True,
              help="With PATH, list everything below it, not just its entries.")
@click.option("--host", help="For `latest`: the latest snapshot of this host.")
@pass_ctx
def ls(ctx: Context, snapshot_ref: str, path: str | None, long_: bool, recursive: bool,
       host: str | None) -> None:
    """List the files and directories in a snapshot, as `restic ls` does.

    SNAPSHOT is `latest` or a snapshot id (a unique prefix is enough). Without PATH,
    every node of the snapshot is listed, depth first. With PATH (an absolute path in
    the snapshot, e.g. /home/u/docs), the entries of that directory are listed (all
    nodes below it with --recursive); a file PATH lists just that file.

    With --json, prints one JSON object per line: first the snapshot (`struct_type`
    "snapshot"), then one per node (`struct_type` "node") with `name`, `type`, `path`,
    `size`, `mode`, `permissions`, `uid`, `gid`, `mtime`, `atime`, `ctime`, ...
    """
    repo = ctx.open_repo()
    with ctx.read_lock(repo):
        repo.load_index()
        snap = repo.find_snapshot(snapshot_ref, host=host, on_damaged=ctx.damaged_snapshot)
        if ctx.json:
            ctx.emit({**snap.summary(), "struct_type": "snapshot"})
        else:
            ctx.info(f"snapshot {snap.short_id} of [{', '.join(snap.paths)}] at "
                     f"{local_time(snap.time)}:")
        skipped = Skipped(ctx)
        if path is None:
            entries = walk(repo, snap.tree, on_error=skipped)
        else:
            raw = b"/" + path.encode("utf-8", "surrogateescape").strip(b"/")
            node = find_node(repo, snap.tree, raw)
            if raw == b"/":
                entries = walk(repo, snap.tree, descend=lambda p, n: recursive, on_error=skipped)
            elif node is None:
                raise NotFoundError(f"{path}: no such path in snapshot {snap.short_id}")
            elif node.type == "dir" and node.subtree is not None:
                entries = walk(repo, node.subtree, raw, descend=lambda p, n: recursive,
                               on_error=skipped)
            else:
                entries = iter([(raw, node)])
        for node_path, node in entries:
            if ctx.json:
                ctx.emit(node_json(node_path, node))
            else:
                echo_raw(long_line(node_path, node) if long_ else show(node_path))
        skipped.finish()
