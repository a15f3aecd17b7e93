"""Repository locations: parsing, and the backend each form opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.connectors.retry import RetryBackend
from corestate.connectors.url import open_backend, parse_url
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


@pytest.mark.parametrize("scheme", ["s3", "azure", "gs"])
def test_planned_backends_are_not_available_yet(scheme: str) -> None:
    with pytest.raises(PermanentError, match="not available yet") as raised:
        open_backend(f"{scheme}:somewhere/repo")
    assert f"{scheme}:" in str(raised.value)


def test_an_unknown_scheme_lists_the_supported_forms() -> None:
    with pytest.raises(PermanentError) as raised:
        open_backend("ftp:host/repo")
    message = str(raised.value)
    assert "'ftp'" in message
    assert "local:PATH" in message
    assert "directory path" in message


@pytest.mark.parametrize("url", ["", "local:"])
def test_an_empty_location_is_refused(url: str) -> None:
    with pytest.raises(PermanentError, match="no repository location"):
        open_backend(url)
