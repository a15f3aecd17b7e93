"""One-shot commands' metrics: a node-exporter textfile and a real Pushgateway (Debian's,
deploy/prometheus/pushgateway.sh). A failed backup keeps the last success time of the
one before it; promtool's linter accepts the series."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_corestate
from tests.telemetry.prom import DEPLOY, Pushgateway, running_pushgateway

LAST = "corestate_backup_last_success_timestamp_seconds"


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels text: value}`` of one series name."""
    return {m[1]: float(m[2]) for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)}


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    yield from running_pushgateway(tmp_path_factory.mktemp("pushgateway"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    return repo


def test_textfile_of_a_backup_and_of_a_failed_one(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello")
    out = tmp_path / "textfile" / "corestate.prom"
    out.parent.mkdir()
    run_corestate("backup", str(src), "--repo", str(repo), "--metrics-file", str(out),
                  "--metrics-max-age", "2h")
    first = out.read_text()
    [(labels, when)] = samples(first, LAST).items()
    assert 'command="backup"' in labels and 'repository="' in labels
    assert samples(first, "corestate_backup_max_age_seconds") == {labels: 7200.0}
    runs = samples(first, "corestate_backup_runs_total")
    assert sorted(runs.values()) == [0.0, 0.0, 1.0]
    assert any('result="success"' in k and v == 1 for k, v in runs.items())
    assert sum(samples(first, "corestate_backup_files_total").values()) == 1
    lint = subprocess.run(["bash", str(DEPLOY / "prometheus.sh"), "promtool", "check", "metrics"],
                          input=first, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    src.rename(tmp_path / "gone")  # the next run fails: its paths do not exist
    proc = run_corestate("backup", str(src), "--repo", str(repo), "--metrics-file", str(out),
                         "--metrics-max-age", "2h", check=False)
    assert proc.returncode == 1
    second = out.read_text()
    assert samples(second, LAST) == {labels: when}  # carried over from the file it replaced
    runs = samples(second, "corestate_backup_runs_total")
    assert any('result="failure"' in k and v == 1 for k, v in runs.items())
    assert not list(out.parent.glob(".corestate-metrics-*"))  # written atomically


def test_push_to_a_real_pushgateway(tmp_path: Path, repo: Path, pushgateway: Pushgateway) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello")
    url = f"http://{pushgateway.address}"
    run_corestate("backup", str(src), "--repo", str(repo), "--metrics-push", url)
    first = samples(pushgateway.metrics(), LAST)
    [(labels, when)] = [(k, v) for k, v in first.items() if f'instance="{socket.gethostname()}"' in k
                        and 'job="corestate_backup"' in k and "source_set" in k]
    src.rename(tmp_path / "gone")
    proc = run_corestate("backup", str(src), "--repo", str(repo), "--metrics-push", url, check=False)
    assert proc.returncode == 1
    text = pushgateway.metrics()
    assert samples(text, LAST)[labels] == when  # a failed run leaves the last success alone
    failures = {k: v for k, v in samples(text, "corestate_backup_runs_total").items()
                if 'result="failure"' in k and 'job="corestate_backup"' in k}
    assert list(failures.values()) == [1.0]

    run_corestate("check", "--repo", str(repo), "--metrics-push", url)
    checks = samples(pushgateway.metrics(), "corestate_check_success")
    assert any('job="corestate_check"' in k and v == 1.0 for k, v in checks.items()), checks


def test_push_to_nowhere_warns_and_keeps_the_exit_code(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    proc = run_corestate("backup", str(src), "--repo", str(repo), "--metrics-push",
                         "http://127.0.0.1:9")
    assert "warning: metrics not pushed" in proc.stderr


def test_listen_on_a_taken_port_is_one_clear_error(tmp_path: Path, repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_corestate("protect", str(tmp_path), "--repo", str(repo), "--metrics-listen",
                             f"127.0.0.1:{port}", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"corestate: error: cannot listen for metrics on 127.0.0.1:{port}")
    bad = run_corestate("protect", str(tmp_path), "--repo", str(repo), "--metrics-listen",
                        "nonsense", check=False, timeout=60)
    assert bad.returncode == 1 and "--metrics-listen takes HOST:PORT" in bad.stderr
