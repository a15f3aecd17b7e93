"""Workload simulator for the ransomware detector: normal work and attacks on a real
directory tree.

Terms:

- *workspace*: a directory populated with a seeded corpus that looks like a user's
  home: documents (txt, md, csv, docx/xlsx as real zip files, pdf), photos (jpeg, png),
  videos (mp4), a C project with a git directory, a Python virtualenv, logs, downloads.
  File contents carry the right leading bytes (magic) and realistic entropy: text ~4.5
  bits/byte, media and archives ~8.
- *action*: one piece of normal work, done with ordinary file operations:

  ================  ==========================================================
  edit              rewrite a text document in place with a paragraph changed
  save              save a document through a temporary file renamed over it
                    (docx/xlsx rebuilt as zip, pdf, text)
  compile           write 10-60 object files (ELF) and link a binary
  clean             delete the build directory's object files
  checkout          git checkout: replace 10-50 sources with edited versions,
                    add and delete a few, write zlib loose objects and the index
  download          a zip/jpeg/mp4/pdf written as ``name.part``, then renamed
  log               append lines to a log; now and then rotate it (rename,
                    gzip to ``app.log.1.gz``, delete the uncompressed copy)
  copy              bulk-copy 10-40 files to a new backup directory
  install           package install: a wheel downloaded, 30-120 files extracted
                    (py, pyc, so, json, metadata, sometimes random .bin data)
  photos            import 3-12 new jpegs
  tidy              delete 5-20 old downloads, copies or imported photos
  ================  ==========================================================

- *day*: the actions of one simulated 24 h of normal work (:data:`DAY_PROFILE`: 900
  actions, dominated by log appends, edits and saves; :data:`DEVELOPER_PROFILE`: 900
  actions of a build-heavy host). Runners compress time: they
  run the actions back to back with short gaps, so "false alarms per simulated day"
  means per 900 actions of this mix, whatever the wall-clock time.
- *attack style*: how files are encrypted (AES-256-CTR under a seeded key):

  ==================  ========================================================
  inplace             overwrite each file with its ciphertext
  new_then_delete     write ``name.ext.enc``, then delete the original
  rename_ext          encrypt in place, then rename to ``name.ext.locked``
  partial_head        encrypt only the first 4 KiB
  partial_stripes     encrypt every other 16 KiB block
  slow                in place, 3 files a minute (the runner paces it)
  keep_names          in place, keeping the name, suffix and first 16 bytes
                      (the magic), so type checks see nothing
  ==================  ========================================================

Command line: ``python benchmarks/ransomware_sim.py populate DIR`` builds a workspace;
``... normal DIR --actions 50`` runs normal work; ``... attack DIR --style inplace``
encrypts some files. Everything is seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import shutil
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DAY_PROFILE: dict[str, int] = {
    "log": 420, "edit": 150, "save": 150, "compile": 50, "clean": 6, "checkout": 20,
    "download": 50, "copy": 10, "install": 12, "photos": 16, "tidy": 16,
}
# A host unlike the average: builds, checkouts and installs all day (tests how the prior,
# learned on DAY_PROFILE, generalises).
DEVELOPER_PROFILE: dict[str, int] = {
    "log": 300, "edit": 100, "save": 60, "compile": 200, "clean": 30, "checkout": 80,
    "download": 40, "copy": 10, "install": 40, "photos": 4, "tidy": 36,
}
ATTACK_STYLES = ("inplace", "new_then_delete", "rename_ext", "partial_head", "partial_stripes",
                 "slow", "keep_names")
SLOW_PACE = 3 / 60  # files per second for the "slow" style

_WORDS = (
    "the of and to in is for that on with as by report budget quarter project meeting "
    "customer revenue growth plan draft review design team data analysis result figure "
    "table section summary introduction method conclusion future work risk cost schedule "
    "delivery milestone action item owner status update note minutes agenda decision "
    "proposal contract invoice payment order product service market sales forecast target "
    "strategy process quality test release version change request issue bug fix feature "
    "user account password server network storage backup restore policy security access "
    "model training evaluation metric baseline experiment sample value parameter system "
    "we will should could must may can not also more less than from this these those "
    "our their its which who what when where why how all any each every some many few "
    "new old first last next previous final initial main other same different important"
).split()
_C_WORDS = ("int", "char", "void", "return", "if", "else", "for", "while", "struct", "static",
            "const", "unsigned", "size_t", "buf", "len", "ptr", "ctx", "err", "NULL", "i", "n")


def text(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        words = rng.choices(_WORDS, k=rng.randint(6, 18))
        line = " ".join(words).capitalize() + ".\n"
        if rng.random() < 0.15:
            line += "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def c_source(rng: random.Random, size: int) -> bytes:
    out: list[str] = ["#include <stdio.h>\n#include <stdlib.h>\n\n"]
    n = 40
    while n < size:
        line = "    " + " ".join(rng.choices(_C_WORDS, k=rng.randint(3, 9))) + ";\n"
        if rng.random() < 0.08:
            line = f"\nstatic int f{rng.randint(0, 99999)}(int a, int b)\n{{\n"
        elif rng.random() < 0.08:
            line = "}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def edited(rng: random.Random, data: bytes, share: float = 0.1) -> bytes:
    """``data`` with about ``share`` of its lines replaced, inserted or deleted."""
    lines = data.split(b"\n")
    if len(lines) < 3:
        return data + text(rng, 200)
    for _ in range(max(1, int(len(lines) * share))):
        i = rng.randrange(len(lines))
        r = rng.random()
        new = text(rng, rng.randint(30, 120)).rstrip(b"\n")
        if r < 0.5:
            lines[i] = new
        elif r < 0.8:
            lines.insert(i, new)
        elif len(lines) > 3:
            del lines[i]
    return b"\n".join(lines)


def zip_doc(rng: random.Random, body: bytes, kind: str = "docx") -> bytes:
    buf = io.BytesIO()
    inner = "word/document.xml" if kind == "docx" else "xl/worksheets/sheet1.xml"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", b"<?xml version='1.0'?><Types/>")
        z.writestr("_rels/.rels", b"<?xml version='1.0'?><Relationships/>")
        z.writestr(inner, b"<?xml version='1.0'?><doc>" + body + b"</doc>")
        z.writestr("docProps/core.xml", b"<?xml version='1.0'?><core>%d</core>" % rng.randint(0, 10**9))
    return buf.getvalue()


def pdf(rng: random.Random, size: int) -> bytes:
    parts = [b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"]
    n = len(parts[0])
    obj = 1
    while n < size:
        if rng.random() < 0.4:  # a compressed stream (fonts, images): high entropy
            payload = zlib.compress(rng.randbytes(rng.randint(2000, 20000)))
        else:
            payload = b"BT /F1 12 Tf (" + text(rng, rng.randint(500, 4000)) + b") Tj ET"
        chunk = b"%d 0 obj\n<< /Length %d >>\nstream\n" % (obj, len(payload)) + payload + b"\nendstream\nendobj\n"
        parts.append(chunk)
        n += len(chunk)
        obj += 1
    parts.append(b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")
    return b"".join(parts)


def jpeg(rng: random.Random, size: int) -> bytes:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + rng.randbytes(max(0, size - len(head) - 2)) + b"\xff\xd9"


def png(rng: random.Random, size: int) -> bytes:
    raw = rng.randbytes(size // 2) + bytes(size // 2)
    idat = zlib.compress(raw)
    return (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + rng.randbytes(17)
            + len(idat).to_bytes(4, "big") + b"IDAT" + idat + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def mp4(rng: random.Random, size: int) -> bytes:
    head = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    return head + rng.randbytes(max(0, size - len(head)))


def elf(rng: random.Random, size: int) -> bytes:
    head = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x01\x00\x3e\x00\x01\x00\x00\x00"
    # machine code and tables: a skewed byte distribution, about 5.5 bits/byte
    alphabet = bytes(range(0, 256, 3)) + bytes(40) + b"\x48\x89\xe5\x8b\x45\xc3\xe8\xff" * 6
    return head + bytes(rng.choices(alphabet, k=max(0, size - len(head))))


def mutated(rng: random.Random, data: bytes, share: float = 0.05) -> bytes:
    """``data`` with about ``share`` of its 64-byte runs rewritten (a rebuilt object file)."""
    out = bytearray(data)
    for _ in range(max(1, int(len(data) / 64 * share))):
        i = rng.randrange(max(1, len(out) - 64))
        out[i:i + 64] = rng.randbytes(64)
    return bytes(out)


def zip_archive(rng: random.Random, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        n = 0
        i = 0
        while n < size:
            blob = rng.randbytes(rng.randint(5000, 60000)) if rng.random() < 0.6 else text(rng, 20000)
            z.writestr(f"file{i}.dat", blob)
            n += len(blob)
            i += 1
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@dataclass
class Workspace:
    """A simulated user tree under ``root``; every choice comes from ``seed``."""

    root: Path
    seed: int = 1

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.rng = random.Random(self.seed)
        self.counter = 0

    # -- the corpus -------------------------------------------------------------------
    def populate(self, scale: float = 1.0) -> int:
        """Build the initial tree; return the number of files."""
        rng = self.rng
        r = self.root
        n = 0

        def count(k: int) -> int:
            return max(1, int(k * scale))

        for i in range(count(30)):
            write(r / "docs" / f"notes-{i}.txt", text(rng, rng.randint(2_000, 150_000)))
            n += 1
        for i in range(count(12)):
            write(r / "docs" / f"readme-{i}.md", text(rng, rng.randint(1_000, 40_000)))
            write(r / "docs" / "tables" / f"sheet-{i}.csv", text(rng, rng.randint(5_000, 90_000)).replace(b" ", b","))
            n += 2
        for i in range(count(15)):
            write(r / "docs" / "office" / f"letter-{i}.docx", zip_doc(rng, text(rng, rng.randint(5_000, 80_000))))
            write(r / "docs" / "office" / f"budget-{i}.xlsx", zip_doc(rng, text(rng, 20_000), "xlsx"))
            write(r / "docs" / "papers" / f"paper-{i}.pdf", pdf(rng, rng.randint(20_000, 400_000)))
            n += 3
        for i in range(count(20)):
            write(r / "photos" / f"IMG_{1000 + i}.jpg", jpeg(rng, rng.randint(50_000, 600_000)))
            n += 1
        for i in range(count(8)):
            write(r / "photos" / "screens" / f"shot-{i}.png", png(rng, rng.randint(20_000, 200_000)))
            n += 1
        for i in range(count(3)):
            write(r / "media" / f"clip-{i}.mp4", mp4(rng, rng.randint(1_000_000, 3_000_000)))
            n += 1
        for i in range(count(40)):
            write(r / "project" / "src" / f"mod{i}.c", c_source(rng, rng.randint(1_000, 30_000)))
            n += 1
        write(r / "project" / ".git" / "HEAD", b"ref: refs/heads/main\n")
        write(r / "project" / ".git" / "index", rng.randbytes(4000))
        write(r / "logs" / "app.log", text(rng, 20_000))
        (r / "downloads").mkdir(parents=True, exist_ok=True)
        (r / "venv" / "lib").mkdir(parents=True, exist_ok=True)
        (r / "project" / "build").mkdir(parents=True, exist_ok=True)
        return n + 3

    def files(self, under: str, suffixes: tuple[str, ...] = ()) -> list[Path]:
        base = self.root / under
        if not base.exists():
            return []
        out = [p for p in base.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes)]
        return sorted(out)

    def victims(self, n: int, rng: random.Random | None = None) -> list[Path]:
        """``n`` user files an attack would go for (documents, photos, media, sources)."""
        rng = rng or self.rng
        pool = (self.files("docs") + self.files("photos") + self.files("media")
                + self.files("project/src"))
        pool = [p for p in pool if p.stat().st_size >= 1024]
        rng.shuffle(pool)
        return pool[:n]

    # -- normal actions ---------------------------------------------------------------
    def act(self, name: str) -> None:
        self.counter += 1
        getattr(self, f"_{name}")(self.rng)

    def _edit(self, rng: random.Random) -> None:
        docs = self.files("docs", (".txt", ".md", ".csv"))
        if not docs:
            return
        p = rng.choice(docs)
        data = edited(rng, p.read_bytes(), share=rng.uniform(0.01, 0.1))
        with open(p, "r+b") as f:
            f.write(data)
            f.truncate()

    def _save(self, rng: random.Random) -> None:
        docs = self.files("docs", (".txt", ".md", ".docx", ".xlsx", ".pdf"))
        if not docs:
            return
        p = rng.choice(docs)
        if p.suffix in (".docx", ".xlsx"):
            data = zip_doc(rng, text(rng, rng.randint(5_000, 80_000)), p.suffix[1:])
        elif p.suffix == ".pdf":
            data = pdf(rng, max(20_000, int(p.stat().st_size * rng.uniform(0.9, 1.1))))
        else:
            data = edited(rng, p.read_bytes(), share=rng.uniform(0.01, 0.1))
        style = rng.random()
        tmp = p.with_name(f".{p.name}.tmp{rng.randint(1000, 9999)}" if style < 0.5 else f"{p.name}~")
        if style >= 0.5:
            tmp = (p.with_name(f".goutputstream-{rng.randint(10**5, 10**6)}") if style > 0.8
                   else p.with_suffix(p.suffix + ".tmp"))
        write(tmp, data)
        os.replace(tmp, p)

    def _compile(self, rng: random.Random) -> None:
        srcs = self.files("project/src", (".c",))
        build = self.root / "project" / "build"
        for s in rng.sample(srcs, min(len(srcs), rng.randint(10, 60))):
            o = build / (s.stem + ".o")
            data = mutated(rng, o.read_bytes()) if o.exists() else elf(rng, rng.randint(4_000, 60_000))
            write(o, data)
        app = build / "app"
        write(app, mutated(rng, app.read_bytes()) if app.exists() else elf(rng, 300_000))

    def _clean(self, rng: random.Random) -> None:
        for o in self.files("project/build"):
            o.unlink()

    def _checkout(self, rng: random.Random) -> None:
        srcs = self.files("project/src", (".c",))
        objects = self.root / "project" / ".git" / "objects"
        for s in rng.sample(srcs, min(len(srcs), rng.randint(10, 50))):
            data = edited(rng, s.read_bytes(), share=rng.uniform(0.05, 0.4))
            write(s, data)
            h = "%040x" % rng.getrandbits(160)
            write(objects / h[:2] / h[2:], zlib.compress(b"blob %d\0" % len(data) + data))
        for _ in range(rng.randint(0, 4)):
            self.counter += 1
            write(self.root / "project" / "src" / f"new{self.counter}.c", c_source(rng, rng.randint(1_000, 10_000)))
        for s in rng.sample(srcs, min(len(srcs) - 20, rng.randint(0, 2))) if len(srcs) > 25 else []:
            s.unlink()
        write(self.root / "project" / ".git" / "index", rng.randbytes(4000 + 40 * len(srcs)))
        write(self.root / "project" / ".git" / "HEAD", b"ref: refs/heads/b%d\n" % rng.randint(0, 99))

    def _download(self, rng: random.Random) -> None:
        kind = rng.choice(["zip", "jpeg", "mp4", "pdf", "zip"])
        self.counter += 1
        name, data = {
            "zip": (f"archive-{self.counter}.zip", lambda: zip_archive(rng, rng.randint(50_000, 1_500_000))),
            "jpeg": (f"photo-{self.counter}.jpg", lambda: jpeg(rng, rng.randint(50_000, 800_000))),
            "mp4": (f"video-{self.counter}.mp4", lambda: mp4(rng, rng.randint(500_000, 3_000_000))),
            "pdf": (f"paper-{self.counter}.pdf", lambda: pdf(rng, rng.randint(30_000, 500_000))),
        }[kind]
        blob = data()
        part = self.root / "downloads" / (name + rng.choice([".part", ".crdownload", ".download"]))
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            step = max(1, len(blob) // 4)
            for i in range(0, len(blob), step):
                f.write(blob[i:i + step])
                f.flush()
        os.replace(part, self.root / "downloads" / name)

    def _log(self, rng: random.Random) -> None:
        log = self.root / "logs" / "app.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            for _ in range(rng.randint(1, 20)):
                f.write(b"2026-01-01T00:00:%02d INFO worker=%d " % (rng.randint(0, 59), rng.randint(1, 8))
                        + text(rng, rng.randint(40, 160)).replace(b"\n", b" ") + b"\n")
        if log.stat().st_size > 400_000 or rng.random() < 0.01:
            rotated = log.with_name("app.log.1")
            os.replace(log, rotated)
            with open(rotated, "rb") as src, gzip.open(log.with_name("app.log.1.gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            rotated.unlink()
            write(log, b"")

    def _copy(self, rng: random.Random) -> None:
        src = self.files("docs") + self.files("photos")
        self.counter += 1
        dest = self.root / "backup" / f"copy-{self.counter}"
        dest.mkdir(parents=True, exist_ok=True)
        for p in rng.sample(src, min(len(src), rng.randint(10, 40))):
            shutil.copy2(p, dest / p.name)

    def _install(self, rng: random.Random) -> None:
        self.counter += 1
        name = f"pkg{self.counter}"
        cache = self.root / ".cache-pip" / f"{name}-1.0-py3-none-any.whl"
        write(cache, zip_archive(rng, rng.randint(50_000, 400_000)))
        site = self.root / "venv" / "lib" / name
        for i in range(rng.randint(30, 120)):
            r = rng.random()
            if r < 0.5:
                write(site / f"mod{i}.py", text(rng, rng.randint(500, 20_000)))
            elif r < 0.75:
                write(site / "__pycache__" / f"mod{i}.cpython-311.pyc",
                      b"\xa7\r\r\n" + bytes(12) + bytes(rng.choices(b"abcdefgsz\x00\x01\xe3", k=rng.randint(500, 15_000))))
            elif r < 0.85:
                write(site / f"_ext{i}.cpython-311-x86_64-linux-gnu.so", elf(rng, rng.randint(10_000, 200_000)))
            elif r < 0.95:
                write(site / f"data{i}.json", b'{"k": "' + text(rng, 2000).replace(b"\n", b" ") + b'"}')
            else:
                write(site / f"weights{i}.bin", rng.randbytes(rng.randint(10_000, 300_000)))
        dist = self.root / "venv" / "lib" / f"{name}-1.0.dist-info"
        write(dist / "METADATA", text(rng, 3000))
        write(dist / "RECORD", text(rng, 5000))

    def _photos(self, rng: random.Random) -> None:
        for _ in range(rng.randint(3, 12)):
            self.counter += 1
            write(self.root / "photos" / "import" / f"DSC{self.counter:05d}.jpg", jpeg(rng, rng.randint(100_000, 500_000)))

    def _tidy(self, rng: random.Random) -> None:
        old = self.files("downloads") + self.files("backup") + self.files("photos/import")
        for p in rng.sample(old, min(len(old), rng.randint(5, 20))):
            p.unlink()

    def day_plan(self, fraction: float = 1.0, rng: random.Random | None = None,
                 profile: dict[str, int] | None = None) -> list[str]:
        """The actions of ``fraction`` of a simulated day, in a seeded random order."""
        rng = rng or self.rng
        plan = [name for name, k in (profile or DAY_PROFILE).items()
                for _ in range(max(1, round(k * fraction)))]
        rng.shuffle(plan)
        return plan


# -- attacks -------------------------------------------------------------------------
class Encryptor:
    """AES-256-CTR under a key drawn from ``rng`` (like real ransomware, minus the ransom)."""

    def __init__(self, rng: random.Random) -> None:
        self.key = rng.randbytes(32)
        self.rng = rng

    def __call__(self, data: bytes) -> bytes:
        nonce = self.rng.randbytes(16)
        enc = Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor()
        return enc.update(data) + enc.finalize()


def attack_file(style: str, path: Path, crypt: Encryptor) -> list[Path]:
    """Attack one file in ``style``; return the paths it left behind."""
    data = path.read_bytes()
    if style in ("inplace", "slow"):
        with open(path, "r+b") as f:
            f.write(crypt(data))
        return [path]
    if style == "keep_names":
        with open(path, "r+b") as f:
            f.seek(16)
            f.write(crypt(data[16:]))
        return [path]
    if style == "new_then_delete":
        out = path.with_name(path.name + ".enc")
        write(out, crypt(data))
        path.unlink()
        return [out]
    if style == "rename_ext":
        with open(path, "r+b") as f:
            f.write(crypt(data))
        out = path.with_name(path.name + ".locked")
        os.rename(path, out)
        return [out]
    if style == "partial_head":
        with open(path, "r+b") as f:
            f.write(crypt(data[:4096]))
        return [path]
    if style == "partial_stripes":
        block = 16 * 1024
        with open(path, "r+b") as f:
            for off in range(0, len(data), 2 * block):
                f.seek(off)
                f.write(crypt(data[off:off + block]))
        return [path]
    raise ValueError(f"unknown attack style {style!r}")


def run_attack(style: str, victims: list[Path], seed: int, pace: float | None = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.time) -> Iterator[tuple[Path, float]]:
    """Attack ``victims`` one by one; yield (victim, time it was touched). ``pace`` in
    files per second (None: as fast as possible; the slow style defaults to 3/min)."""
    crypt = Encryptor(random.Random(seed))
    if pace is None and style == "slow":
        pace = SLOW_PACE
    for i, victim in enumerate(victims):
        if pace and i:
            sleep(1.0 / pace)
        t = clock()
        attack_file(style, victim, crypt)
        yield victim, t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("populate")
    p.add_argument("dir")
    p.add_argument("--scale", type=float, default=1.0)
    n = sub.add_parser("normal")
    n.add_argument("dir")
    n.add_argument("--actions", type=int, default=50)
    n.add_argument("--gap", type=float, default=1.0, help="seconds between actions")
    a = sub.add_parser("attack")
    a.add_argument("dir")
    a.add_argument("--style", choices=ATTACK_STYLES, default="inplace")
    a.add_argument("--files", type=int, default=20)
    a.add_argument("--pace", type=float, default=None, help="files per second")
    for sp in (p, n, a):
        sp.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    ws = Workspace(Path(args.dir), args.seed)
    if args.cmd == "populate":
        print(ws.populate(args.scale), "files")
    elif args.cmd == "normal":
        for name in ws.day_plan()[: args.actions]:
            ws.act(name)
            time.sleep(args.gap)
    else:
        for victim, _ in run_attack(args.style, ws.victims(args.files), args.seed, args.pace):
            print(victim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
