"""Features on crafted data: content measures, type sniffing, and window aggregation."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import pytest

from corestate.models import magic
from corestate.models.features import FEATURE_NAMES, FEATURES, FeatureConfig, FeatureExtractor, SimpleBatch
from corestate.models.sketch import (Sample, SketchCache, compress_ratio, dedup_miss, read_sample,
                                     shannon_entropy, similarity, sketch_of)

WORDS = b"the budget meeting moved to thursday; please review the draft report before then. "


def text(n: int, seed: int = 0) -> bytes:
    import random

    rng = random.Random(seed)
    words = WORDS.split()
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(words, k=12)) + b"\n"
    return bytes(out[:n])


def docx(body: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", body)
    return buf.getvalue()


def write(p: Path, data: bytes) -> bytes:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return os.fsencode(p)


def modified(*paths: bytes) -> SimpleBatch:
    return SimpleBatch({p: {"modify", "close_write"} for p in paths})


def extractor(root: Path, **config: object) -> FeatureExtractor:
    fx = FeatureExtractor(FeatureConfig(**config))  # type: ignore[arg-type]
    fx.prime([os.fsencode(root)])
    return fx


# -- content measures ------------------------------------------------------------------

def test_entropy_of_zeros_is_zero_and_of_random_data_near_eight():
    assert shannon_entropy(bytes(65536)) == 0.0
    assert shannon_entropy(os.urandom(65536)) > 7.99
    assert 3.5 < shannon_entropy(text(65536)) < 5.0
    assert shannon_entropy(b"") == 0.0


def test_compression_ratio_separates_compressible_from_random():
    assert compress_ratio(bytes(65536)) < 0.01
    assert compress_ratio(text(65536)) < 0.3
    assert compress_ratio(os.urandom(65536)) > 0.99


def test_sample_reads_head_and_middle_only(tmp_path):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.write(b"H" * 65536)
        f.seek(10 * 2**20)
        f.write(b"M" * 65536)
        f.seek(20 * 2**20)
        f.write(b"T")
    s = read_sample(os.fsencode(big))
    assert s is not None and s.size == 20 * 2**20 + 1
    assert len(s) == 2 * 65536
    assert s.head == b"H" * 65536 and s.middle == b"M" * 65536
    assert s.tail is not None and len(s.tail) == 4096 and s.tail.endswith(b"\0T")
    assert read_sample(os.fsencode(tmp_path)) is None  # not a regular file
    assert read_sample(os.fsencode(tmp_path / "gone")) is None


def test_similarity_survives_an_insertion_that_defeats_block_dedup():
    old = text(60000, seed=1)
    new = old[:1000] + b"A freshly inserted sentence, shifting all that follows.\n" + old[1000:]
    a, b = sketch_of(Sample(old, b"", len(old))), sketch_of(Sample(new, b"", len(new)))
    assert similarity(b, a) > 0.85
    assert dedup_miss(b, a) > 0.9  # every 4 KiB block after the insertion moved
    enc = sketch_of(Sample(os.urandom(len(old)), b"", len(old)))
    assert similarity(enc, a) < 0.05 and dedup_miss(enc, a) == 1.0
    assert similarity(a, a) == 1.0 and dedup_miss(a, a) == 0.0


def test_sketch_cache_is_bounded_lru():
    cache = SketchCache(capacity=3)
    sk = sketch_of(Sample(b"x" * 100, b"", 100))
    for name in (b"a", b"b", b"c"):
        cache.put(name, sk)
    assert cache.get(b"a") is sk  # a becomes most recent
    cache.put(b"d", sk)
    assert len(cache) == 3 and cache.get(b"b") is None and cache.get(b"a") is sk
    other = sketch_of(Sample(b"y" * 100, b"", 100))
    cache.put(b"a", other, only_if_absent=True)
    assert cache.get(b"a") is sk


# -- types ---------------------------------------------------------------------------

def test_magic_types_and_suffix_promises():
    assert magic.sniff(b"%PDF-1.7\n") == "pdf"
    assert magic.sniff(docx(b"<w/>")) == "zip"
    assert magic.sniff(gzip.compress(b"log")) == "gzip"
    assert magic.sniff(b"\xff\xd8\xff\xe0" + os.urandom(100)) == "jpeg"
    assert magic.sniff(text(4000)) == "text"
    assert magic.sniff(bytes(range(256))) == "unknown"
    assert magic.mismatch(b"/a/letter.docx", "unknown") and not magic.mismatch(b"/a/letter.docx", "zip")
    assert not magic.mismatch(b"/a/blob.bin", "unknown")  # .bin promises nothing
    assert magic.suffix_of(b"/a/x.pdf.locked") == ".locked" and magic.suffix_of(b"/a/.bashrc") == ""
    assert not magic.is_known_suffix(".locked") and magic.is_known_suffix(".docx")
    assert magic.is_known_suffix(".1") and magic.is_temporary(".tmp4711")


# -- windows -------------------------------------------------------------------------

def test_feature_vector_has_every_documented_feature_within_its_range(tmp_path):
    p = write(tmp_path / "notes.txt", text(30000))
    fx = extractor(tmp_path)
    write(tmp_path / "notes.txt", os.urandom(30000))
    x = fx.observe(modified(p), now=10.0).features()
    assert tuple(x) == FEATURE_NAMES
    for f in FEATURES:
        assert f.low <= x[f.name] <= f.high, f.name


def test_in_place_encryption_shows_type_change_entropy_gain_and_lost_similarity(tmp_path):
    pdf = write(tmp_path / "paper.pdf", b"%PDF-1.7\n" + text(50000))
    txt = write(tmp_path / "notes.txt", text(40000, seed=2))
    fx = extractor(tmp_path)
    write(tmp_path / "paper.pdf", os.urandom(50009))
    write(tmp_path / "notes.txt", os.urandom(40000))
    x = fx.observe(modified(pdf, txt), now=10.0).features()
    assert x["type_change_share"] == 1.0
    assert x["mismatch_share"] == 1.0
    assert x["opaque_share"] == 1.0
    assert x["entropy_gain"] > 3.0
    assert x["similarity_loss"] > 0.95 and x["dedup_miss"] == 1.0
    assert x["entropy"] > 7.9 and x["compress_ratio"] > 0.99


def test_benign_saves_keep_type_and_similarity(tmp_path):
    pdf = write(tmp_path / "paper.pdf", b"%PDF-1.7\n" + text(50000))
    txt = write(tmp_path / "notes.txt", text(40000, seed=2))
    fx = extractor(tmp_path)
    write(tmp_path / "paper.pdf", b"%PDF-1.7\n" + text(50000)[:30000] + b"new page\n" + text(20000)[:20000])
    old = (tmp_path / "notes.txt").read_bytes()
    write(tmp_path / "notes.txt", old[:500] + b"An added line.\n" + old[500:])
    x = fx.observe(modified(pdf, txt), now=10.0).features()
    assert x["type_change_share"] == 0.0 and x["mismatch_share"] == 0.0 and x["opaque_share"] == 0.0
    assert x["entropy_gain"] < 0.2
    assert x["similarity_loss"] < 0.3


def test_header_only_encryption_is_a_magic_change(tmp_path):
    pdf = write(tmp_path / "paper.pdf", b"%PDF-1.7\n" + text(200000))
    fx = extractor(tmp_path)
    with open(pdf, "r+b") as f:
        f.write(os.urandom(4096))  # first 4 KiB only
    x = fx.observe(modified(pdf), now=10.0).features()
    assert x["type_change_share"] == 1.0 and x["mismatch_share"] == 1.0
    assert x["entropy_gain"] > 3.0  # measured on the first 4 KiB
    assert x["similarity_loss"] < 0.8  # the rest is untouched: not a full replacement


def jpeg(body: bytes) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + body + b"\xff\xd9"


def ciphertext(n: int) -> bytes:
    """``n`` random bytes whose last 512 do not happen to hold the JPEG end marker (random
    data does, about once in 128 draws; such a file would look intact to any detector)."""
    while True:
        data = os.urandom(n)
        if b"\xff\xd9" not in data[-512:]:
            return data


def test_encryption_that_keeps_the_header_breaks_the_end_marker(tmp_path):
    small = write(tmp_path / "a.jpg", jpeg(os.urandom(40000)))
    big = write(tmp_path / "b.jpg", jpeg(os.urandom(300000)))  # tail read on its own
    saved = write(tmp_path / "c.jpg", jpeg(os.urandom(50000)))
    fx = extractor(tmp_path)
    for p in (small, big):  # the first 16 bytes kept, the rest encrypted: still sniffs as JPEG
        data = open(p, "rb").read()
        open(p, "r+b").write(data[:16] + ciphertext(len(data) - 16))
    write(tmp_path / "c.jpg", jpeg(os.urandom(60000)))  # re-saved: a new JPEG, intact
    w = fx.observe(modified(small, big, saved), now=10.0)
    assert {p for p, e in w.evidence.items() if e.broken} == {small, big}
    assert w.evidence[small].ftype == "jpeg" and w.evidence[small].type_changed
    assert not w.evidence[saved].type_changed and not w.evidence[saved].opaque
    assert w.features()["opaque_share"] == pytest.approx(2 / 3)


def test_a_shorter_rewrite_without_its_end_marker_is_not_broken(tmp_path):
    p = write(tmp_path / "a.jpg", jpeg(os.urandom(40000)))
    fx = extractor(tmp_path)
    write(tmp_path / "a.jpg", jpeg(os.urandom(40000))[:20000])  # still being written
    ev = fx.observe(modified(p), now=10.0).evidence[p]
    assert not ev.broken and not ev.type_changed


def test_the_latest_batch_alone_is_not_diluted_by_the_window(tmp_path):
    photo = write(tmp_path / "a.jpg", jpeg(os.urandom(40000)))
    txt = write(tmp_path / "notes.txt", text(40000))
    fx = extractor(tmp_path)
    write(tmp_path / "a.jpg", jpeg(os.urandom(40000)))  # re-saved
    fx.observe(modified(photo), now=10.0)
    write(tmp_path / "notes.txt", os.urandom(40000))
    w = fx.observe(modified(txt), now=10.1)
    assert w.latest == {txt}
    assert w.features()["type_change_share"] == 0.5
    alone = w.features(w.latest)
    assert alone["type_change_share"] == 1.0 and alone["write_rate"] < w.features()["write_rate"]


def test_rename_to_a_new_extension_is_counted_and_compared_with_the_source(tmp_path):
    src = write(tmp_path / "letter.docx", docx(text(30000)))
    fx = extractor(tmp_path)
    dest = tmp_path / "letter.docx.locked"
    write(tmp_path / "letter.docx", os.urandom(9000))
    os.rename(src, dest)
    batch = SimpleBatch({src: {"modify", "close_write", "move_from"}, os.fsencode(dest): {"move_to"}})
    w = fx.observe(batch, now=10.0)
    x = w.features()
    assert x["ext_change_rate"] > 0 and x["novel_ext_rate"] > 0 and x["rename_rate"] > 0
    assert x["derived_replace_rate"] > 0
    assert x["type_change_share"] == 1.0  # zip became unrecognisable
    assert w.paths()[0] == os.fsencode(dest)  # the most suspicious path comes first


def test_saves_from_temporary_files_and_log_rotation_are_not_extension_changes(tmp_path):
    doc = write(tmp_path / "notes.txt", text(20000))
    log = write(tmp_path / "app.log", text(20000, seed=3))
    fx = extractor(tmp_path)
    tmp = write(tmp_path / "notes.txt.tmp", text(20000)[:19000] + b"edited\n")
    os.replace(tmp, doc)
    os.replace(log, tmp_path / "app.log.1")
    gz = write(tmp_path / "app.log.1.gz", gzip.compress((tmp_path / "app.log.1").read_bytes()))
    os.unlink(tmp_path / "app.log.1")
    rotated = os.fsencode(tmp_path / "app.log.1")
    batch = SimpleBatch({tmp: {"create", "modify", "close_write", "move_from"}, doc: {"move_to"},
                         log: {"move_from"}, rotated: {"move_to", "delete"},
                         gz: {"create", "modify", "close_write"}})
    x = fx.observe(batch, now=10.0).features()
    assert x["ext_change_rate"] == 0.0 and x["novel_ext_rate"] == 0.0
    # compressing to gzip is a conversion to a recognised type, not a scramble
    assert x["type_change_share"] == 0.0 and x["entropy_gain"] == 0.0
    assert x["derived_replace_rate"] == 0.0 and x["opaque_share"] == 0.0


def test_emptying_a_file_is_not_a_type_change(tmp_path):
    log = write(tmp_path / "app.log", text(20000))
    fx = extractor(tmp_path)
    write(tmp_path / "app.log", b"")
    w = fx.observe(modified(log), now=10.0)
    x = w.features()
    assert x["type_change_share"] == 0.0 and x["mismatch_share"] == 0.0 and x["opaque_share"] == 0.0
    assert w.scrambled() == 0


def test_only_rewrites_of_existing_files_count_as_scrambled(tmp_path):
    doc = write(tmp_path / "notes.txt", text(20000))
    fx = extractor(tmp_path)
    write(tmp_path / "notes.txt", os.urandom(20000))
    weights = write(tmp_path / "weights.bin", os.urandom(20000))  # new, random, harmless
    w = fx.observe(SimpleBatch({doc: {"modify", "close_write"}, weights: {"create", "close_write"}}),
                   now=10.0)
    assert w.evidence[doc].scrambled and not w.evidence[weights].scrambled
    assert w.evidence[weights].opaque and w.scrambled() == 1


def test_encrypt_to_new_file_then_delete_is_a_derived_replacement(tmp_path):
    src = write(tmp_path / "notes.txt", text(30000))
    fx = extractor(tmp_path)
    enc = write(tmp_path / "notes.txt.enc", os.urandom(30000))
    os.unlink(src)
    x = fx.observe(SimpleBatch({enc: {"create", "modify", "close_write"}, src: {"delete"}}),
                   now=10.0).features()
    assert x["derived_replace_rate"] > 0 and x["delete_rate"] > 0 and x["create_rate"] > 0
    assert x["entropy_gain"] > 3.0  # compared with notes.txt's sketch
    assert x["opaque_share"] == 1.0 and x["novel_ext_rate"] > 0


def test_new_download_is_high_entropy_but_recognised(tmp_path):
    fx = extractor(tmp_path)
    jpg = write(tmp_path / "photo.jpg", b"\xff\xd8\xff\xe0" + os.urandom(100000))
    x = fx.observe(SimpleBatch({jpg: {"create", "modify", "close_write"}}), now=1.0).features()
    assert x["entropy"] > 7.9 and x["opaque_share"] == 0.0 and x["mismatch_share"] == 0.0
    assert x["entropy_gain"] == 0.0  # nothing to compare with


def test_directory_share_and_rates_count_files(tmp_path):
    paths = [write(tmp_path / "d" / f"f{i}.txt", text(5000, seed=i)) for i in range(8)]
    write(tmp_path / "other" / "x.txt", text(5000))
    fx = extractor(tmp_path)
    for p in paths[:6]:
        write(Path(os.fsdecode(p)), text(5000, seed=99))
    x = fx.observe(modified(*paths[:6]), now=1.0).features()
    assert x["dir_share"] == pytest.approx(6 / 8)
    assert x["write_rate"] == pytest.approx(__import__("math").log1p(6 / 2.0))


def test_sampling_is_capped_per_window(tmp_path):
    fx = extractor(tmp_path, max_files=10)
    paths = [write(tmp_path / f"f{i}.bin", os.urandom(2000)) for i in range(50)]
    w = fx.observe(SimpleBatch({p: {"create", "close_write"} for p in paths}), now=1.0)
    assert w.sampled_files == 10 and len(w.evidence) == 10
    assert len(w.created) == 50  # events are still all counted


def test_windows_close_after_their_length_and_learn_novel_suffixes(tmp_path):
    fx = extractor(tmp_path, window=2.0, novel_suffix_ttl=60.0)
    a = write(tmp_path / "a.weird", b"x" * 100)
    w1 = fx.observe(SimpleBatch({a: {"create"}}), now=100.0)
    assert fx.advance(101.0) is None and fx.advance(102.0) is w1
    assert w1.features()["novel_ext_rate"] > 0
    b = write(tmp_path / "b.weird", b"x" * 100)
    w2 = fx.observe(SimpleBatch({b: {"create"}}), now=200.0)
    assert w2 is not w1 and w2.lower_bound == 100.0  # events after the last batch taken
    assert w2.features()["novel_ext_rate"] == 0.0  # seen 100 s ago: no longer novel
