"""``corestate tiering``: which snapshots and packs to move to colder storage classes,
and the estimated monthly saving (see :mod:`corestate.maintenance.tiering`)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import click
import orjson
from rich.table import Table

from corestate.cli.context import Context, human_size, pass_ctx
from corestate.cli.main import cli
from corestate.cli.output import phase_bars
from corestate.cli.times import access_time, parse_when
from corestate.connectors import immutable
from corestate.errors import PermanentError
from corestate.maintenance import tiering as tiers
from corestate.repository.backend import Kind, object_path
from corestate.repository.repository import Repository
from corestate.models.tiering import DAY, EXAMPLE_PRICES, StorageClass


def _usd(amount: float) -> str:
    """Dollars, with enough digits that small amounts do not print as zero.

    >>> _usd(12.3456), _usd(0.0123456), _usd(0.0)
    ('$12.35', '$0.0123', '$0')
    """
    if amount == 0:
        return "$0"
    return f"${amount:,.2f}" if abs(amount) >= 1 else f"${amount:.3g}"


def _days(seconds: float) -> str:
    return f"{max(0.0, seconds) / DAY:.0f}d"


def _load_prices(path: str) -> tuple[StorageClass, ...]:
    try:
        with open(path, "rb") as f:
            doc = orjson.loads(f.read())
    except OSError as exc:
        raise PermanentError(f"--prices: cannot read {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise PermanentError(f"--prices: {path} is not valid JSON ({exc})") from None
    return tiers.parse_prices(doc, f"--prices {path}")


@cli.command()
@click.option("--prices", "prices_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Storage classes as JSON: a list of {name, storage (USD per GiB-month), "
                   "retrieval (USD per GiB read), min_days, immediate (default true)}. "
                   "Objects are taken to be in the first class. Default: AWS S3 us-east-1 "
                   "list prices for STANDARD, STANDARD_IA, GLACIER_IR, DEEP_ARCHIVE.")
@click.option("--min-saving", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="USD",
              help="Leave out moves that save less than this per object and month "
                   "(a transition request costs about $0.00001-0.00005 per object).")
@click.option("--now", "now_text", envvar="CORESTATE_NOW", metavar="TIME",
              help="Advise as of TIME (ISO 8601, local time unless an offset is given, or a "
                   "Unix timestamp) instead of now (env CORESTATE_NOW).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show at most this many objects in the table (0: all); totals and "
                   "--json always cover every object.")
@click.option("--apply", "apply_", is_flag=True,
              help="Move the advised objects' packs to their advised class (S3: each pack "
                   "copied onto itself with the new storage class) and record each pack's "
                   "class in the repository. Class names must be S3's.")
@click.option("--archived", is_flag=True,
              help="Instead of advice, list the packs recorded in an archive class (GLACIER, "
                   "DEEP_ARCHIVE): class and object key, for restore requests.")
@pass_ctx
def tiering(ctx: Context, prices_file: str | None, min_saving: float, now_text: str | None,
            limit: int, apply_: bool, archived: bool) -> None:
    """Advise which data to move to colder storage classes, and what that saves a month.

    The objects are data packs: the packs only one snapshot uses count together, as that
    snapshot (moving it moves them); a pack several snapshots share counts alone, as old
    as the oldest snapshot using it. Tree packs always stay (backup, ls, find, diff and
    check read them) and so do packs no snapshot uses (prune deletes them).

    Reads come from the repository's access log, which `corestate restore` and
    `corestate check --read-data` add to (one file per run in the `corestate/` sidecar
    directory). A run that read any pack of an object counts as one read of the whole
    object. An object moves to the cheapest class it is eligible for: old enough for the
    class's minimum duration, not read in the last 14 days if the class charges for
    reads, and not read for 180 days if its reads are not immediate (deep archive). The
    saving is storage plus expected retrieval fees (reads per month over the last 90
    days) now, minus the same in the new class.

    Prints one row per advised object (id, kind, size, age, last read, current ->
    advised class, saving per month), totals per advised class and the overall total.
    With --json, prints one object: `advice` (each with id, kind, size, current,
    target, reads_per_month, monthly_cost_now, monthly_cost_after, monthly_saving,
    reason, created and last_read in Unix seconds, packs), `by_target`, `total_size`,
    `total_monthly_saving` (the sum of the objects' savings), `now`, `current_class`,
    `prices`, and the counts `candidates`, `tree_packs`, `unused_packs`, `access_runs`
    and `unreadable_access_logs`. CORESTATE_NOW also sets the time restore and check
    record, so a what-if can be rehearsed end to end.
    """
    prices = _load_prices(prices_file) if prices_file else EXAMPLE_PRICES
    try:
        now = parse_when(now_text) / 1e9 if now_text else time.time()
    except PermanentError as exc:
        raise PermanentError(f"--now{exc.message.removeprefix('--at')}") from None
    repo = ctx.open_repo()
    if archived:
        _list_archived(ctx, repo)
        return
    store = immutable.object_store(repo.backend) if apply_ else None
    if apply_:
        if store is None or not store.storage_classes:
            raise PermanentError(f"{repo.backend.location()}: --apply moves packs between S3 "
                                 "storage classes; this repository is not on S3")
        if store.retention is not None:
            raise PermanentError("--apply cannot move the packs of an immutable repository: "
                                 "a locked object cannot be rewritten in another class")
    with repo.locked(exclusive=False), phase_bars(ctx) as progress:
        report = tiers.advise(repo, now, prices, min_saving, progress)
        moved: dict[str, str] = {}
        if store is not None:
            unknown = sorted({a.target for a in report.advice} - store.storage_classes)
            if unknown:
                raise PermanentError(f"--apply: {', '.join(unknown)} is not an S3 storage class "
                                     f"(S3's: {', '.join(sorted(store.storage_classes))})")
            moved = tiers.apply(repo, report, lambda pack, cls: store.set_storage_class(
                Kind.DATA, pack, cls), access_time(ctx), progress)
    if report.unreadable_logs:
        ctx.warn(f"{report.unreadable_logs} access log file(s) could not be read; their "
                 "reads are not counted")
    if ctx.json:
        ctx.emit({**report.to_json(), **({"moved": moved} if apply_ else {})})
        return
    when = datetime.fromtimestamp(now, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    ctx.info(f"tiering advice as of {when}: {report.candidates} objects in {prices[0].name}, "
             f"{report.access_runs} recorded runs that read packs; {report.tree_packs} tree "
             f"packs and {report.unused_packs} unused packs stay")
    if not report.advice:
        ctx.info("no moves advised")
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Kind", "Size", "Age", "Last read", "Move", "Saving/month"):
        table.add_column(col, justify="left" if col in ("ID", "Kind", "Move") else "right",
                         no_wrap=col != "Move")
    shown = report.advice if not limit else report.advice[:limit]
    for a in shown:
        read = report.last_read.get(a.object_id)
        table.add_row(a.object_id[:8], a.kind, human_size(a.size),
                      _days(now - report.objects[a.object_id].object.created),
                      "never" if read is None else f"{_days(now - read)} ago",
                      f"{a.current} -> {a.target}", _usd(a.monthly_saving))
    if not ctx.quiet:
        ctx.out.print(table)
    if len(shown) < len(report.advice):
        ctx.info(f"... and {len(report.advice) - len(shown)} more (--limit 0 or --json for all)")
    for name, (n, size, saving) in sorted(report.by_target().items()):
        ctx.info(f"to {name}: {n} objects, {human_size(size)}, saves {_usd(saving)} a month")
    total_size = sum(a.size for a in report.advice)
    ctx.info(f"total: {len(report.advice)} objects, {human_size(total_size)}, saves "
             f"{_usd(report.total_saving)} a month")
    if apply_:
        ctx.info(f"moved {len(moved)} packs: " + ", ".join(
            f"{n} to {c}" for c, n in tiers.class_counts(moved).items()))


def _list_archived(ctx: Context, repo: Repository) -> None:
    cold = tiers.archived_packs(repo)
    store = immutable.object_store(repo.backend)
    rows = [{"pack": p, "class": c,
             "key": store.key(Kind.DATA, p) if store is not None else object_path(Kind.DATA, p)}
            for p, c in sorted(cold.items())]
    if ctx.json:
        ctx.emit(rows)
        return
    for row in rows:
        ctx.out.print(f"{row['class']}\t{row['key']}", markup=False)
    if not rows:
        ctx.info("no packs are recorded in an archive class")
