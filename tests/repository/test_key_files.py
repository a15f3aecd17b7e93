"""A damaged key file gives one line naming it, never a traceback; scrypt parameters
beyond sane bounds are refused before anything is derived."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corestate.connectors.local import LocalBackend
from corestate.repository import keys as keyfiles
from corestate.repository.crypto import Key
from tests.conftest import PASSWORD

DAMAGE = {
    "N=3": lambda d: d.update(N=3),
    "r=0": lambda d: d.update(r=0),
    'N="x"': lambda d: d.update(N="x"),
    "N=2**22": lambda d: d.update(N=1 << 22),
    "bad base64 salt": lambda d: d.update(salt="not*base64!"),
    "short salt": lambda d: d.update(salt="c2FsdA=="),
    "no salt": lambda d: d.pop("salt"),
    "no data": lambda d: d.pop("data"),
    "not an object": None,
    "not JSON": None,
}


def _damage(repo, what):
    (path,) = (repo / "keys").iterdir()
    if what == "not JSON":
        path.write_bytes(path.read_bytes()[:40])
    elif what == "not an object":
        path.write_text("[1, 2]")
    else:
        doc = json.loads(path.read_text())
        DAMAGE[what](doc)
        path.write_text(json.dumps(doc))
    return path.name


@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_a_damaged_key_file_is_one_line_naming_it(repo_path, corestate, what):
    key_id = _damage(repo_path, what)
    proc = corestate("snapshots", "--repo", str(repo_path), check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"key file {key_id[:8]} is damaged: " in lines[0]


def test_huge_scrypt_parameters_are_refused_before_deriving(tmp_path, monkeypatch):
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.create()
    keyfiles.create_key_file(backend, Key.random(), PASSWORD)
    (path,) = (tmp_path / "repo" / "keys").iterdir()
    doc = json.loads(path.read_text())
    doc["N"] = 1 << 22
    path.write_text(json.dumps(doc))
    derived = []
    monkeypatch.setattr(keyfiles, "_derive", lambda *a: derived.append(a))
    with pytest.raises(keyfiles.IntegrityError, match="4096 MiB of memory"):
        keyfiles.open_master_key(backend, "a wrong password")
    assert derived == []


def test_a_good_key_still_opens_beside_a_damaged_one(repo_path, corestate, tmp_path):
    other = tmp_path / "other-pw"
    other.write_text("another password\n")
    corestate("key", "add", "--new-password-file", str(other), "--repo", str(repo_path))
    newest = max((repo_path / "keys").iterdir(), key=lambda p: json.loads(p.read_text())["created"])
    newest.write_text(newest.read_text().replace('"N":32768', '"N":3'))
    corestate("snapshots", "--repo", str(repo_path))  # the intact key opens
    env = {k: v for k, v in os.environ.items() if k != "CORESTATE_PASSWORD"}
    proc = subprocess.run([sys.executable, "-m", "corestate", "snapshots", "--repo",
                           str(repo_path), "--password-file", str(other)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"key file {newest.name[:8]} is damaged: N=3 is not a power of two" in proc.stderr
    # the damaged key is shown for what it is, and can be removed
    listing = corestate("key", "list", "--repo", str(repo_path))
    assert f"key file {newest.name[:8]} is damaged (N=3 is not a power of two" in listing.stderr
    corestate("key", "remove", newest.name[:8], "--repo", str(repo_path))
    assert newest.name not in os.listdir(repo_path / "keys")
