"""Schema-registry framing end to end on a real broker and a real registry
(deploy/registry/registry.sh: Apicurio Registry, Confluent-compatible API): the agent
(`--schema-registry`) and the worker (`CORESTATE_SCHEMA_REGISTRY_URL`) both encode with
registry framing, the snapshot commits, and an independent consumer decodes the
SnapshotCommitted with confluent-kafka's own AvroDeserializer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_corestate, run_restic
from tests.distributed.conftest import Cluster, stop
from tests.kafka_broker import free_ports

pytestmark = [pytest.mark.kafka]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "registry" / "registry.sh"


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on a free port for this module: started, yielded as its Confluent URL, stopped."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the schema registry needs Java 17+ (deploy/registry/registry.sh)")
    [port] = free_ports(1)
    env = {**os.environ, "REGISTRY_PORT": str(port), "PYTHON": sys.executable,
           "REGISTRY_DATA_DIR": str(tmp_path_factory.mktemp("registry") / "data")}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=600, cwd="/")

    started = script("start")
    assert started.returncode == 0, f"registry.sh start exited {started.returncode}:\n" \
                                    f"{started.stdout}\n{started.stderr}"
    try:
        yield f"http://127.0.0.1:{port}/apis/ccompat/v7"
    finally:
        script("stop")


def test_agent_and_worker_use_the_registry_and_a_confluent_consumer_reads_the_commit(
        tmp_path: Path, cluster: Cluster, registry_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(300_000))
    (src / "g").write_text("hello")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    monkeypatch.setenv("CORESTATE_SCHEMA_REGISTRY_URL", registry_url)  # the worker's way
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        agent = subprocess.run(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                           "--host-id", "h1", "--once", "--prefix", cluster.prefix,
                                           "--schema-registry", registry_url),
                               capture_output=True, text=True, timeout=300, env=cluster.env())
        assert agent.returncode == 0, agent.stderr
        [(key, value)] = cluster.consume("snapshots", 1)
    finally:
        stop(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    # every capture the agent sent and what the worker emitted are registry-framed
    captures = cluster.consume("captures", 4, timeout=30)
    assert len(captures) == 4 and all(v[:1] == b"\x00" for _k, v in captures)
    assert value[:1] == b"\x00"
    assert cluster.consume("dlq", 1, timeout=3) == []
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    committed = deserialize(value, SerializationContext(f"{cluster.prefix}.snapshots",
                                                        MessageField.VALUE))
    assert key == committed["snapshot_id"].encode()
    assert committed["host"] == "h1" and committed["paths"] == [str(src)]
    assert committed["files"] == 2
    assert committed["restic_id"] in run_restic("-r", str(repo), "snapshots", "--json").stdout
