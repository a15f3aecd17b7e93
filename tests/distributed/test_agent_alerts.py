"""Ransomware alerts in distributed mode on a real broker: a watching agent over a tree
whose files are encrypted in place publishes an Alert on <prefix>.alerts that decodes
with nothing but the published .avsc and names a committed clean snapshot, which
restores the files as they were."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from corestate.repository.alerts import alert_id
from corestate.schemas.codec import decode
from corestate.schemas.events import Alert, SnapshotCommitted
from tests.agents.test_sentinel import encrypt, make_docs
from tests.conftest import restored_root, run_corestate, run_restic
from tests.distributed.conftest import ROOT, Cluster, stop
from tests.distributed.test_incremental import WatchingAgent, commits

pytestmark = [pytest.mark.kafka]


def decode_with_the_published_schema(value: bytes) -> dict[str, object]:
    """As docs/topics.md tells a consumer to: fastavro and Alert.avsc, nothing of ours."""
    from fastavro import parse_schema, schemaless_reader
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    raw = json.loads((ROOT / "corestate" / "schemas" / "Alert.avsc").read_text())
    schema = parse_schema(raw)
    fp = fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
    assert value[:2] == b"\xc3\x01" and value[2:10].hex() == fp
    out = schemaless_reader(io.BytesIO(value[10:]), schema, None)
    assert isinstance(out, dict)
    return out


def test_a_watching_agent_alerts_on_in_place_encryption(tmp_path: Path, cluster: Cluster) -> None:
    src = tmp_path / "src"
    docs = make_docs(src, 30)
    originals = {d: d.read_bytes() for d in docs}
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    alerts_file = tmp_path / "alerts.jsonl"
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    agent = WatchingAgent(cluster, src, tmp_path / "agent.log", "--alerts", str(alerts_file))
    victims = docs[:20]
    try:
        [first_run] = agent.settle(after=0, quiet=0.5)
        clean: SnapshotCommitted = commits(cluster, {first_run["snapshot_id"]})[first_run["snapshot_id"]]
        time.sleep(2.0)  # the agent reads the commit; the sketch of the files is made
        for d in victims:  # the attack: in-place encryption, 10 files a second
            encrypt(d)
            time.sleep(0.1)
        records = cluster.consume("alerts", 1, timeout=60)
        assert records, (tmp_path / "agent.log").read_text()
        deadline = time.monotonic() + 30
        while not any(m.get("message_type") == "alert" for m in agent.messages):
            assert time.monotonic() < deadline, agent.messages
            time.sleep(0.1)
        agent.settle(after=1)  # the runs of the attack, committed: nothing left in flight
    finally:
        code = agent.stop()
        stop(worker)
    assert code == 0, (tmp_path / "agent.log").read_text()

    [(key, value)] = records
    alert = decode_with_the_published_schema(value)
    assert key == b"h1" and alert["host"] == "h1"
    assert 0.0 <= alert["score"] <= 1.0 and alert["reason"]  # type: ignore[operator]
    assert alert["top_features"] and all(set(f) == {"name", "value"} for f in alert["top_features"])  # type: ignore[union-attr]
    paths = {os.fsdecode(p) for p in alert["paths"]}  # type: ignore[union-attr]
    assert paths & {os.fspath(d) for d in victims}
    # the clean snapshot: the run committed before the attack began
    assert alert["clean_snapshot"] == clean.restic_id
    snaps = json.loads(run_restic("-r", str(repo), "snapshots", "--json").stdout)
    assert clean.restic_id in {s["id"] for s in snaps} and len(snaps) >= 2

    # --alerts FILE: the same alert, as a JSON line; --json: reported on stdout too
    (line, *_) = [json.loads(ln) for ln in alerts_file.read_text().splitlines()]
    assert line["clean_snapshot"] == clean.restic_id and line["host"] == "h1"
    [shown] = [m for m in agent.messages if m.get("message_type") == "alert"]
    assert shown["id"] == line["id"] == alert_id(decode(value, Alert))  # the guard's id, too

    target = tmp_path / "restored"
    run_restic("-r", str(repo), "restore", clean.restic_id, "--target", str(target))
    for d in victims:
        assert (restored_root(target, src) / d.relative_to(src)).read_bytes() == originals[d], d
