"""``corestate worker``: run stages of distributed mode as agents of a faust-streaming app (see
docs/distributed.md). Any number of workers may run; each role's partitions are shared
among the workers that run it. SIGTERM or Ctrl-C stops a worker after a checkpoint.

With ``--schema-registry URL`` (or ``CORESTATE_SCHEMA_REGISTRY_URL``; client settings from
``CORESTATE_SCHEMA_REGISTRY_*``) the worker emits events with schema-registry framing;
it reads both wire formats either way.
"""

from __future__ import annotations

import click

from corestate.cli import monitoring
from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli
from corestate.connectors.kafka_topics import DEFAULT_PREFIX, client_config, open_schema_registry


@cli.command()
@click.option("--bootstrap", metavar="HOST:PORT[,...]",
              help="Kafka bootstrap servers (else CORESTATE_KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--roles", default="chunk,pack,commit,guard", show_default=True,
              help="Comma-separated roles to run in this process: chunk, pack, commit, guard "
                   "(protects the clean snapshot an alert names).")
@click.option("--schema-registry", "schema_registry", metavar="URL",
              help="Encode events with schema-registry framing, registering their schemas "
                   "at this Confluent-compatible registry (else CORESTATE_SCHEMA_REGISTRY_URL; "
                   "default: Avro single-object encoding, no registry). Client settings from "
                   "CORESTATE_SCHEMA_REGISTRY_* (e.g. _BASIC_AUTH_USER_INFO=user:password).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic name prefix.")
@click.option("--kafka-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="librdkafka settings as a properties file.")
@click.option("--abandon-after", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              metavar="SECONDS", help="Drop a snapshot in progress that received nothing for "
                                      "this long (its agent died before finishing the run).")
@monitoring.service_options
@pass_ctx
def worker(ctx: Context, bootstrap: str | None, roles: str, schema_registry: str | None,
           prefix: str, kafka_config: str | None, abandon_after: float) -> None:
    """Chunk, store and commit what agents publish into the repository (--repo), until
    stopped."""
    from corestate.connectors.kafka_runner import roles_of, run_worker
    from corestate.schemas.codec import Codec

    wanted = roles_of(roles)
    mon = monitoring.start("worker", ctx.password_file)
    client = client_config(kafka_config, bootstrap=bootstrap)
    codec = Codec(open_schema_registry(schema_registry))  # fail now if it does not answer
    need_repo = any(r != "chunk" for r in wanted)
    password = ctx.password() if need_repo else ""
    if need_repo:
        ctx.open_repo(password)  # fail now on a wrong URL or password
    ctx.info(f"worker running {', '.join(wanted)} on {client['bootstrap.servers']}")
    mon.worker(client, prefix, wanted)
    with mon.failures("worker_failed"):
        run_worker(client, wanted, lambda: ctx.open_repo(password),
                   prefix=prefix, abandon_after=abandon_after,
                   loglevel="INFO" if ctx.verbose else "WARNING", codec=codec)
