"""The Kafka topics of distributed mode as data, and the admin calls that create and check them.

Terms:

- a *topic spec* (:class:`TopicSpec`) is one topic of the contract in ``docs/topics.md``:
  its name (``<prefix>.<suffix>``, prefix ``corestate`` by default), what its key is,
  how many partitions it gets, its cleanup policy and the largest record batch it must
  accept (``max.message.bytes``);
- a *scalable* topic is one whose partition count sets how many workers can share a
  stage (captures, chunks, files, stored); ``partitions=N`` applies to those. The others
  (snapshots, alerts, dlq) keep one partition, so integrations see them in order;
- *client config* is librdkafka configuration (``security.protocol``, ``sasl.*``,
  ``ssl.*``, ...) from a Java-style properties file and ``CORESTATE_KAFKA_*`` environment
  variables (``CORESTATE_KAFKA_SECURITY_PROTOCOL`` is ``security.protocol``);
- *registry config* is the settings of a Confluent-compatible schema registry's client
  (``basic.auth.user.info``, ``ssl.ca.location``, ...) from ``CORESTATE_SCHEMA_REGISTRY_*``
  environment variables, named the same way (``CORESTATE_SCHEMA_REGISTRY_URL`` is the URL
  that ``--schema-registry`` also gives);
- *checking* a topic compares what the broker reports with the spec and names every
  difference; *creating* creates the missing topics and checks the rest (never alters
  or recreates an existing topic).

>>> [t.name() for t in TOPICS][:3]
['corestate.captures', 'corestate.chunks', 'corestate.files']
>>> spec("snapshots").topic_config()["cleanup.policy"]
'compact'
>>> key_for(Delete(host="h1", snapshot_id="run-1", path=b"/srv/x"))
b'h1\\x00/srv/x'
>>> env_client_config({"CORESTATE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "HOME": "/root"})
{'security.protocol': 'SASL_SSL'}
>>> registry_config({"CORESTATE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p",
...                  "CORESTATE_SCHEMA_REGISTRY_MAX_RETRIES": "5"})
{'basic.auth.user.info': 'u:p', 'max.retries': 5}
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from corestate.errors import PermanentError, RetryableError
from corestate.schemas.events import (MAX_CHUNK, MAX_SEGMENT, Alert, BarrierAck, Chunk,
                                      DataSegment, DeadLetter, Delete, Event, FileBegin,
                                      FileEnd, FileManifest, Rename, SnapshotCommitted,
                                      SnapshotMarker)

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

KiB = 1 << 10
MiB = 1 << 20
HEADROOM = 64 * KiB
"""Room for everything in a record besides its payload: Avro header and fields (a path
is at most 4 KiB), Kafka record and batch headers."""

DEFAULT_PREFIX = "corestate"
DEFAULT_PARTITIONS = 6
ENV_PREFIX = "CORESTATE_KAFKA_"
REGISTRY_ENV_PREFIX = "CORESTATE_SCHEMA_REGISTRY_"

PRODUCER_DEFAULTS: Mapping[str, str] = {
    "acks": "all",
    "enable.idempotence": "true",
    "compression.type": "zstd",
    # Java's partitioner: a key lands on the same partition whichever client produces it,
    # which the chunks topic (blob-id shards) and the co-partitioned files/stored rely on.
    "partitioner": "murmur2_random",
}
"""librdkafka settings every CoreState producer uses (``message.max.bytes`` comes from
the topic's spec)."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract (see the module docstring and ``docs/topics.md``)."""

    suffix: str
    key: str
    carries: str
    max_message_bytes: int
    scalable: bool = True
    partitions: int = DEFAULT_PARTITIONS
    compacted: bool = False

    def name(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}.{self.suffix}"

    def topic_config(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The topic-level configuration to create the topic with."""
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete",
               "max.message.bytes": str(self.max_message_bytes)}
        cfg.update(overrides or {})
        return cfg


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("captures", "host, a 0x00 byte, path",
              "FileBegin, DataSegment (<= 1 MiB), FileEnd, Delete, Rename; SnapshotMarker on every partition",
              MAX_SEGMENT + HEADROOM),
    TopicSpec("chunks", "blob id (32 bytes)", "Chunk; forwarded SnapshotMarker on every partition",
              MAX_CHUNK + HEADROOM),
    # A manifest holds 32 bytes per blob: 8 MiB is about 260,000 blobs (a 256 GiB file of
    # 1 MiB blocks).
    TopicSpec("files", "snapshot id", "FileManifest", MAX_CHUNK + HEADROOM),
    TopicSpec("stored", "snapshot id", "BarrierAck", MiB),
    TopicSpec("snapshots", "snapshot id", "SnapshotCommitted", MiB, scalable=False, partitions=1,
              compacted=True),
    TopicSpec("alerts", "host", "Alert", MiB, scalable=False, partitions=1),
    TopicSpec("dlq", "the original record's key", "DeadLetter",
              MAX_CHUNK + 2 * HEADROOM, scalable=False, partitions=1),
)

_CO_PARTITIONED = ("files", "stored")  # the committer joins them by snapshot id


def spec(suffix: str) -> TopicSpec:
    """The spec of topic ``<prefix>.<suffix>``."""
    for t in TOPICS:
        if t.suffix == suffix:
            return t
    raise KeyError(suffix)


def key_for(event: Event) -> bytes | None:
    """The Kafka key an event is produced with (``docs/topics.md``, "Keys").

    Capture events: host (UTF-8), 0x00, path. Markers: host and 0x00 (they go to every
    partition, chosen explicitly). Chunks: the blob id. Manifests, acks and committed
    snapshots: the snapshot id (UTF-8). Alerts: the host. Dead letters: the original key.
    """
    if isinstance(event, (FileBegin, DataSegment, FileEnd, Delete, Rename)):
        return event.host.encode("utf-8") + b"\x00" + event.path
    if isinstance(event, SnapshotMarker):
        return event.host.encode("utf-8") + b"\x00"
    if isinstance(event, Chunk):
        return event.blob_id
    if isinstance(event, (FileManifest, BarrierAck, SnapshotCommitted)):
        return event.snapshot_id.encode("utf-8")
    if isinstance(event, Alert):
        return event.host.encode("utf-8")
    if isinstance(event, DeadLetter):
        return event.key
    raise TypeError(f"{type(event).__name__} is not a CoreState event")


# -- client configuration --------------------------------------------------------------

def read_properties(path: str) -> dict[str, str]:
    """A Java-style properties file: ``key=value`` or ``key: value`` lines, ``#`` and
    ``!`` comments, a trailing backslash continues a line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise PermanentError(f"cannot read Kafka config {path}: {exc.strerror}") from None
    out: dict[str, str] = {}
    pending = ""
    for number, line in enumerate(lines, 1):
        line = pending + line.lstrip() if pending else line.strip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line or line[0] in "#!":
            continue
        seps = [i for i in (line.find("="), line.find(":")) if i > 0]
        if not seps:
            raise PermanentError(f"{path}:{number}: expected key=value, got {line[:40]!r}")
        cut = min(seps)
        out[line[:cut].strip()] = line[cut + 1:].strip()
    return out


def env_client_config(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from ``CORESTATE_KAFKA_*`` variables: the rest of the name in
    lower case with ``_`` as ``.`` (``CORESTATE_KAFKA_SASL_MECHANISM`` is ``sasl.mechanism``)."""
    env = os.environ if environ is None else environ
    return {k[len(ENV_PREFIX):].lower().replace("_", "."): v
            for k, v in sorted(env.items()) if k.startswith(ENV_PREFIX) and len(k) > len(ENV_PREFIX)}


def client_config(config_file: str | None = None, environ: Mapping[str, str] | None = None,
                  bootstrap: str | None = None) -> dict[str, str]:
    """librdkafka settings: the properties file, then the environment over it, then
    ``bootstrap`` (``--bootstrap``) over both."""
    cfg = read_properties(config_file) if config_file else {}
    cfg.update(env_client_config(environ))
    if bootstrap:
        cfg["bootstrap.servers"] = bootstrap
    if not cfg.get("bootstrap.servers"):
        raise PermanentError("no Kafka bootstrap servers: use --bootstrap HOST:PORT or set "
                             "CORESTATE_KAFKA_BOOTSTRAP_SERVERS")
    return cfg


def _admin(cfg: Mapping[str, str]) -> AdminClient:
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ModuleNotFoundError:
        raise PermanentError("Kafka support is not installed: pip install 'corestate[kafka]'") from None
    try:
        return AdminClient(dict(cfg))
    except KafkaException as exc:
        raise PermanentError(f"invalid Kafka client setting: {exc.args[0].str()}") from None


# -- checking and creating -------------------------------------------------------------

@dataclass(frozen=True)
class TopicStatus:
    """What the broker has for one topic, and how it differs from the spec."""

    name: str
    state: str  # "created", "ok", "mismatch" or "missing"
    partitions: int | None = None
    replication: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.state in ("created", "ok")

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "state": self.state, "partitions": self.partitions,
                "replication": self.replication, "config": dict(self.config),
                "problems": list(self.problems)}


def _wanted_partitions(t: TopicSpec, partitions: int | Mapping[str, int] | None) -> int | None:
    """The partition count to require of ``t`` (None: any)."""
    if isinstance(partitions, Mapping):
        return partitions.get(t.suffix)
    if partitions is None:
        return None
    return partitions if t.scalable else t.partitions


def _validate_overrides(config: Mapping[str, str] | None) -> dict[str, str]:
    cfg = dict(config or {})
    if "cleanup.policy" in cfg:
        raise PermanentError("cleanup.policy is part of the topic contract and cannot be overridden")
    if "max.message.bytes" in cfg:
        try:
            value = int(cfg["max.message.bytes"])
        except ValueError:
            raise PermanentError(f"max.message.bytes must be a number, not {cfg['max.message.bytes']!r}") from None
        low = [t for t in TOPICS if t.max_message_bytes > value]
        if low:
            raise PermanentError(f"max.message.bytes={value} is below the {low[0].max_message_bytes} "
                                 f"that {low[0].suffix} records need")
    return cfg


def _describe(admin: AdminClient, names: list[str], timeout: float) -> dict[str, dict[str, str]]:
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    if not names:
        return {}
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names],
                                     request_timeout=timeout)
    out: dict[str, dict[str, str]] = {}
    for resource, fut in futures.items():
        entries = fut.result(timeout=timeout)
        out[resource.name] = {k: str(e.value) for k, e in entries.items() if e.value is not None}
    return out


def _metadata(admin: AdminClient, bootstrap: str, timeout: float) -> Any:
    from confluent_kafka import KafkaException

    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise RetryableError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from None


def _check(admin: AdminClient, bootstrap: str, prefix: str, partitions: int | Mapping[str, int] | None,
           replication: int | None, overrides: Mapping[str, str], created: set[str],
           timeout: float) -> list[TopicStatus]:
    md = _metadata(admin, bootstrap, timeout)
    present = [t.name(prefix) for t in TOPICS if t.name(prefix) in md.topics]
    configs = _describe(admin, present, timeout)
    counts = {n: len(md.topics[n].partitions) for n in present}
    out = []
    for t in TOPICS:
        name = t.name(prefix)
        if name not in md.topics:
            out.append(TopicStatus(name, "missing", problems=(f"{name} does not exist",)))
            continue
        parts = md.topics[name].partitions
        rf = min((len(p.replicas) for p in parts.values()), default=0)
        cfg = configs.get(name, {})
        problems = []
        want = _wanted_partitions(t, partitions)
        if want is not None and len(parts) != want:
            problems.append(f"{name} has {len(parts)} partitions, expected {want}")
        if t.suffix in _CO_PARTITIONED:
            other = next(s for s in _CO_PARTITIONED if s != t.suffix)
            oname = spec(other).name(prefix)
            if oname in counts and counts[oname] != len(parts):
                problems.append(f"{name} has {len(parts)} partitions but {oname} has {counts[oname]}: "
                                f"they must be equal (both are partitioned by snapshot id)")
        if replication is not None:
            low = sorted(p.id for p in parts.values() if len(p.replicas) != replication)
            if low:
                problems.append(f"{name} partitions {low} do not have replication factor {replication}")
        policy = cfg.get("cleanup.policy", "delete")
        want_policy = t.topic_config()["cleanup.policy"]
        if policy != want_policy:
            problems.append(f"{name} has cleanup.policy={policy}, expected {want_policy}")
        max_bytes = int(cfg.get("max.message.bytes", "0") or 0)
        need = max(t.max_message_bytes, int(overrides.get("max.message.bytes", 0)))
        if max_bytes < need:
            problems.append(f"{name} has max.message.bytes={max_bytes}, needs at least {need}")
        for key, value in overrides.items():
            if key != "max.message.bytes" and cfg.get(key) != value:
                problems.append(f"{name} has {key}={cfg.get(key)}, expected {value}")
        min_isr = int(cfg.get("min.insync.replicas", "1") or 1)
        if min_isr > rf:
            problems.append(f"{name} has min.insync.replicas={min_isr} above its replication factor "
                            f"{rf}: producers with acks=all will fail")
        shown = {k: cfg[k] for k in ("cleanup.policy", "max.message.bytes", "min.insync.replicas",
                                      *overrides) if k in cfg}
        state = "mismatch" if problems else ("created" if name in created else "ok")
        out.append(TopicStatus(name, state, len(parts), rf, shown, tuple(problems)))
    return out


def check_topics(bootstrap: str, partitions: int | Mapping[str, int] | None = None,
                 replication: int | None = None, config: Mapping[str, str] | None = None, *,
                 client: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX,
                 timeout: float = 30.0) -> list[TopicStatus]:
    """Compare the broker's topics with the contract; one status per topic, in order.

    ``partitions`` and ``replication`` are checked when given (``partitions=N`` applies to
    the scalable topics; a mapping gives counts by suffix); cleanup policy, a large enough
    ``max.message.bytes``, ``min.insync.replicas`` against the replication factor, equal
    partition counts of files and stored, and every key in ``config`` always are.
    ``client`` is librdkafka configuration (security settings); ``bootstrap`` wins over it.
    """
    overrides = _validate_overrides(config)
    admin = _admin({**(client or {}), "bootstrap.servers": bootstrap})
    return _check(admin, bootstrap, prefix, partitions, replication, overrides, set(), timeout)


def create_topics(bootstrap: str, partitions: int | Mapping[str, int] | None = None,
                  replication: int | None = None, config: Mapping[str, str] | None = None, *,
                  client: Mapping[str, str] | None = None, prefix: str = DEFAULT_PREFIX,
                  timeout: float = 30.0) -> list[TopicStatus]:
    """Create the missing topics of the contract and check all of them (see
    :func:`check_topics`); an existing topic is never altered, a mismatch is reported.

    Defaults: :data:`DEFAULT_PARTITIONS` partitions for the scalable topics, one for the
    others; replication factor 3, or the number of brokers if fewer; with 3 or more
    replicas, ``min.insync.replicas=2``. ``config`` adds topic settings to every topic.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    overrides = _validate_overrides(config)
    admin = _admin({**(client or {}), "bootstrap.servers": bootstrap})
    md = _metadata(admin, bootstrap, timeout)
    rf = replication if replication is not None else min(3, max(1, len(md.brokers)))
    new = []
    for t in TOPICS:
        if t.name(prefix) in md.topics:
            continue
        want = _wanted_partitions(t, partitions)
        count = t.partitions if want is None else want
        cfg = t.topic_config(overrides)
        if rf >= 3:
            cfg.setdefault("min.insync.replicas", "2")
        new.append(NewTopic(t.name(prefix), num_partitions=count, replication_factor=rf, config=cfg))
    created: set[str] = set()
    failures = []
    if new:
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout + 10)
                created.add(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process was faster
                    failures.append(f"{name}: {err.str()}")
    if failures:
        raise PermanentError("could not create topics: " + "; ".join(sorted(failures)))
    deadline = time.monotonic() + timeout
    while created:  # creation is acknowledged before every partition has a leader
        md = _metadata(admin, bootstrap, timeout)
        if all(n in md.topics and md.topics[n].partitions
               and all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in created):
            break
        if time.monotonic() > deadline:
            raise RetryableError(f"created topics have no leaders after {timeout:.0f} s: {sorted(created)}")
        time.sleep(0.2)
    return _check(admin, bootstrap, prefix, partitions, replication, overrides, created, timeout)


# -- schema registry -------------------------------------------------------------------

def _transport_error(exc: Exception) -> bool:
    """A failure to talk to the registry at all (refused, timed out, TLS), which the HTTP
    library of the installed confluent-kafka raises (httpx2 in 2.16, requests before)."""
    return isinstance(exc, OSError) or any(
        c.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")
        for c in type(exc).__mro__)


class ConfluentSchemaRegistry:
    """The codec's :class:`~corestate.schemas.codec.SchemaRegistry` over confluent-kafka's
    ``SchemaRegistryClient``: any Confluent-compatible registry (Confluent, Apicurio's
    ``/apis/ccompat/v7``, Karapace); a ``mock://`` URL keeps schemas in memory."""

    def __init__(self, url: str, config: Mapping[str, object] | None = None) -> None:
        """``config``: the client's settings besides the URL (``basic.auth.user.info``,
        ``ssl.ca.location``, ``max.retries`` as an int, ...)."""
        try:
            from confluent_kafka.schema_registry import SchemaRegistryClient
        except ModuleNotFoundError:
            raise PermanentError("schema registry support is not installed: "
                                 "pip install 'corestate[kafka]'") from None
        try:
            self.client = SchemaRegistryClient.new_client({**(config or {}), "url": url})
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"invalid schema registry setting: {exc}") from None

    def register(self, subject: str, schema: str) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return int(self.client.register_schema(subject, Schema(schema, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422):
                raise PermanentError(f"the schema registry refuses {subject}: {exc.error_message}") from None
            raise RetryableError(f"schema registry: {exc.error_message}") from None
        except Exception as exc:
            if _transport_error(exc):
                raise RetryableError(f"schema registry unreachable: {exc}") from None
            raise

    def lookup(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            text = self.client.get_schema(schema_id).schema_str
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise LookupError(schema_id) from None
            raise RetryableError(f"schema registry: {exc.error_message}") from None
        except Exception as exc:
            if _transport_error(exc):
                raise RetryableError(f"schema registry unreachable: {exc}") from None
            raise
        if text is None:
            raise LookupError(schema_id)
        return str(text)


# The registry client's settings that it wants as numbers, not strings.
_REGISTRY_NUMBERS = frozenset({"timeout", "cache.capacity", "cache.latest.ttl.sec", "max.retries",
                               "retries.wait.ms", "retries.max.wait.ms"})


def registry_config(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Schema-registry client settings from ``CORESTATE_SCHEMA_REGISTRY_*`` variables, named
    like :func:`env_client_config` (``..._BASIC_AUTH_USER_INFO`` is ``basic.auth.user.info``,
    ``..._SSL_CA_LOCATION`` is ``ssl.ca.location``); ``..._URL`` is the registry's URL."""
    env = os.environ if environ is None else environ
    out: dict[str, object] = {}
    for k, v in sorted(env.items()):
        if not k.startswith(REGISTRY_ENV_PREFIX) or len(k) == len(REGISTRY_ENV_PREFIX):
            continue
        key = k[len(REGISTRY_ENV_PREFIX):].lower().replace("_", ".")
        if key in _REGISTRY_NUMBERS:
            try:
                out[key] = float(v) if "." in v else int(v)
            except ValueError:
                raise PermanentError(f"{k} must be a number, not {v!r}") from None
        else:
            out[key] = v
    return out


def open_schema_registry(url: str | None = None,
                         environ: Mapping[str, str] | None = None) -> ConfluentSchemaRegistry | None:
    """The schema registry at ``url`` (else ``CORESTATE_SCHEMA_REGISTRY_URL``; None if
    neither), with :func:`registry_config` settings, checked at once: every current event
    schema is registered (the same call encoding makes later, then answered from the
    client's cache), so a registry that is away, refuses the credentials or rejects a
    schema fails here, in one line, rather than on the first record."""
    from corestate.schemas.codec import CURRENT, subject

    config = registry_config(environ)
    env_url = config.pop("url", None)
    url = url or (str(env_url) if env_url else None)
    if url is None:
        return None
    registry = ConfluentSchemaRegistry(url, config)
    parts = urlsplit(url)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # no credentials
    try:
        for name, version in sorted(CURRENT.items()):
            registry.register(subject(name), version.text)
    except (RetryableError, PermanentError) as exc:
        why = exc.message.removeprefix("schema registry").lstrip(": ")
        raise type(exc)(f"schema registry at {shown}: {why}") from None
    except Exception as exc:  # e.g. a page that is not a registry's JSON
        raise PermanentError(f"schema registry at {shown} does not answer as a Confluent-"
                             f"compatible registry: {type(exc).__name__}: {exc}") from None
    return registry
