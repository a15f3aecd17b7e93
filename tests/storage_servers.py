"""Real storage servers for tests: deploy/storage/{s3,azurite,gcs}.sh on free loopback
ports with their own data directories. ``tests/conftest.py`` makes session fixtures of
:func:`running`; a test gets a fresh bucket (:meth:`StorageServer.bucket`) so tests never
see each other's objects.

Terms: the *kind* is ``s3`` (versitygw), ``azure`` (Azurite) or ``gs`` (fake-gcs-server),
the scheme of its repository locations; the *client environment* (:meth:`env`) is what
a CoreState process needs to reach it (keys, connection string or emulator host).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "storage"
SCRIPTS = {"s3": "s3.sh", "azure": "azurite.sh", "gs": "gcs.sh"}
PREFIX = {"s3": "S3", "azure": "AZURITE", "gs": "GCS"}  # of each script's variables
S3_KEYS = {"AWS_ACCESS_KEY_ID": "corestate", "AWS_SECRET_ACCESS_KEY": "corestate-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StorageServer:
    kind: str
    port: int
    data: Path

    def script(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """Run this server's deploy script; the first start also builds or installs it.
        The keys are the script's defaults: the caller's own AWS_* must not leak in."""
        p = PREFIX[self.kind]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({f"{p}_PORT": str(self.port), f"{p}_DATA_DIR": str(self.data)})
        return subprocess.run(["bash", str(DEPLOY / SCRIPTS[self.kind]), *args], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def start(self) -> None:
        proc = self.script("start")
        assert proc.returncode == 0, (f"{SCRIPTS[self.kind]} start exited {proc.returncode}:\n"
                                      f"{proc.stdout}\n{proc.stderr}")

    def stop(self) -> None:
        self.script("stop", timeout=120)

    def pid(self) -> int:
        return int((self.data / f"{Path(SCRIPTS[self.kind]).stem}.pid").read_text())

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        os.kill(self.pid(), signal.SIGKILL)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client process needs in its environment to reach this server."""
        if self.kind == "s3":
            return dict(S3_KEYS)
        if self.kind == "azure":
            return {"AZURE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint}/devstoreaccount1;")}
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def url(self, bucket: str, prefix: str = "") -> str:
        """A repository location on this server, as restic writes it."""
        if self.kind == "s3":
            return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")
        return f"{self.kind}:{bucket}:/{prefix}"

    @staticmethod
    def bucket() -> str:
        """A bucket name no other test uses."""
        return f"t-{uuid.uuid4().hex[:20]}"


def running(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    """Start a server of ``kind``, yield it, stop it."""
    server = StorageServer(kind, free_port(), tmp_path_factory.mktemp(f"storage-{kind}") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
