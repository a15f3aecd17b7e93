"""Benchmark corpora: deterministic source trees, generated once and cached.

Terms:

- a *kind* says what the tree looks like:
  ``mixed`` (seeded compressible text, ELF binaries copied from /usr, random data, small
  files, big files with repeated blocks), ``usr`` (real files copied from /usr/bin,
  /usr/lib and /usr/share in sorted order, up to a byte budget), ``small`` (many tiny
  files of 0-4 KiB, 100 to a directory, in nested directories) and ``flat`` (tiny
  files all in one directory);
- a *scale* says how big: ``tiny`` (a few MiB or a few hundred files: tests),
  ``quick`` (tens of MiB, ~10,000 files: a self check), ``medium`` (a few hundred MiB,
  100,000 small or 50,000 flat files) and ``full`` (~1-1.5 GiB, 300,000 small or
  200,000 flat files);
- the *pristine* corpus sits in ``DATA/corpus-<kind>-<scale>`` beside a JSON marker
  holding its parameters, file count and size; it is regenerated only when the
  parameters change. Everything but ``usr`` is a function of the seed alone; ``usr``
  depends on the machine's /usr.

>>> sorted(KINDS), SCALES
(['flat', 'mixed', 'small', 'usr'], ('tiny', 'quick', 'medium', 'full'))
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 20240601
VERSION = 2
MIB = 1 << 20
SCALES = ("tiny", "quick", "medium", "full")
DATA = Path(__file__).resolve().parent / ".data"   # git-ignored


def iter_files(root: Path) -> list[Path]:
    """All regular files below root, sorted (deterministic)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath, f) for f in sorted(filenames)
                     if stat.S_ISREG(os.lstat(os.path.join(dirpath, f)).st_mode))
    return found


def _text(rng: random.Random, vocab: list[str], size: int) -> bytes:
    words = rng.choices(vocab, k=size // 5 + 16)
    lines = (" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
    return "\n".join(lines).encode()[:size]


def _vocab(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(400)]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _randbytes(rng: random.Random, size: int) -> bytes:
    return b"".join(rng.randbytes(min(MIB, size - o)) for o in range(0, size, MIB))


def _mixed_params(scale: str) -> dict[str, Any]:
    sizes = {"tiny": (1, 1, 1, 200, 1), "quick": (12, 8, 12, 3000, 8),
             "medium": (60, 40, 60, 8000, 60), "full": (200, 100, 200, 20000, 200)}[scale]
    keys = ("text_mib", "bin_mib", "random_mib", "small_files", "big_mib")
    return {"big_count": 2, **dict(zip(keys, sizes, strict=True))}


def _generate_mixed(root: Path, p: dict[str, Any]) -> None:
    rng = random.Random(p["seed"])
    vocab = _vocab(rng)
    left, i = p["text_mib"] * MIB, 0
    while left > 0:                      # text: 1 KiB .. 4 MiB, compressible
        size = min(left, int(rng.lognormvariate(11, 1.6)) + 1024, 4 * MIB)
        _write(root / "text" / f"t{i // 100:02d}" / f"doc{i:05d}.txt", _text(rng, vocab, size))
        left, i = left - size, i + 1
    left = p["bin_mib"] * MIB            # binaries: real ELF files, sorted walk
    for src in iter_files(Path("/usr/bin")) + iter_files(Path("/usr/lib/x86_64-linux-gnu")):
        size = src.stat().st_size
        if left <= 0 or not 16 * 1024 <= size <= min(left, 32 * MIB):
            continue
        with open(src, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        dst = root / "bin" / src.relative_to("/usr")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        left -= size
    left, i = p["random_mib"] * MIB, 0
    while left > 0:                      # random: 64 KiB .. 16 MiB, incompressible
        size = min(left, rng.randint(64 * 1024, 16 * MIB))
        _write(root / "random" / f"r{i:04d}.bin", _randbytes(rng, size))
        left, i = left - size, i + 1
    for i in range(p["small_files"]):    # many small files, nested dirs
        size = rng.randint(1024, 8192)
        data = _text(rng, vocab, size) if rng.random() < 0.7 else rng.randbytes(size)
        _write(root / "small" / f"d{i % 40:02d}" / f"e{i // 40 % 25:02d}" / f"f{i:06d}.dat", data)
    pool = [rng.randbytes(MIB) for _ in range(8)]
    for k in range(p["big_count"]):      # big files: repeated 1 MiB blocks at shifted offsets
        parts: list[bytes] = [rng.randbytes(12345 * k)]
        for _ in range(p["big_mib"]):
            roll = rng.random()
            parts.append(rng.choice(pool) if roll < 0.45 else
                         _text(rng, vocab, MIB) if roll < 0.65 else rng.randbytes(MIB))
        _write(root / "big" / f"big{k}.img", b"".join(parts)[:p["big_mib"] * MIB])


def _usr_params(scale: str) -> dict[str, Any]:
    return {"budget_mib": {"tiny": 5, "quick": 100, "medium": 400, "full": 1536}[scale],
            "shares": {"/usr/bin": 0.15, "/usr/lib": 0.55, "/usr/share": 0.30}}


def _generate_usr(root: Path, p: dict[str, Any]) -> None:
    carry = 0
    for top, share in p["shares"].items():
        left = int(p["budget_mib"] * MIB * share) + carry
        for dirpath, dirnames, filenames in os.walk(top):   # followlinks=False
            dirnames.sort()
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_size > left:
                    continue
                dst = root / os.path.relpath(src, "/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                os.chmod(dst, stat.S_IMODE(st.st_mode) & 0o777)   # no setuid copies
                left -= st.st_size
            if left < 64 * 1024:
                break
        carry = max(left, 0)


def _tiny_files(root: Path, rng: random.Random, paths: list[str]) -> None:
    """0-4 KiB each, 70% text, the rest random bytes."""
    vocab = _vocab(rng)
    made: set[Path] = set()
    for rel in paths:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        size = rng.randint(0, 4096)
        path.write_bytes(_text(rng, vocab, size) if rng.random() < 0.7 else rng.randbytes(size))


def _small_params(scale: str) -> dict[str, Any]:
    return {"files": {"tiny": 1000, "quick": 10_000, "medium": 100_000, "full": 300_000}[scale]}


def _generate_small(root: Path, p: dict[str, Any]) -> None:
    # 100 files a directory, 100 directories a level: a/bb/cc/fNNNNNN
    _tiny_files(root, random.Random(p["seed"]), [
        f"a{i // 10_000:02d}/b{i // 100 % 100:02d}/f{i:06d}.dat" for i in range(p["files"])])


def _flat_params(scale: str) -> dict[str, Any]:
    return {"files": {"tiny": 500, "quick": 5000, "medium": 50_000, "full": 200_000}[scale]}


def _generate_flat(root: Path, p: dict[str, Any]) -> None:
    _tiny_files(root, random.Random(p["seed"]), [f"flat/f{i:06d}.dat" for i in range(p["files"])])


KINDS: dict[str, tuple[Callable[[str], dict[str, Any]], Callable[[Path, dict[str, Any]], None]]] = {
    "mixed": (_mixed_params, _generate_mixed),
    "usr": (_usr_params, _generate_usr),
    "small": (_small_params, _generate_small),
    "flat": (_flat_params, _generate_flat),
}


def ensure(kind: str, scale: str, data: Path = DATA) -> tuple[Path, dict[str, Any]]:
    """The pristine corpus and its marker info; generated unless cached with these parameters."""
    make_params, generate = KINDS[kind]
    params = {"kind": kind, "scale": scale, "seed": SEED, "v": VERSION, **make_params(scale)}
    name = f"corpus-{kind}-{scale}"
    root, marker = data / name, data / f"{name}.json"
    if marker.exists() and root.is_dir():
        info = json.loads(marker.read_text())
        if info.get("params") == params:
            return root, info
    print(f"[{kind}] generating the {scale} corpus in {root} ...", file=sys.stderr, flush=True)
    marker.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    generate(root, params)
    files = iter_files(root)
    info = {"params": params, "files": len(files),
            "mib": round(sum(f.stat().st_size for f in files) / MIB, 1)}
    marker.write_text(json.dumps(info, indent=1))
    return root, info
