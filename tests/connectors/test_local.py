"""The local backend: the shared contract, plus what only a directory on disk can show
(layout, temporaries, fsync, OS error translation)."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.errors import NotFoundError, PermanentError, RetryableError
from corestate.repository.backend import Backend, Kind, object_path
from tests.connectors.contract import BackendContract, content_name


class TestLocalBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return LocalBackend(str(root))


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.create()
    return backend


def test_create_makes_restics_layout(local: LocalBackend, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    assert local.location() == str(root)
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    for name in ("index", "keys", "locks", "snapshots", "corestate"):
        assert (root / name).is_dir()


def test_create_in_an_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    backend = LocalBackend(tmp_path / "repo")
    assert backend.exists()
    backend.create()
    assert (tmp_path / "repo" / "data" / "ff").is_dir()


def test_create_refuses_an_existing_repository(local: LocalBackend) -> None:
    local.write(Kind.CONFIG, "config", b"{}")
    with pytest.raises(PermanentError, match="already exists"):
        local.create()


def test_write_puts_the_file_at_its_object_path(local: LocalBackend, tmp_path: Path) -> None:
    name = content_name(b"pack")
    local.write(Kind.DATA, name, b"pack")
    path = tmp_path / "repo" / object_path(Kind.DATA, name)
    assert path.read_bytes() == b"pack"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == [name]  # no temporary left behind


def test_write_fsyncs_the_file_and_its_directory(
    local: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_mode)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    local.write(Kind.SNAPSHOTS, "ab" * 32, b"snapshot")
    assert [stat.S_ISREG(m) for m in synced] == [True, False]
    assert stat.S_ISDIR(synced[1])
    assert (tmp_path / "repo" / "snapshots" / ("ab" * 32)).read_bytes() == b"snapshot"


def test_write_recreates_a_missing_data_subdirectory(local: LocalBackend, tmp_path: Path) -> None:
    (tmp_path / "repo" / "data" / "ab").rmdir()
    local.write(Kind.DATA, "ab" * 32, b"pack")
    assert local.read(Kind.DATA, "ab" * 32) == b"pack"


def test_write_into_a_missing_repository_does_not_create_it(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "nowhere")
    with pytest.raises(NotFoundError, match="nowhere"):
        backend.write(Kind.INDEX, "ab" * 32, b"index")
    assert not (tmp_path / "nowhere").exists()


def test_crash_left_temporaries_are_not_listed_and_are_removed(
    local: LocalBackend, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    local.write(Kind.DATA, "ab" * 32, b"pack")
    stale = [root / "data" / "ab" / ".tmp-dead1", root / "index" / ".tmp-dead2", root / ".tmp-cfg"]
    fresh = root / "data" / "ab" / ".tmp-live"
    an_hour_ago = time.time() - 3600
    for path in stale:
        path.write_bytes(b"half a pack")
        os.utime(path, (an_hour_ago, an_hour_ago))
    fresh.write_bytes(b"being written")
    assert {i.name for i in local.list(Kind.DATA)} == {"ab" * 32}
    assert list(local.list(Kind.INDEX)) == []
    assert [i.name for i in local.list(Kind.CONFIG)] == []
    assert local.remove_stale_temporaries(older_than_seconds=600) == 3
    assert not any(path.exists() for path in stale)
    assert fresh.exists()  # may belong to a live writer
    assert local.read(Kind.DATA, "ab" * 32) == b"pack"


def test_list_tolerates_missing_kind_directories(local: LocalBackend, tmp_path: Path) -> None:
    local.write(Kind.DATA, "ab" * 32, b"pack")
    (tmp_path / "repo" / "index").rmdir()
    assert list(local.list(Kind.INDEX)) == []
    assert list(LocalBackend(tmp_path / "nowhere").list(Kind.DATA)) == []
    assert [i.name for i in local.list(Kind.DATA)] == ["ab" * 32]


def test_names_that_escape_or_hide_are_rejected(local: LocalBackend) -> None:
    for bad in ("../config", "..", "", ".tmp-x", "a/b"):
        with pytest.raises(PermanentError, match="invalid"):
            local.write(Kind.INDEX, bad, b"x")


def test_a_file_where_a_directory_should_be_is_permanent(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_bytes(b"")
    backend = LocalBackend(tmp_path / "plain-file" / "repo")
    with pytest.raises(PermanentError, match="not a directory") as created:
        backend.create()
    assert not isinstance(created.value, NotFoundError)
    with pytest.raises(PermanentError, match="plain-file"):
        backend.read(Kind.INDEX, "ab" * 32)
    with pytest.raises(PermanentError, match="plain-file"):
        backend.write(Kind.INDEX, "ab" * 32, b"x")


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (errno.ENOSPC, PermanentError, "no space left on device writing "),
        (errno.EACCES, PermanentError, "permission denied"),
        (errno.EPERM, PermanentError, "not permitted"),
        (errno.EIO, RetryableError, "failed"),
        (errno.ETIMEDOUT, RetryableError, "failed"),
    ],
)
def test_os_errors_while_writing_are_translated(
    local: LocalBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    error: type[Exception],
    message: str,
) -> None:
    # Running as root, the real errors cannot be provoked; inject them at the rename.
    def failing_replace(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code), dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(error, match=message) as raised:
        local.write(Kind.INDEX, "ab" * 32, b"index")
    assert type(raised.value) is error
    assert str(tmp_path / "repo" / "index" / ("ab" * 32)) in str(raised.value)
    assert os.listdir(tmp_path / "repo" / "index") == []  # the temporary was cleaned up


def test_read_not_found_names_the_file(local: LocalBackend, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as raised:
        local.read(Kind.KEYS, "ef" * 32)
    assert str(tmp_path / "repo" / "keys" / ("ef" * 32)) in str(raised.value)
