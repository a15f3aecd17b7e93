"""Authenticated encryption as restic does it.

A *master key* has three parts: a 32-byte AES-256 key for AES-CTR and the two 16-byte
halves ``k`` and ``r`` of a Poly1305-AES MAC key. Every encrypted file and blob is::

    IV (16 random bytes) || AES-256-CTR(key, IV, plaintext) || Poly1305-AES tag (16)

The tag covers the ciphertext only. Its one-time Poly1305 key is ``clamp(r)`` followed by
``AES-128-ECB(k, IV)``. A *user key* (derived from a password with scrypt) has the same
three parts and encrypts only the master key inside a key file (see :mod:`.keys`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from corestate.errors import IntegrityError

IV_SIZE = 16
TAG_SIZE = 16
OVERHEAD = IV_SIZE + TAG_SIZE

# Bits of r that Poly1305 requires to be zero (the "clamp").
_R_MASK = bytes([0xFF, 0xFF, 0xFF, 0x0F, 0xFC, 0xFF, 0xFF, 0x0F,
                 0xFC, 0xFF, 0xFF, 0x0F, 0xFC, 0xFF, 0xFF, 0x0F])


def _clamp(r: bytes) -> bytes:
    return bytes(a & b for a, b in zip(r, _R_MASK))


@dataclass(frozen=True)
class Key:
    """A restic key: AES-256 ``encrypt`` key plus Poly1305-AES ``mac_k`` and ``mac_r``."""

    encrypt_key: bytes
    mac_k: bytes
    mac_r: bytes

    def __post_init__(self) -> None:
        if len(self.encrypt_key) != 32 or len(self.mac_k) != 16 or len(self.mac_r) != 16:
            raise ValueError("key parts must be 32, 16 and 16 bytes")
        object.__setattr__(self, "_clamped_r", _clamp(self.mac_r))
        object.__setattr__(self, "_aes", algorithms.AES(self.encrypt_key))
        object.__setattr__(self, "_mac_cipher", Cipher(algorithms.AES(self.mac_k), modes.ECB()))
        object.__setattr__(self, "_local", threading.local())

    def __reduce__(self) -> tuple[type[Key], tuple[bytes, bytes, bytes]]:
        # the cipher objects made in __post_init__ do not pickle: rebuild them
        return (Key, (self.encrypt_key, self.mac_k, self.mac_r))

    @classmethod
    def random(cls) -> Key:
        return cls(os.urandom(32), os.urandom(16), os.urandom(16))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Key:
        """From 64 bytes ``encrypt || k || r`` (the layout of scrypt's output)."""
        return cls(raw[:32], raw[32:48], raw[48:64])

    def _poly_key(self, iv: bytes) -> bytes:
        """The one-time Poly1305 key for ``iv``: ``clamp(r) || AES-128(k, IV)``. ECB keeps
        no state between blocks, so one encryptor per thread serves every call."""
        ecb = getattr(self._local, "ecb", None)  # type: ignore[attr-defined]
        if ecb is None:
            ecb = self._local.ecb = self._mac_cipher.encryptor()  # type: ignore[attr-defined]
        return self._clamped_r + ecb.update(iv)  # type: ignore[no-any-return, attr-defined]

    def _tag(self, iv: bytes, ciphertext: bytes | memoryview) -> bytes:
        return Poly1305.generate_tag(self._poly_key(iv), ciphertext)

    def encrypt(self, plaintext: bytes | memoryview) -> bytes:
        """``IV || ciphertext || tag`` with a fresh random IV."""
        iv = os.urandom(IV_SIZE)
        while iv == bytes(IV_SIZE):  # restic rejects an all-zero IV
            iv = os.urandom(IV_SIZE)
        n = len(plaintext)
        # One buffer for IV || ciphertext || tag: no intermediate copies of the blob.
        out = bytearray(IV_SIZE + n + TAG_SIZE + 15)  # update_into wants block-size slack
        out[:IV_SIZE] = iv
        view = memoryview(out)
        enc = Cipher(self._aes, modes.CTR(iv)).encryptor()  # type: ignore[attr-defined]
        enc.update_into(plaintext, view[IV_SIZE:IV_SIZE + n + 15])
        enc.finalize()
        out[IV_SIZE + n:IV_SIZE + n + TAG_SIZE] = self._tag(iv, view[IV_SIZE:IV_SIZE + n])
        view.release()
        del out[IV_SIZE + n + TAG_SIZE:]
        return bytes(out) if n < 4096 else out  # type: ignore[return-value]  # bytes-like

    def decrypt(self, data: bytes | memoryview, what: str = "data") -> bytes:
        """Verify the tag and decrypt; :class:`IntegrityError` naming ``what`` otherwise."""
        view = memoryview(data)
        if len(view) < OVERHEAD:
            raise IntegrityError(f"{what}: ciphertext too short ({len(view)} bytes)")
        iv = bytes(view[:IV_SIZE])
        ct = view[IV_SIZE:-TAG_SIZE]
        tag = bytes(view[-TAG_SIZE:])
        try:
            Poly1305.verify_tag(self._poly_key(iv), ct, tag)
        except InvalidSignature:
            raise IntegrityError(f"{what}: MAC check failed (wrong key or damaged data)") from None
        dec = Cipher(self._aes, modes.CTR(iv)).decryptor()  # type: ignore[attr-defined]
        return dec.update(ct) + dec.finalize()

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one local ``purpose`` (e.g. authenticating a state file),
        independent of the key's own uses: HMAC-SHA256 over the purpose, keyed by all
        three parts. Only someone holding the master key can compute it.

        >>> k = Key(bytes(32), bytes(16), bytes(16))
        >>> len(k.derive("a")), k.derive("a") == k.derive("b")
        (32, False)
        """
        secret = self.encrypt_key + self.mac_k + self.mac_r
        return hmac.new(secret, b"corestate/" + purpose.encode(), hashlib.sha256).digest()

    def to_json(self) -> dict[str, object]:
        """The master-key JSON object stored inside a key file."""
        b64 = base64.standard_b64encode
        return {
            "mac": {"k": b64(self.mac_k).decode(), "r": b64(self.mac_r).decode()},
            "encrypt": b64(self.encrypt_key).decode(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Key:
        b64d = base64.standard_b64decode
        mac = obj["mac"]
        assert isinstance(mac, dict)
        return cls(b64d(str(obj["encrypt"])), b64d(str(mac["k"])), b64d(str(mac["r"])))
