"""Key files: the master key, wrapped by passwords.

A repository has one *master key* (:class:`~.crypto.Key`) that encrypts everything. Each
*key file* in ``keys/`` holds that master key encrypted with a *user key* derived from a
password by scrypt, plus the scrypt parameters and salt. A key file is plain JSON, named
by the SHA-256 of its bytes. Adding a password adds a key file; removing one deletes it;
changing a password is add-then-remove.
"""

from __future__ import annotations

import base64
import binascii
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

Password = str | bytes
"""A password: bytes as given (restic passes whatever bytes it read), or text (UTF-8)."""

# scrypt cost: N=2^15, r=8, p=1 needs 32 MiB and ~0.1 s here.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 64  # restic refuses any other length
# What a key file may ask of us before we derive anything. restic tunes its keys to
# 60 MiB and ~0.5 s (N=2^15, r=8, p up to ~10); these bounds leave 4x the memory and
# 16x the work of that, and refuse keys that would make a wrong password cost minutes.
MAX_MEMORY = 256 * 1024 * 1024  # 128 * N * r bytes
MAX_WORK = 1 << 25  # N * r * p


@dataclass(frozen=True)
class KeyFile:
    """One key file: its id (name in ``keys/``) and the parsed JSON; ``damage`` says
    why it cannot be used ("" when it looks usable)."""

    id: str
    created: str
    username: str
    hostname: str
    raw: dict[str, object]
    damage: str = ""


@dataclass(frozen=True)
class _Params:
    salt: bytes
    n: int
    r: int
    p: int
    data: bytes


def _to_bytes(password: Password) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _derive(password: Password, salt: bytes, n: int, r: int, p: int) -> Key:
    kdf = Scrypt(salt=salt, length=64, n=n, r=r, p=p)
    return Key.from_bytes(kdf.derive(_to_bytes(password)))


def check_scrypt(n: int, r: int, p: int) -> None:
    """Refuse parameters scrypt cannot take or that cost more than the bounds above.

    >>> check_scrypt(1 << 15, 8, 8)
    >>> check_scrypt(3, 8, 1)
    Traceback (most recent call last):
    ValueError: N=3 is not a power of two above 1
    >>> check_scrypt(1 << 22, 8, 1)  # 4 GiB: a wrong password would take seconds
    Traceback (most recent call last):
    ValueError: N=4194304, r=8 would need 4096 MiB of memory (at most 256 MiB allowed)
    """
    if n < 2 or n & (n - 1):
        raise ValueError(f"N={n} is not a power of two above 1")
    if r < 1 or p < 1:
        raise ValueError(f"r={r} and p={p} must be at least 1")
    if 128 * n * r > MAX_MEMORY:
        raise ValueError(f"N={n}, r={r} would need {128 * n * r >> 20} MiB of memory "
                         f"(at most {MAX_MEMORY >> 20} MiB allowed)")
    if n * r * p > MAX_WORK:
        raise ValueError(f"N={n}, r={r}, p={p} is more work than {MAX_WORK} (N*r*p) allows")


def _params(doc: dict[str, object]) -> _Params:
    """The scrypt parameters, salt and wrapped key of a key file, checked; ValueError
    saying what is wrong."""
    if doc.get("kdf") != "scrypt":
        raise ValueError(f"unsupported kdf {doc.get('kdf')!r} (only scrypt)")
    values = {}
    for name in ("N", "r", "p"):
        value = doc.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} is {value!r}, not an integer")
        values[name] = value
    check_scrypt(values["N"], values["r"], values["p"])
    raw: dict[str, bytes] = {}
    for name in ("salt", "data"):
        value = doc.get(name)
        if not isinstance(value, str):
            raise ValueError(f"no {name}" if value is None else f"{name} is not a string")
        try:
            raw[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{name} is not valid base64") from None
    if len(raw["salt"]) != SALT_SIZE:
        raise ValueError(f"salt is {len(raw['salt'])} bytes, not {SALT_SIZE}")
    return _Params(raw["salt"], values["N"], values["r"], values["p"], raw["data"])


# Go's unicode.IsSpace (the White_Space property): what restic's strings.TrimSpace trims.
_GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def password_from_file(data: bytes) -> bytes:
    r"""A password file's content as restic reads it (``cmd/restic/global.go``): the
    whole file, a UTF-8 byte order mark dropped (UTF-16 with a BOM decoded to UTF-8),
    white space trimmed at both ends (Go's ``strings.TrimSpace``); bytes that are not
    UTF-8 are kept as they are.

    >>> password_from_file(b"\xef\xbb\xbf  two words \r\nsecond line\r\n")
    b'two words \r\nsecond line'
    >>> password_from_file(b"\xff\xfeh\x00i\x00\n\x00"), password_from_file(b"caf\xe9\n")
    (b'hi', b'caf\xe9')
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xfe\xff", b"\xff\xfe")):
        data = data.decode("utf-16", "replace").encode("utf-8")
    text = data.decode("utf-8", "surrogateescape").strip(_GO_SPACE)
    return text.encode("utf-8", "surrogateescape")


def create_key_file(backend: Backend, master: Key, password: Password) -> str:
    """Store a new key file wrapping ``master`` under ``password``; returns its id."""
    if not _to_bytes(password):
        raise PermanentError("an empty password is not a password")
    salt = os.urandom(SALT_SIZE)
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


def parse_key_file(key_id: str, raw: bytes) -> KeyFile:
    """A key file from its bytes; one that cannot be used has ``damage`` set."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return KeyFile(key_id, "", "", "", {}, "not valid JSON")
    if not isinstance(doc, dict):
        return KeyFile(key_id, "", "", "", {}, f"a JSON {type(doc).__name__}, not an object")
    try:
        _params(doc)
        damage = ""
    except ValueError as exc:
        damage = str(exc)
    return KeyFile(key_id, str(doc.get("created", "")), str(doc.get("username", "")),
                   str(doc.get("hostname", "")), doc, damage)


def list_key_files(backend: Backend) -> list[KeyFile]:
    """Every key file, oldest first, damaged ones included (see ``KeyFile.damage``)."""
    out = [parse_key_file(info.name, backend.read(Kind.KEYS, info.name))
           for info in backend.list(Kind.KEYS)]
    out.sort(key=lambda k: k.created)
    return out


def _try_open(kf: KeyFile, password: Password) -> Key | None:
    """The master key if ``password`` opens ``kf``, None if it does not; IntegrityError
    if the key file is damaged."""
    if kf.damage:
        raise IntegrityError(f"key file {kf.id[:8]} is damaged: {kf.damage}")
    params = _params(kf.raw)
    user_key = _derive(password, params.salt, params.n, params.r, params.p)
    try:
        plain = user_key.decrypt(params.data, f"key file {kf.id[:8]}")
    except IntegrityError:
        return None
    try:
        doc = orjson.loads(plain)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        return Key.from_json(doc)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AssertionError,
            binascii.Error) as exc:
        raise IntegrityError(f"key file {kf.id[:8]} opens, but the master key inside is "
                             f"damaged ({exc or type(exc).__name__})") from None


def open_master_key(backend: Backend, password: Password,
                    key_hint: str | None = None) -> tuple[Key, str]:
    """The master key and the id of the key file that opened it.

    Tries ``key_hint`` first, then every key file (as restic does). A damaged key file
    is skipped when another one opens; when none does, the error names it."""
    keys = list_key_files(backend)
    if not keys:
        raise PermanentError(f"{backend.location()}: repository has no key files")
    if key_hint:
        keys.sort(key=lambda k: not k.id.startswith(key_hint))
    damaged: list[str] = []
    for kf in keys:
        try:
            master = _try_open(kf, password)
        except IntegrityError as exc:
            damaged.append(exc.message)
            continue
        if master is not None:
            return master, kf.id
    if damaged:
        tried = len(keys) - len(damaged)
        others = f"; the password opens none of the other {tried}" if tried else ""
        raise IntegrityError(f"{backend.location()}: {'; '.join(damaged)}{others}")
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
