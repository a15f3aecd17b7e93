"""File types from leading bytes ("magic"), and what a file name's suffix promises.

Terms:

- *type*: a short name for a container or encoding recognised from a file's first
  bytes: ``pdf``, ``zip`` (also docx/xlsx/odt/jar), ``jpeg``, ``png``, ``elf``, ...;
  ``text`` for data that reads as text, ``empty`` for no data, ``unknown`` for anything
  else (random-looking data, proprietary formats, *and encrypted files*).
- *suffix*: the lowercase last extension of a name, with its dot (``.docx``); ``""``
  when the name has none. Hidden files (``.bashrc``) have no suffix.
- *expected types*: the types a suffix promises (``.docx`` promises ``zip``). A file
  whose type is not among them is a *mismatch*: ransomware that encrypts in place keeps
  the name and destroys the header, so ``report.pdf`` stops starting with ``%PDF``.
- *temporary suffix*: one used by editors and downloaders for files that are renamed
  into place later (``.tmp``, ``.part``, ``.swp``); renames from them are ordinary saves.
- *end marker*: the bytes some types close a file with (JPEG's EOI, PNG's IEND chunk,
  PDF's ``%%EOF``, ZIP's end-of-central-directory record), found within the last
  bytes of the file. A file of such a type is *intact* when its tail shows the marker.
  Ransomware that keeps a file's first bytes (so that its type still sniffs right)
  encrypts the rest, end marker included.
- *known suffix*: one ordinary work produces. Ransomware marks encrypted files with a
  suffix of its own (``.locked``, ``.enc``, random letters); a suffix outside this list
  that first appeared recently is a feature (see :mod:`corestate.models.features`).

>>> sniff(b"%PDF-1.7\\n..."), sniff(b"PK\\x03\\x04rest"), sniff(b"plain words\\n"), sniff(bytes(range(256)))
('pdf', 'zip', 'text', 'unknown')
>>> suffix_of(b"/home/a/report.final.PDF"), suffix_of(b".bashrc"), suffix_of(b"Makefile")
('.pdf', '', '')
>>> mismatch(b"report.pdf", "unknown"), mismatch(b"report.pdf", "pdf"), mismatch(b"notes", "unknown")
(True, False, False)
>>> intact("pdf", b"...trailer\\n%%EOF\\n"), intact("pdf", bytes(range(200))), intact("text", b"x")
(True, False, None)
"""

from __future__ import annotations

import os

# (offset, signature, type); checked in order, first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "pdf"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),  # empty zip
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (4, b"ftyp", "mp4"),
    (0, b"\x1aE\xdf\xa3", "matroska"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"\x7fELF", "elf"),
    (0, b"MZ", "pe"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (0, b"SQLite format 3\x00", "sqlite"),
    (0, b"\xca\xfe\xba\xbe", "java-class"),
    (0, b"-----BEGIN PGP", "pgp"),
    (0, b"\x00asm", "wasm"),
    (257, b"ustar", "tar"),
)
_RIFF = {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}
# zlib streams (git loose objects, PNG chunks extracted) start with CMF 0x78 and a FLG
# byte that makes the 16-bit header a multiple of 31.
_ZLIB_FLAGS = frozenset({0x01, 0x5E, 0x9C, 0xDA})

# Types a suffix promises. Suffixes absent here promise nothing (never a mismatch).
_EXPECTED: dict[str, frozenset[str]] = {}
for _types, _suffixes in (
    ({"pdf"}, ".pdf"),
    ({"zip"}, ".zip .docx .xlsx .pptx .odt .ods .odp .jar .apk .epub .whl .xpi .nupkg"),
    ({"gzip"}, ".gz .tgz"),
    ({"bzip2"}, ".bz2 .tbz2"),
    ({"xz"}, ".xz .txz"),
    ({"zstd"}, ".zst"),
    ({"7z"}, ".7z"),
    ({"rar"}, ".rar"),
    ({"png"}, ".png"),
    ({"jpeg"}, ".jpg .jpeg .jfif"),
    ({"gif"}, ".gif"),
    ({"mp4"}, ".mp4 .m4a .m4v .mov .heic .avif .3gp"),
    ({"matroska"}, ".mkv .webm"),
    ({"ogg"}, ".ogg .oga .ogv .opus"),
    ({"flac"}, ".flac"),
    ({"webp"}, ".webp"),
    ({"wav"}, ".wav"),
    ({"tiff"}, ".tif .tiff"),
    ({"elf"}, ".o .so .ko"),
    ({"pe"}, ".exe .dll"),
    ({"ole", "zip"}, ".doc .xls .ppt .msg"),
    ({"sqlite"}, ".sqlite .sqlite3"),
    ({"java-class"}, ".class"),
    ({"text"}, ".txt .md .rst .csv .tsv .json .xml .html .htm .css .js .ts .py .c .h .cc .cpp "
               ".hpp .go .rs .java .rb .sh .yaml .yml .toml .ini .cfg .conf .log .tex .sql .svg"),
):
    for _s in _suffixes.split():
        _EXPECTED[_s] = frozenset(_types)

TEMP_SUFFIXES = frozenset(
    ".tmp .temp .part .partial .crdownload .download .swp .swx .swo .bak .old .orig .lock "
    ".new .save .sav .~tmp .kate-swp .dpkg-new .dpkg-tmp".split())

KNOWN_SUFFIXES = frozenset(_EXPECTED) | TEMP_SUFFIXES | frozenset(
    ".a .d .lo .la .obj .lib .pyc .pyo .pyd .pyi .pxd .pyx .pth .egg .typed .dist-info "
    ".mo .po .pot .in .am .ac .m4 .mk .cmake .gradle .properties .lockb .sum .mod .map "
    ".ipynb .r .jl .lua .pl .pm .php .swift .kt .scala .hs .ml .ex .exs .erl .el .vim "
    ".jsx .tsx .vue .scss .less .woff .woff2 .ttf .otf .eot .ico .bmp .svgz .psd .ai "
    ".eps .raw .cr2 .nef .dng .mp3 .aac .wma .avi .wmv .flv .mpg .mpeg .iso .img .qcow2 "
    ".vmdk .vdi .dmg .deb .rpm .pkg .msi .cab .tar .lz .lz4 .lzma .z .db .mdb .accdb "
    ".pst .ost .eml .mbox .ics .vcf .rtf .odg .key .pages .numbers .one .pub .vsd .xcf "
    ".blend .fbx .dwg .dxf .stl .ps .djvu .mobi .azw3 .chm .srt .sub .vtt .ass .cue .m3u "
    ".pem .crt .cer .der .csr .p12 .pfx .gpg .asc .sig .kdbx .ovpn .service .desktop "
    ".socket .timer .rules .env .example .sample .template .tpl .j2 .dockerfile .bat "
    ".ps1 .cmd .reg .lnk .url .webloc .plist .strings .nib .storyboard .xib .pbxproj "
    ".sln .csproj .vcxproj .props .targets .resx .dat .bin .out .idx .pack .rev .keep "
    ".gitignore .gitattributes .gitmodules .patch .diff .gcda .gcno .su .dwo .pdb "
    ".ilk .exp .manifest .res .rc .def".split())

TAIL = 4096  # bytes of a file's end that :func:`intact` looks at
# type -> (end marker, within how many last bytes: trailing padding, a ZIP comment)
_END_MARKERS: dict[str, tuple[bytes, int]] = {
    "jpeg": (b"\xff\xd9", 512),
    "png": (b"IEND\xaeB`\x82", 64),
    "pdf": (b"%%EOF", 1024),
    "zip": (b"PK\x05\x06", TAIL),
}


def intact(ftype: str, tail: bytes) -> bool | None:
    """Whether a file of type ``ftype`` whose last bytes are ``tail`` shows its type's
    end marker; None for types without one."""
    marker = _END_MARKERS.get(ftype)
    if marker is None:
        return None
    sig, within = marker
    return sig in tail[-within:]


_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D, 0x0C}


def sniff(head: bytes) -> str:
    """The type of data starting with ``head`` (pass at least the first 512 bytes).

    ``text`` means at most 5% of the first 4 KiB falls outside printable ASCII and
    UTF-8, with no NUL byte.
    """
    if not head:
        return "empty"
    for offset, signature, name in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return name
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if len(head) >= 2 and head[0] == 0x78 and head[1] in _ZLIB_FLAGS:
        return "zlib"
    return "text" if _looks_like_text(head[:4096]) else "unknown"


def _looks_like_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 4:  # a multi-byte character cut by the sample end
            return True
    odd = sum(1 for b in data if b not in _TEXT_BYTES)
    return odd <= len(data) * 0.05


def suffix_of(name: bytes | str) -> str:
    """The lowercase last extension of the final path component, with its dot."""
    base = os.path.basename(os.fsdecode(name))
    dot = base.rfind(".")
    if dot <= 0 or dot == len(base) - 1:
        return ""
    return base[dot:].lower()


def expected_types(suffix: str) -> frozenset[str] | None:
    """The types a suffix promises, or None if it promises nothing."""
    return _EXPECTED.get(suffix)


def mismatch(name: bytes | str, ftype: str) -> bool:
    """Whether a file called ``name`` whose data has type ``ftype`` breaks its suffix's
    promise. Empty files never do: they are being created."""
    expected = _EXPECTED.get(suffix_of(name))
    return expected is not None and ftype != "empty" and ftype not in expected


def is_temporary(suffix: str) -> bool:
    """Whether a suffix marks a file that is renamed into place later."""
    return suffix in TEMP_SUFFIXES or suffix.endswith("~") or suffix.startswith(".tmp")


def is_known_suffix(suffix: str) -> bool:
    """Whether ordinary work produces files with this suffix (``""`` counts as known).

    Numeric suffixes (``app.log.1``, ``chunk.0003``) are rotations and splits, known too.
    """
    return (not suffix or suffix in KNOWN_SUFFIXES or is_temporary(suffix)
            or suffix[1:].isdigit())


def recognised(ftype: str) -> bool:
    """Whether ``ftype`` names a container or encoding (not ``unknown``/``empty``)."""
    return ftype not in ("unknown", "empty")
