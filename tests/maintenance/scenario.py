"""Shared scaffolding for the maintenance tests: a repository in ``tmp_path``, small
source trees, backups at chosen times, and the real restic as the oracle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from corestate.connectors.local import LocalBackend
from corestate.pipeline.backup import BackupOptions, backup
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository

PASSWORD = "maintenance-test"
RESTIC = shutil.which("restic")


def new_repo(tmp_path: Path, name: str = "repo") -> Repository:
    return Repository.init(LocalBackend(str(tmp_path / name)), PASSWORD)


def reopen(repo: Repository) -> Repository:
    """A fresh handle on the same repository (nothing cached)."""
    return Repository.open(LocalBackend(repo.backend.location()), PASSWORD)


def write_files(root: Path, files: dict[str, bytes | None]) -> None:
    """Create (bytes) or delete (None) files below ``root``."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def snap(repo: Repository, src: Path, time_ns: int | None = None, tags: list[str] | None = None,
         hostname: str = "testhost") -> str:
    """Back up ``src`` and return the snapshot id."""
    summary = backup(repo, BackupOptions(paths=[str(src)], time_ns=time_ns, tags=tags or [],
                                         hostname=hostname, workers=2))
    assert summary.complete, summary.errors
    return summary.snapshot_id


def data_bytes(repo: Repository) -> int:
    return sum(f.size for f in repo.backend.list(Kind.DATA))


def file_names(repo: Repository, kind: Kind) -> set[str]:
    return {f.name for f in repo.backend.list(kind)}


def all_files(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file below ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                out[str(full.relative_to(root))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def restic(repo: Repository, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    location = Path(repo.backend.location())
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD,
               RESTIC_CACHE_DIR=str(location.parent / "restic-cache"))
    done = subprocess.run([str(RESTIC), "-r", str(location), *args], env=env,
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"restic {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def restic_json(repo: Repository, *args: str) -> object:
    out = restic(repo, "--json", *args).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    return json.loads(lines[-1]) if len(lines) == 1 else [json.loads(x) for x in lines]
