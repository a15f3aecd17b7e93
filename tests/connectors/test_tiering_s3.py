"""`corestate tiering --apply` on a real S3 server: the advised packs move to their class
(seen on the wire: versitygw accepts storage classes but keeps none, so a proxy in front
of it records the requests), the repository records each pack's class, later advice
starts from there, and restore and check explain what to do about archived packs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corestate.connectors.s3 import S3Backend
from corestate.connectors.url import parse_location
from corestate.errors import PermanentError
from corestate.repository.backend import Kind
from tests.conftest import run_corestate
from tests.connectors.faultproxy import FaultProxy
from tests.storage_servers import StorageServer

DAY = 86400
PRICES = [{"name": "STANDARD", "storage": 0.023, "retrieval": 0, "min_days": 0},
          {"name": "STANDARD_IA", "storage": 0.0125, "retrieval": 0.01, "min_days": 30},
          {"name": "GLACIER", "storage": 0.0036, "retrieval": 0.03, "min_days": 90,
           "immediate": False}]


@pytest.fixture
def proxied(s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FaultProxy]]:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    proxy = FaultProxy(s3_server.port)
    yield f"s3:{proxy.endpoint}/{s3_server.bucket()}/repo", proxy
    proxy.close()


def backup(url: str, path: Path) -> str:
    return str(json.loads(run_corestate("backup", str(path), "--repo", url, "--json").stdout)["snapshot_id"])


def tiering(url: str, *args: str, now: float, prices: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(run_corestate("tiering", "--repo", url, "--json", "--now", str(now),
                                    "--prices", str(prices), *args).stdout)


def test_apply_moves_the_advised_packs_and_restore_explains_archived_ones(
        proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    url, proxy = proxied
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    run_corestate("init", "--repo", url)
    for name in ("cold", "warm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.bin").write_bytes(hashlib.sha256(name.encode()).digest() * 40_000)
    cold, warm = backup(url, tmp_path / "cold"), backup(url, tmp_path / "warm")
    t0 = time.time()
    # warm is read 10 days before the advice: it stays where it is
    run_corestate("restore", warm, "--target", str(tmp_path / "read"), "--repo", url,
                  env={"CORESTATE_NOW": str(t0 + 190 * DAY)})

    proxy.log.clear()
    applied = tiering(url, "--apply", now=t0 + 200 * DAY, prices=prices)
    [advice] = applied["advice"]
    assert (advice["id"], advice["target"]) == (cold, "GLACIER")
    assert applied["moved"] == {p: "GLACIER" for p in advice["packs"]}
    copies = {path.split("?")[0]: headers for method, path, headers in proxy.log
              if method == "PUT" and "x-amz-copy-source" in headers}
    bucket = url.split("/")[3]
    assert set(copies) == {f"/{bucket}/repo/data/{p[:2]}/{p}" for p in advice["packs"]}
    assert {h["x-amz-storage-class"] for h in copies.values()} == {"GLACIER"}
    backend = S3Backend(parse_location(url))
    for pack in advice["packs"]:  # moved in place: the same bytes under the same name
        assert hashlib.sha256(backend.read(Kind.DATA, pack)).hexdigest() == pack

    again = tiering(url, now=t0 + 200 * DAY, prices=prices)
    assert again["advice"] == [] and again["classes"] == {"GLACIER": len(advice["packs"])}
    listed = json.loads(run_corestate("tiering", "--repo", url, "--archived", "--json").stdout)
    assert {(r["pack"], r["class"], r["key"]) for r in listed} == {
        (p, "GLACIER", f"repo/data/{p[:2]}/{p}") for p in advice["packs"]}

    refused = run_corestate("restore", cold, "--target", str(tmp_path / "out"), "--repo", url,
                            check=False)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert f"restoring snapshot {cold[:8]} needs {len(advice['packs'])} packs" in line
    assert "(1 in GLACIER)" in line or f"({len(advice['packs'])} in GLACIER)" in line
    assert "corestate tiering --archived" in line and "restore-object" in line
    assert not (tmp_path / "out").exists()
    run_corestate("restore", warm, "--target", str(tmp_path / "out"), "--repo", url)
    checked = run_corestate("check", "--read-data", "--repo", url, check=False)
    assert checked.returncode == 1 and "check --read-data needs" in checked.stderr
    run_corestate("check", "--repo", url)


def test_an_archived_read_says_what_to_do(proxied: tuple[str, FaultProxy]) -> None:
    url, proxy = proxied
    backend = S3Backend(parse_location(url))
    backend.create()
    backend.write(Kind.DATA, "ab" * 32, b"pack")
    proxy.fail("GET", r"/data/ab/", 403, "InvalidObjectState")
    with pytest.raises(PermanentError) as raised:
        backend.read(Kind.DATA, "ab" * 32)
    message = str(raised.value)
    assert message.startswith(f"reading {url}/data/ab/{'ab' * 32}: the object is in an archive")
    assert "restore-object" in message


def test_apply_needs_s3(tmp_path: Path) -> None:
    run_corestate("init", "--repo", str(tmp_path / "repo"))
    refused = run_corestate("tiering", "--repo", str(tmp_path / "repo"), "--apply", check=False)
    assert refused.returncode == 1
    assert "this repository is not on S3" in refused.stderr
