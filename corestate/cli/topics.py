"""``corestate topics create|check``: the Kafka topics of distributed mode.

librdkafka client settings (TLS, SASL) come from ``--kafka-config FILE`` (a properties
file) and ``CORESTATE_KAFKA_*`` environment variables, which win over the file
(``CORESTATE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` is ``security.protocol=SASL_SSL``);
``--bootstrap`` wins over both. Topics that differ from the contract are listed with
every difference, and the command exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from corestate.cli.context import Context, pass_ctx
from corestate.cli.main import cli
from corestate.connectors.kafka_topics import (DEFAULT_PREFIX, TopicStatus, check_topics,
                                               client_config, create_topics)
from corestate.errors import PermanentError


def _topic_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--bootstrap", metavar="HOST:PORT[,...]",
                     help="Kafka bootstrap servers (else CORESTATE_KAFKA_BOOTSTRAP_SERVERS or "
                          "bootstrap.servers in --kafka-config)."),
        click.option("--partitions", type=click.IntRange(min=1), metavar="N",
                     help="Partitions of the scalable topics (captures, chunks, files, stored); "
                          "create: default 6; check: not checked unless given."),
        click.option("--replication", type=click.IntRange(min=1), metavar="N",
                     help="Replication factor; create: default 3, or the number of brokers if "
                          "fewer; check: not checked unless given."),
        click.option("--max-message-bytes", type=click.IntRange(min=1), metavar="BYTES",
                     help="max.message.bytes for every topic (at least what the largest records "
                          "need; default: sized per topic)."),
        click.option("--topic-config", "topic_config", multiple=True, metavar="KEY=VALUE",
                     help="A topic setting for every topic, e.g. retention.ms=604800000 (repeatable)."),
        click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                     help="Topic name prefix: <prefix>.captures, <prefix>.chunks, ..."),
        click.option("--kafka-config", type=click.Path(dir_okay=False), metavar="FILE",
                     help="librdkafka settings as a properties file (security.protocol, sasl.*, ssl.*)."),
        click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
                     help="Seconds to wait for the brokers."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.group()
def topics() -> None:
    """Create or check the Kafka topics of distributed mode (see docs/topics.md)."""


def _run(ctx: Context, action: Callable[..., list[TopicStatus]], bootstrap: str | None,
         partitions: int | None, replication: int | None, max_message_bytes: int | None,
         topic_config: tuple[str, ...], prefix: str, kafka_config: str | None, timeout: float) -> None:
    client = client_config(kafka_config, bootstrap=bootstrap)
    if not ctx.verbose:
        # librdkafka logs every failed connection attempt; the error raised at the end
        # says what failed. -v shows the log.
        client.setdefault("log_level", "2")
    overrides: dict[str, str] = {}
    for item in topic_config:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PermanentError(f"--topic-config wants KEY=VALUE, not {item!r}")
        overrides[key.strip()] = value.strip()
    if max_message_bytes is not None:
        overrides["max.message.bytes"] = str(max_message_bytes)
    statuses = action(client["bootstrap.servers"], partitions, replication, overrides,
                      client=client, prefix=prefix, timeout=timeout)
    bad = [s for s in statuses if not s.ok]
    if ctx.json:
        ctx.emit([s.to_json() for s in statuses])
    else:
        for s in statuses:
            shape = "" if s.partitions is None else (
                f"{s.partitions} partition{'s' if s.partitions != 1 else ''}, replication "
                f"{s.replication}, {s.config.get('cleanup.policy', '?')}")
            ctx.out.print(f"{s.name:<28} {s.state:<9} {shape}", markup=False)
            for problem in s.problems:
                ctx.out.print(f"    {problem}", markup=False)
    if bad:
        raise PermanentError(f"{len(bad)} of {len(statuses)} topics do not match the contract: "
                             + ", ".join(s.name for s in bad))


@topics.command("create")
@_topic_options
@pass_ctx
def create(ctx: Context, **options: Any) -> None:
    """Create the missing topics; check the existing ones (never alters a topic)."""
    _run(ctx, create_topics, **options)


@topics.command("check")
@_topic_options
@pass_ctx
def check(ctx: Context, **options: Any) -> None:
    """Check that every topic exists and matches the contract."""
    _run(ctx, check_topics, **options)
