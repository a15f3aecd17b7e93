"""Key files: the master key, wrapped by passwords.

A repository has one *master key* (:class:`~.crypto.Key`) that encrypts everything. Each
*key file* in ``keys/`` holds that master key encrypted with a *user key* derived from a
password by scrypt, plus the scrypt parameters and salt. A key file is plain JSON, named
by the SHA-256 of its bytes. Adding a password adds a key file; removing one deletes it;
changing a password is add-then-remove.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import socket
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from corestate.errors import IntegrityError, NotFoundError, PermanentError, WrongPasswordError
from corestate.repository.backend import Backend, Kind
from corestate.repository.crypto import Key
from corestate.repository.timefmt import format_time, now_ns

# scrypt cost: N=2^15, r=8, p=1 needs 32 MiB and ~0.1 s here; restic accepts any
# parameters stored in the key file.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class KeyFile:
    """One key file: its id (name in ``keys/``) and the parsed JSON."""

    id: str
    created: str
    username: str
    hostname: str
    raw: dict[str, object]


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> Key:
    kdf = Scrypt(salt=salt, length=64, n=n, r=r, p=p)
    return Key.from_bytes(kdf.derive(password.encode("utf-8")))


def create_key_file(backend: Backend, master: Key, password: str) -> str:
    """Store a new key file wrapping ``master`` under ``password``; returns its id."""
    salt = os.urandom(64)
    user_key = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    data = user_key.encrypt(orjson.dumps(master.to_json()))
    doc = {
        "created": format_time(now_ns()),
        "username": getpass.getuser(),
        "hostname": socket.gethostname(),
        "kdf": "scrypt",
        "N": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.standard_b64encode(salt).decode(),
        "data": base64.standard_b64encode(data).decode(),
    }
    raw = orjson.dumps(doc)
    key_id = hashlib.sha256(raw).hexdigest()
    backend.write(Kind.KEYS, key_id, raw)
    return key_id


def list_key_files(backend: Backend) -> list[KeyFile]:
    """Every key file, oldest first; unreadable ones raise IntegrityError."""
    out = []
    for info in backend.list(Kind.KEYS):
        raw = backend.read(Kind.KEYS, info.name)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise IntegrityError(f"key file {info.name[:8]} is not valid JSON") from None
        out.append(KeyFile(info.name, str(doc.get("created", "")), str(doc.get("username", "")),
                           str(doc.get("hostname", "")), doc))
    out.sort(key=lambda k: k.created)
    return out


def _try_open(kf: KeyFile, password: str) -> Key | None:
    doc = kf.raw
    if doc.get("kdf") != "scrypt":
        return None
    try:
        user_key = _derive(password, base64.standard_b64decode(str(doc["salt"])),
                           int(str(doc["N"])), int(str(doc["r"])), int(str(doc["p"])))
        plain = user_key.decrypt(base64.standard_b64decode(str(doc["data"])), "key file")
    except IntegrityError:
        return None
    return Key.from_json(orjson.loads(plain))


def open_master_key(backend: Backend, password: str, key_hint: str | None = None) -> tuple[Key, str]:
    """The master key and the id of the key file that opened it.

    Tries ``key_hint`` first, then every key file (as restic does)."""
    keys = list_key_files(backend)
    if not keys:
        raise PermanentError(f"{backend.location()}: repository has no key files")
    if key_hint:
        keys.sort(key=lambda k: not k.id.startswith(key_hint))
    for kf in keys:
        master = _try_open(kf, password)
        if master is not None:
            return master, kf.id
    raise WrongPasswordError(f"wrong password or no key found for {backend.location()}")


def remove_key_file(backend: Backend, key_id_prefix: str, current_id: str) -> str:
    """Delete the key file whose id starts with the prefix; refuses the key in use."""
    matches = [k.id for k in list_key_files(backend) if k.id.startswith(key_id_prefix)]
    if not matches:
        raise NotFoundError(f"no key with id {key_id_prefix!r}")
    if len(matches) > 1:
        raise PermanentError(f"key id {key_id_prefix!r} is ambiguous ({len(matches)} keys)")
    if matches[0] == current_id:
        raise PermanentError("refusing to remove the key currently used to open the repository")
    backend.delete(Kind.KEYS, matches[0])
    return matches[0]
