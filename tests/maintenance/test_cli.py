"""The maintenance commands through the CLI: help text, human output, --json shapes and
exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from corestate.cli.main import _register, cli
from corestate.repository.backend import Kind, object_path
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from tests.maintenance.scenario import PASSWORD, new_repo, reopen, snap, write_files

COMMANDS = ("check", "forget", "prune", "stats", "diff", "find", "ls")
_register()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Repository, list[str], Path]:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"alpha\n", "dir/b.bin": os.urandom(200_000)})
    s1 = snap(repo, src, time_ns=1_700_000_000 * 10**9)
    write_files(src, {"a.txt": b"alpha, changed\n", "c.txt": b"gamma\n"})
    with open(os.fsencode(src) + b"/bad\xff.txt", "wb") as f:  # not UTF-8
        f.write(b"?")
    s2 = snap(repo, src, time_ns=1_700_100_000 * 10**9)
    return reopen(repo), [s1, s2], src


def run(repo: Repository, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-r", repo.backend.location(), *args],
                              env={"CORESTATE_PASSWORD": PASSWORD})


def emitted(result: Result) -> object:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert f"Usage: cli {command}" in result.output or f"{command} [OPTIONS]" in result.output
    body = result.output.split("Options:")[0]
    assert len(body.split()) > 30  # a real description, not a stub


def test_check_json_and_exit_codes(setup: tuple[Repository, list[str], Path]) -> None:
    repo, _, _ = setup
    doc = emitted(run(repo, "--json", "check", "--read-data"))
    assert isinstance(doc, dict) and doc["ok"] is True and doc["num_errors"] == 0
    assert {"errors", "notes", "packs", "snapshots", "packs_read"} <= set(doc)
    repo.load_index()
    pack = next(p for p, e in repo.index.packs.items() if e[0].type == BlobType.DATA)
    path = Path(repo.backend.location()) / object_path(Kind.DATA, pack)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert run(repo, "check").exit_code == 0
    bad = run(repo, "--json", "check", "--read-data")
    assert bad.exit_code == 1 and "check found" in str(bad.exception)
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and any(e["pack"] == pack and e["blobs"] for e in doc["errors"])
    human = run(repo, "check", "--read-data")
    assert human.exit_code == 1 and pack[:16] in human.stderr


def test_forget_json_shape_and_refusal(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, s2), _ = setup
    refused = run(repo, "forget")
    assert refused.exit_code == 1 and "no retention policy" in str(refused.exception)
    groups = emitted(run(repo, "--json", "forget", "--keep-last", "1", "--dry-run"))
    assert isinstance(groups, list) and len(groups) == 1
    group = groups[0]
    assert set(group) == {"tags", "host", "paths", "keep", "remove", "reasons"}
    assert [s["id"] for s in group["keep"]] == [s2] and [s["id"] for s in group["remove"]] == [s1]
    assert group["reasons"][0]["matches"] == ["last snapshot"]
    assert len(list(repo.backend.list(Kind.SNAPSHOTS))) == 2
    repo.save_sidecar("protected", json.dumps([s1]).encode())
    human = run(repo, "forget", "--keep-last", "1")
    assert human.exit_code == 0 and "removed 0 snapshots" in human.stdout
    assert run(repo, "forget", s1[:8]).exit_code == 1  # protected
    repo.save_sidecar("protected", b"[]")
    lines = run(repo, "--json", "forget", "--keep-last", "1", "--prune").stdout.splitlines()
    assert json.loads(lines[0])[0]["remove"][0]["id"] == s1
    assert json.loads(lines[1])["prune"]["bytes_freed"] > 0
    assert {f.name for f in repo.backend.list(Kind.SNAPSHOTS)} == {s2}


def test_prune_json(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, _), _ = setup
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    dry = emitted(run(repo, "--json", "prune", "--dry-run"))
    assert isinstance(dry, dict) and dry["dry_run"] is True
    doc = emitted(run(repo, "--json", "prune"))
    assert isinstance(doc, dict)
    assert {"packs_deleted", "packs_repacked", "packs_written", "bytes_before", "bytes_after",
            "bytes_freed", "blobs_removed"} <= set(doc)
    assert doc["bytes_freed"] > 0 and doc["bytes_after"] < doc["bytes_before"]
    human = run(repo, "prune")
    assert human.exit_code == 0 and "freed" in human.stdout


def test_stats_json(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, s2), _ = setup
    size = emitted(run(repo, "--json", "stats"))
    assert isinstance(size, dict) and size["snapshots_count"] == 2 and size["total_file_count"] > 4
    raw = emitted(run(repo, "--json", "stats", "--mode", "raw-data", s2[:8]))
    assert isinstance(raw, dict) and raw["snapshots_count"] == 1
    assert {"total_size", "total_blob_count", "total_uncompressed_size", "compression_ratio"} <= set(raw)
    assert raw["repository"]["packs"] >= 2
    assert "Total Size" in run(repo, "stats", "latest").stdout


def test_diff_json_and_text(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, s2), src = setup
    doc = emitted(run(repo, "--json", "diff", s1[:8], s2[:8]))
    assert isinstance(doc, dict) and doc["source_snapshot"] == s1
    changes = {c["path"].rsplit("/", 1)[-1]: c["modifier"] for c in doc["changes"]}
    assert changes["a.txt"] == "M" and changes["c.txt"] == "+"
    assert doc["added"]["data_blobs"] >= 2 and doc["removed"]["data_blobs"] == 1
    text = run(repo, "diff", s1, "latest").stdout
    assert f"M    {src}/a.txt" in text and "Data Blobs:" in text


def test_find_json(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, s2), _ = setup
    matches = emitted(run(repo, "--json", "find", "*.txt"))
    assert isinstance(matches, list)
    assert all({"snapshot", "path", "size", "mtime", "type"} <= set(m) for m in matches)
    assert sorted((m["snapshot"], m["path"].rsplit("/", 1)[-1]) for m in matches
                  if "\ufffd" not in m["path"]) == sorted(
        [(s1, "a.txt"), (s2, "a.txt"), (s2, "c.txt")])
    only = emitted(run(repo, "--json", "find", "c.txt", "--snapshot", s1[:8]))
    assert only == []
    assert s2[:8] in run(repo, "find", "c.txt").stdout


def test_ls_json_long_and_raw_names(setup: tuple[Repository, list[str], Path]) -> None:
    repo, (s1, s2), src = setup
    result = run(repo, "--json", "ls", "latest")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert lines[0]["struct_type"] == "snapshot" and lines[0]["id"] == s2
    nodes = {n["path"]: n for n in lines[1:]}
    assert all(n["struct_type"] == "node" for n in nodes.values())
    a = nodes[f"{src}/a.txt"]
    assert {"name", "type", "path", "size", "mode", "mtime", "permissions"} <= set(a)
    assert (a["name"], a["type"], a["size"]) == ("a.txt", "file", 15)
    raw = next(n for n in lines[1:] if "path_raw" in n)
    assert raw["name"] == "bad\ufffd.txt"
    under = run(repo, "ls", s1[:8], f"{src}/dir")
    assert under.stdout.strip().splitlines()[-1] == f"{src}/dir/b.bin"
    long_ = run(repo, "ls", "--long", "latest", str(src)).stdout_bytes
    assert b"-rw-" in long_ and b"bad\xff.txt" in long_  # the name's own bytes
    assert run(repo, "ls", "latest", "/no/such/path").exit_code == 1


def test_the_module_entry_point_runs_check(setup: tuple[Repository, list[str], Path]) -> None:
    repo, _, _ = setup
    env = dict(os.environ, CORESTATE_PASSWORD=PASSWORD)
    done = subprocess.run([sys.executable, "-m", "corestate", "-r", repo.backend.location(),
                           "--json", "check"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
