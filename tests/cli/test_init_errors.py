"""`corestate init` that cannot create the repository directory names that directory
(it used to name REPO/data, the first subdirectory it tried)."""

from __future__ import annotations

from tests.conftest import run_corestate


def test_init_names_the_repository_directory_it_cannot_create(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    repo = blocker / "repo"
    proc = run_corestate("init", "--repo", str(repo), check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"corestate: error: cannot create the repository directory {repo}: "
        "a component of the path is not a directory"]


def test_init_into_an_existing_empty_directory(tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run_corestate("init", "--repo", str(repo))
    assert (repo / "config").is_file() and (repo / "data" / "ff").is_dir()
