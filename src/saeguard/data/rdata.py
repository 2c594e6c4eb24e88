"""Read an R lazy-load database (``name.rdx`` + ``name.rdb``) without R.

Debian's ``r-cran-janeaustenr`` stores its novels in an R lazy-load database, the
format ``tools:::makeLazyLoadDB`` writes for a package's ``data/`` directory:

* ``name.rdx`` is one serialized R object (an ``.rds`` file, usually gzipped): a
  named list whose ``variables`` element maps each variable to ``c(offset,
  length)`` in ``name.rdb`` and whose ``compressed`` element says how records are
  compressed (``TRUE``/1 zlib, 2 bzip2, 3 xz);
* ``name.rdb`` is the records back to back; each is a 4-byte big-endian length of
  the decompressed object, then (for methods 2 and 3) a one-byte type ``Z``
  xz / ``2`` bzip2 / ``1`` zlib / ``0`` stored, then the compressed stream of one
  serialized R object.

R's serialization format itself is decoded by the ``rdata`` package (vnmabus,
PyPI); this module adds only the lazy-load index and record framing it lacks.
Reference: R sources ``src/main/serialize.c`` (``R_lazyLoadDBfetch``,
``R_decompress1/2/3``) and ``src/library/tools/R/makeLazyLoad.R``.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saeguard.errors import SaeguardError

#: What a corrupt record or stream can raise, from the decompressors or rdata's parser.
_BAD_DATA = (ValueError, RuntimeError, EOFError, IndexError, KeyError, TypeError, OSError, zlib.error)
_TYPED: dict[bytes, Callable[[bytes], bytes]] = {
    b"Z": lzma.decompress,
    b"2": bz2.decompress,
    b"1": zlib.decompress,
    b"0": bytes,
}


def unserialize(data: bytes) -> Any:
    """Decode one serialized R object (``.rds`` bytes, optionally gzip/bzip2/xz compressed).

    Returns rdata's Python form: a character/numeric/logical vector is a numpy array
    (a character vector with ``NA`` is an object array holding ``None``), a named
    list is a ``dict``, an unnamed list a ``list``. Raises ``ValueError`` or
    ``NotImplementedError`` (rdata's) on malformed or unsupported input.
    """
    import rdata  # lazy: pulls in pandas and xarray (~0.8 s), needed only for the austen source

    return rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))


def decompress_record(record: bytes, method: int) -> bytes:
    """Undo the framing of one lazy-load record: 4-byte length, then a zlib or typed stream.

    ``method`` is the index's ``compressed`` value (1 zlib; 2 or 3 a type byte first).
    Raises ``ValueError`` if the decompressed size disagrees with the header.
    """
    size = int.from_bytes(record[:4], "big")
    body = record[4:]
    if method in (2, 3):
        if body[:1] not in _TYPED:
            raise ValueError(f"unknown lazy-load record type {body[:1]!r}")
        out = _TYPED[body[:1]](body[1:])
    else:
        out = zlib.decompress(body)
    if len(out) != size:
        raise ValueError(f"lazy-load record decompressed to {len(out)} bytes, header says {size}")
    return out


def read_lazyload(rdx: Path, rdb: Path) -> dict[str, Any]:
    """Every variable of an R lazy-load database, by name, in the index's order.

    Values are in :func:`unserialize`'s Python form (e.g. a novel is a numpy array
    of ``str``, one element per line). Raises ``SaeguardError`` naming the file if
    either file is missing, truncated or not a lazy-load database.
    """
    try:
        index = unserialize(Path(rdx).read_bytes())
        method = int(index["compressed"][0])
        blob = Path(rdb).read_bytes()
        return {
            str(name): unserialize(
                decompress_record(blob[int(where[0]) : int(where[0]) + int(where[1])], method)
            )
            for name, where in index["variables"].items()
        }
    except _BAD_DATA as err:
        raise SaeguardError(
            f"cannot read the R lazy-load database {rdx} / {rdb} ({err}); "
            "run `saeguard data fetch` to replace it"
        ) from err
