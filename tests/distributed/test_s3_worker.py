"""Distributed mode into S3: `corestate worker` stores packs and commits snapshots in a
bucket on the real S3 server, from records on the real broker; restic checks and
restores the result from the bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from corestate.schemas.codec import decode
from corestate.schemas.events import SnapshotCommitted
from tests.conftest import build_rich_tree, restored_root, run_corestate, run_restic, tree_manifest
from tests.distributed.conftest import Cluster, stop
from tests.storage_servers import StorageServer

pytestmark = [pytest.mark.kafka, pytest.mark.restic]


def test_workers_write_the_repository_to_s3(tmp_path: Path, cluster: Cluster, s3_server: StorageServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)  # the worker and restic inherit them
    url = s3_server.url(s3_server.bucket(), "distributed")
    src = build_rich_tree(tmp_path)
    run_corestate("init", "--repo", url)
    worker = cluster.worker(url, log=tmp_path / "worker.log")  # type: ignore[arg-type]
    try:
        cluster.agent(str(src), host_id="h1")
        records = cluster.consume("snapshots", 1)
        assert len(records) == 1, (tmp_path / "worker.log").read_text()
        event = decode(records[0][1], SnapshotCommitted)
    finally:
        stop(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    run_restic("-r", url, "check", "--read-data")
    run_restic("-r", url, "restore", event.restic_id, "--target", str(tmp_path / "out"))
    assert tree_manifest(restored_root(tmp_path / "out", src)) == tree_manifest(src)
