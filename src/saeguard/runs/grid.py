"""One resumable grid runner: sweeps, the comparison and later experiments evaluate their grids here.

A grid is a list of points, each with a unique string ``key``. Every finished
point becomes a record in a JSONL file (one JSON object per line, the whole file
rewritten atomically after each point) that carries the ``context`` fingerprint
of the setup that made it (model, data, settings). Rerunning on the same file
skips the keys already recorded; a file holding records of another setup is
refused; a torn last line (a write interrupted by a crash) is ignored, so that
point is computed again.

Points that share expensive work (e.g. one selection + calibration fit for every
clamp and gate percentile) form a group: ``prepare`` runs once per group,
``evaluate`` once per point. A :class:`~saeguard.errors.SaeguardError` raised by
either (e.g. "fewer candidates than n_features") becomes an error record of the
affected points, made by ``failed``, and the run goes on; any other exception
propagates. Typical use::

    records = RecordFile.open(path, MyRecord.from_dict, context=fingerprint, what="sweep")
    counts = run_grid(records, points, evaluate=..., failed=..., prepare=..., group=...)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

from saeguard.errors import SaeguardError, require
from saeguard.io import read_jsonl_records, write_jsonl
from saeguard.progress import progress_bar

__all__ = ["GridCounts", "GridPoint", "GridRecord", "RecordFile", "key_of", "run_grid"]


class GridPoint(Protocol):
    """A grid point: anything with a ``key`` unique within its grid (e.g. ``"n=20,clamp=10x"``)."""

    @property
    def key(self) -> str: ...


class GridRecord(Protocol):
    """A record of one point: its ``key`` and the ``context`` fingerprint of the setup that made it."""

    @property
    def key(self) -> str: ...

    @property
    def context(self) -> str: ...


P = TypeVar("P", bound=GridPoint)
R = TypeVar("R", bound=GridRecord)
S = TypeVar("S")


@dataclass
class RecordFile(Generic[R]):
    """The records of one resumable run: a JSONL file of records made under one ``context``.

    Build it with :meth:`open`. ``records`` keeps the file's order; ``done`` maps
    each key to its record. Records that are not grid points (e.g. the unguarded
    base) can be saved here too.
    """

    path: Path
    context: str
    records: list[R] = field(default_factory=list)
    done: dict[str, R] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        path: str | Path,
        parse: Callable[[dict[str, Any]], R],
        *,
        context: str,
        what: str,
        fix: str = "write to a new file or delete it",
    ) -> RecordFile[R]:
        """Read ``path`` (absent: no records yet) for a run of setup ``context``.

        Args:
            parse: one JSON object to a record; ``TypeError``/``KeyError``/``ValueError``
                mark a line that is not a record.
            what: the kind of run, for messages ("sweep", "comparison").
            fix: what the user should do when the file holds another setup's records.

        Raises:
            SaeguardError: a record of another context (one line: the file, the reason,
                ``fix``), or a line other than the last that is not a record.
        """
        path = Path(path).expanduser()
        records = read_jsonl_records(path, parse, what)
        require(
            all(r.context == context for r in records),
            f"{path} holds a {what} of another setup (model, SAE, data, questions or settings differ): {fix}",
        )
        return cls(path, context, records, {r.key: r for r in records})

    def pending(self, points: Sequence[P]) -> list[P]:
        """The points of ``points`` not recorded yet, in order.

        Raises:
            SaeguardError: two points share a key (a grid axis repeats a value).
        """
        repeated = [key for key, n in Counter(p.key for p in points).items() if n > 1]
        require(not repeated, f"the grid repeats {', '.join(repeated)}: remove the duplicate values")
        return [p for p in points if p.key not in self.done]

    def save(self, record: R) -> None:
        """Append ``record`` and rewrite the file atomically (a crash leaves the previous file)."""
        self.records.append(record)
        self.done[record.key] = record
        write_jsonl(self.path, self.records)


@dataclass(frozen=True)
class GridCounts:
    """What one :func:`run_grid` call did."""

    computed: int  # points evaluated by this call (error records included)
    skipped: int  # points already in the file


def run_grid(
    records: RecordFile[R],
    points: Sequence[P],
    *,
    evaluate: Callable[[P, S], R],
    failed: Callable[[P, str], R],
    prepare: Callable[[list[P]], S] | None = None,
    group: Callable[[P], Hashable] | None = None,
    description: str = "grid",
    show_progress: bool = True,
) -> GridCounts:
    """Evaluate every point of ``points`` not yet in ``records``, saving each record as it is made.

    Pending points are grouped by ``group(point)`` (default: each point alone), groups
    in the order their first point appears. Per group, ``prepare(members)`` runs once and
    its result is passed to ``evaluate(point, prepared)`` for each member (``None``
    without ``prepare``). A ``SaeguardError`` from ``prepare`` is recorded on every member
    of the group, one from ``evaluate`` on its point, both through ``failed(point, message)``.

    Raises:
        SaeguardError: two points share a key (before anything runs), or ``evaluate``/``failed``
            returned a record whose key is not its point's.
        Exception: anything but ``SaeguardError`` raised by the callbacks, unchanged (the
            records saved so far stay on disk, so a rerun resumes).
    """
    todo = records.pending(points)
    groups: dict[Hashable, list[P]] = {}
    for point in todo:
        groups.setdefault(group(point) if group is not None else point.key, []).append(point)
    with progress_bar(description, total=len(todo), enabled=show_progress) as advance:

        def save(point: P, record: R) -> None:
            require(
                record.key == point.key,
                f"the record of {point.key!r} came back as {record.key!r}: records carry their point's key",
            )
            records.save(record)
            advance(1)

        for members in groups.values():
            try:
                prepared = prepare(members) if prepare is not None else cast(S, None)
            except SaeguardError as error:
                for point in members:
                    save(point, failed(point, str(error)))
                continue
            for point in members:
                try:
                    record = evaluate(point, prepared)
                except SaeguardError as error:
                    record = failed(point, str(error))
                save(point, record)
    return GridCounts(computed=len(todo), skipped=len(points) - len(todo))


def key_of(method: str, params: Mapping[str, Any]) -> str:
    """``method:name=value,...`` with floats in ``%g`` form: the key of a parameter dict."""
    values = ",".join(f"{k}={f'{v:g}' if isinstance(v, float) else v}" for k, v in params.items())
    return f"{method}:{values}"
