"""Repository locations: parsing, and the backend each form opens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.connectors.readahead import ReadAheadBackend
from corestate.connectors.retry import RetryBackend
from corestate.connectors.writebehind import WriteBehindBackend
from corestate.connectors.url import open_backend, parse_location, parse_url
from corestate.errors import PermanentError
from corestate.repository.backend import Kind


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/srv/repo", ("local", "/srv/repo")),
        ("relative/repo", ("local", "relative/repo")),
        ("~/repo", ("local", "~/repo")),
        ("/mnt/a:b", ("local", "/mnt/a:b")),
        ("local:/srv/repo", ("local", "/srv/repo")),
        ("local:~/repo", ("local", "~/repo")),
        ("s3:host/bucket", ("s3", "host/bucket")),
        ("s3:http://127.0.0.1:7070/bucket", ("s3", "http://127.0.0.1:7070/bucket")),
        ("azure:container:/path", ("azure", "container:/path")),
        ("sftp:user@host:/srv/repo", ("sftp", "user@host:/srv/repo")),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


def test_a_plain_path_opens_a_retrying_local_backend(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    assert isinstance(backend, RetryBackend)
    assert isinstance(backend.inner, LocalBackend)
    assert backend.location() == str(tmp_path / "repo")
    backend.create()
    backend.write(Kind.INDEX, "ab" * 32, b"index")
    assert (tmp_path / "repo" / "index" / ("ab" * 32)).read_bytes() == b"index"


@pytest.mark.parametrize("url", ["~/repo", "local:~/repo"])
def test_home_is_expanded(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_backend(url).location() == str(tmp_path / "repo")


def test_local_scheme_allows_a_colon_in_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_backend("local:backup:2024").location() == str(tmp_path / "backup:2024")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3:http://127.0.0.1:7070/backups", ("127.0.0.1:7070", False, "backups", "")),
        ("s3:https://minio.example.com:9000/backups/host/one/",
         ("minio.example.com:9000", True, "backups", "host/one")),
        ("s3:s3.amazonaws.com/backups", ("s3.amazonaws.com", True, "backups", "")),
        ("s3:s3.eu-west-1.amazonaws.com/backups/laptop",
         ("s3.eu-west-1.amazonaws.com", True, "backups", "laptop")),
        ("s3://s3.amazonaws.com/backups/x", ("s3.amazonaws.com", True, "backups", "x")),
    ],
)
def test_s3_locations(url: str, expected: tuple[str, bool, str, str]) -> None:
    loc = parse_location(url)
    assert (loc.scheme, loc.endpoint, loc.secure, loc.bucket, loc.prefix) == ("s3", *expected)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "shown"),
    [
        ("azure:photos:/2024/repo", "photos", "2024/repo", "azure:photos:/2024/repo"),
        ("azure:photos:/", "photos", "", "azure:photos:/"),
        ("gs:archive:/restic", "archive", "restic", "gs:archive:/restic"),
        ("gs:archive", "archive", "", "gs:archive:/"),
    ],
)
def test_azure_and_gcs_locations(url: str, bucket: str, prefix: str, shown: str) -> None:
    loc = parse_location(url)
    assert (loc.bucket, loc.prefix, str(loc)) == (bucket, prefix, shown)
    assert loc.key("data/ab/ab12") == (f"{prefix}/data/ab/ab12" if prefix else "data/ab/ab12")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3:http://127.0.0.1:7070", "no bucket name"),
        ("s3:", "no S3 endpoint"),
        ("s3:http://127.0.0.1:7070/Bad_Bucket", "not a valid bucket name"),
        ("azure::/repo", "no container name"),
        ("gs:b1b:/a/../../etc", "may not contain"),
        ("s3:http://127.0.0.1/b1b?x=1", "no query"),
    ],
)
def test_bad_object_store_locations(url: str, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        parse_location(url)


@pytest.mark.parametrize("url", ["s3:http://AKIAXX:s3cr3t@127.0.0.1:7070/b1b",
                                 "s3:AKIAXX:s3cr3t@s3.amazonaws.com/b1b"])
def test_credentials_in_a_location_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(PermanentError) as raised:
        open_backend(url)
    assert "AWS_ACCESS_KEY_ID" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(("url", "module", "extra"),
                         [("s3:http://127.0.0.1:1/b1b", "minio", "s3"),
                          ("azure:c1c:/r", "azure.storage.blob", "azure"),
                          ("gs:b1b:/r", "google.cloud.storage", "gcs")])
def test_a_missing_extra_names_the_install_command(url: str, module: str, extra: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # the import fails as if not installed
    with pytest.raises(PermanentError) as raised:
        open_backend(url)
    assert f"pip install 'corestate[{extra}]'" in str(raised.value)


def test_remote_backends_retry_for_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    backend = open_backend("gs:bucket:/repo")
    assert isinstance(backend, WriteBehindBackend)
    assert isinstance(backend.inner, ReadAheadBackend)
    backend = backend.inner.inner
    local = open_backend("/tmp/x")
    assert isinstance(local, RetryBackend)
    assert backend.attempts > local.attempts
    # a minute of outage is ridden out even with the shortest draws of the jitter
    ceilings = [min(30.0, 0.5 * 2 ** (n - 1)) for n in range(1, backend.attempts)]
    assert sum(c / 2 for c in ceilings) > 60


def test_an_unknown_scheme_lists_the_supported_forms() -> None:
    with pytest.raises(PermanentError) as raised:
        open_backend("ftp:host/repo")
    message = str(raised.value)
    assert "'ftp'" in message
    assert "local:PATH" in message
    assert "directory path" in message
    assert "s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]" in message
    assert "azure:CONTAINER:/PREFIX" in message
    assert "gs:BUCKET:/PREFIX" in message


@pytest.mark.parametrize("url", ["", "local:"])
def test_an_empty_location_is_refused(url: str) -> None:
    with pytest.raises(PermanentError, match="no repository location"):
        open_backend(url)
