"""A small reader for R's serialization format, enough to pull text out of R packages.

Debian's ``r-cran-janeaustenr`` stores its novels in an R lazy-load database
(``data/Rdata.rdx`` index + ``data/Rdata.rdb`` blobs). Installing R just to read
six character vectors is heavy, so this module decodes the XDR ("X\\n") form of
R serialization for the object kinds that data packages use: atomic vectors,
lists, pairlists, symbols and attributes. Environments, closures and byte code
raise ``ValueError``; we never need them.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP type codes (R internals, "serialize.c").
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP = 0, 1, 2, 9, 10
INTSXP, REALSXP, CPLXSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP = 13, 14, 15, 16, 19, 20, 24
ALTREP_SXP, ATTRLISTSXP, EMPTYENV_SXP, BASEENV_SXP = 238, 239, 242, 241
GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 253, 254, 255
_NA_INT = -(2**31)


@dataclass
class RObject:
    """An R value: ``value`` is a Python list (vectors) or dict (pairlists); plus attributes."""

    kind: int
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str] | None:
        """The ``names`` attribute as plain strings, if present."""
        names = self.attributes.get("names")
        return list(names.value) if isinstance(names, RObject) else None


class _Reader:
    """Cursor over one XDR-serialized object (big-endian ints/doubles)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated R serialization stream")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two 32-bit halves
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self._take(2) != b"X\n":
            raise ValueError("only the XDR R serialization format is supported")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self._take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind == NILVALUE_SXP:
            return None
        if kind in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP):
            return RObject(kind, None)
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name  # symbols decode to their name string
        if kind in (LISTSXP, ATTRLISTSXP):
            return self._pairlist(kind, has_attr, has_tag)
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self._take(n).decode("utf-8", errors="replace")
        if kind == ALTREP_SXP:
            return self._altrep()
        obj = self._vector(kind)
        if has_attr:
            obj.attributes = self._attributes()
        return obj

    def _pairlist(self, kind: int, has_attr: bool, has_tag: bool) -> RObject:
        """A pairlist is a linked list; decode it iteratively into an ordered dict."""
        out: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        position = 0
        while True:
            if has_attr:
                cell_attrs = self._attributes()
                attrs = attrs or cell_attrs
            tag = self.item() if has_tag else None
            out[str(tag) if tag is not None else f"[{position}]"] = self.item()
            position += 1
            flags = self.int()
            nxt = flags & 0xFF
            if nxt == NILVALUE_SXP:
                return RObject(kind, out, attrs)
            if nxt not in (LISTSXP, ATTRLISTSXP):
                self.pos -= 4
                tail = self.item()
                out["[tail]"] = tail
                return RObject(kind, out, attrs)
            has_attr = bool(flags & (1 << 9))
            has_tag = bool(flags & (1 << 10))

    def _attributes(self) -> dict[str, Any]:
        attrs = self.item()
        return dict(attrs.value) if isinstance(attrs, RObject) else {}

    def _vector(self, kind: int) -> RObject:
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = struct.unpack(f">{n}i", self._take(4 * n))
            return RObject(kind, [None if v == _NA_INT else v for v in values])
        if kind == REALSXP:
            n = self.length()
            return RObject(kind, list(struct.unpack(f">{n}d", self._take(8 * n))))
        if kind == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self._take(16 * n))
            return RObject(kind, [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)])
        if kind == RAWSXP:
            return RObject(kind, self._take(self.length()))
        if kind in (STRSXP, VECSXP, EXPRSXP):
            n = self.length()
            return RObject(kind, [self.item() for _ in range(n)])
        if kind == NILSXP:
            return RObject(kind, None)
        raise ValueError(f"R object type {kind} is not supported by this reader")

    def _altrep(self) -> RObject:
        """Expand the ALTREP classes R writes for compact sequences and wrappers."""
        info = self.item()
        state = self.item()
        attrs = self.item()
        cls = next(iter(info.value.values())) if isinstance(info, RObject) else None
        if cls == "compact_intseq" or cls == "compact_realseq":
            n, start, step = (int(v) for v in state.value[:3])
            kind = INTSXP if cls == "compact_intseq" else REALSXP
            obj = RObject(kind, [start + i * step for i in range(n)])
        elif isinstance(cls, str) and cls.startswith("wrap_"):
            obj = state.value[0]
        elif cls == "deferred_string":
            source = next(iter(state.value.values()))
            obj = RObject(STRSXP, [str(v) for v in source.value])
        else:
            raise ValueError(f"ALTREP class {cls!r} is not supported by this reader")
        if isinstance(attrs, RObject):
            obj.attributes = dict(attrs.value)
        return obj


def unserialize(data: bytes) -> Any:
    """Decode one serialized R object (already decompressed)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(data: bytes) -> bytes:
    """Undo the whole-file compression R uses for .rds/.rda/.rdx files."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rds(path: Path) -> Any:
    """Read an ``.rds``-style file (one serialized object, optionally compressed)."""
    return unserialize(_decompress(Path(path).read_bytes()))


def _lazyload_blob(blob: bytes) -> bytes:
    """Decompress one lazy-load record: 4-byte length, then zlib, or a typed xz/bzip2 stream."""
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    kind = body[:1]
    if kind == b"Z":
        out = lzma.decompress(body[1:])
    elif kind == b"2":
        out = bz2.decompress(body[1:])
    elif kind == b"0":
        out = body[1:]
    else:
        out = zlib.decompress(body)
    if len(out) != size:
        raise ValueError("R lazy-load record has the wrong length")
    return out


def read_lazyload(rdx: Path, rdb: Path) -> dict[str, Any]:
    """Read every variable of an R lazy-load database (``name.rdx`` + ``name.rdb``)."""
    index = read_rds(rdx)
    variables = index.value[index.names().index("variables")]
    blob = Path(rdb).read_bytes()
    out: dict[str, Any] = {}
    for name, where in zip(variables.names() or [], variables.value, strict=True):
        offset, length = (int(v) for v in where.value[:2])
        out[name] = unserialize(_lazyload_blob(blob[offset : offset + length]))
    return out
