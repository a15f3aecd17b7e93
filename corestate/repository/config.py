"""The repository ``config`` file and its chunker polynomial.

``config`` is the one file not named by its hash. It is encrypted with the master key and
never compressed; its JSON is ``{"version": 2, "id": <64 hex>, "chunker_polynomial":
<hex>}``. Version 2 allows compressed blobs. The *chunker polynomial* is only used by
restic's own Rabin chunker, but restic refuses a repository whose polynomial is not an
irreducible polynomial of degree 53 over GF(2), so we draw one.

Polynomials over GF(2) are Python ints: bit *i* is the coefficient of x^i.

>>> is_irreducible(0b111)      # x^2 + x + 1
True
>>> is_irreducible(0b101)      # x^2 + 1 = (x + 1)^2
False
>>> p = random_polynomial(random.Random(7))
>>> p.bit_length() - 1, is_irreducible(p)
(53, True)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import orjson

from corestate.errors import IntegrityError, PermanentError

REPO_VERSION = 2
POLY_DEGREE = 53


def _mulmod(a: int, b: int, mod: int) -> int:
    deg = mod.bit_length() - 1
    result = 0
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if (a >> deg) & 1:
            a ^= mod
    return result


def _gcd(a: int, b: int) -> int:
    while b:
        while a and a.bit_length() >= b.bit_length():
            a ^= b << (a.bit_length() - b.bit_length())
        a, b = b, a
    return a


def is_irreducible(poly: int) -> bool:
    """Ben-Or's test: ``poly`` has no factor of degree <= deg/2."""
    deg = poly.bit_length() - 1
    x_power = 0b10  # x
    for _ in range(deg // 2):
        x_power = _mulmod(x_power, x_power, poly)  # x^(2^i) mod poly
        if _gcd(poly, x_power ^ 0b10) != 1:
            return False
    return True


def random_polynomial(rng: random.Random | None = None) -> int:
    """A random irreducible polynomial of degree 53 (constant term set)."""
    rng = rng or random.Random(os.urandom(16))
    while True:
        poly = (1 << POLY_DEGREE) | rng.getrandbits(POLY_DEGREE) | 1
        if is_irreducible(poly):
            return poly


@dataclass(frozen=True)
class Config:
    """The parsed ``config`` file."""

    version: int
    id: str
    chunker_polynomial: int

    @classmethod
    def new(cls) -> Config:
        return cls(REPO_VERSION, os.urandom(32).hex(), random_polynomial())

    def to_bytes(self) -> bytes:
        return orjson.dumps({"version": self.version, "id": self.id,
                             "chunker_polynomial": format(self.chunker_polynomial, "x")})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Config:
        try:
            doc = orjson.loads(raw)
            cfg = cls(int(doc["version"]), str(doc["id"]), int(str(doc["chunker_polynomial"]), 16))
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            raise IntegrityError("repository config is damaged") from None
        if cfg.version not in (1, 2):
            raise PermanentError(f"unsupported repository version {cfg.version}")
        return cfg
