"""A PostgreSQL connection that speaks the records' one SQL dialect (psycopg 3).

The records modules write their SQL once, in SQLite's parameter styles (``?``, ``?1``,
``:name``); this adapter rewrites the placeholders for psycopg (``%s``, ``%(name)s``) and returns
rows that behave like ``sqlite3.Row`` (by index, by column name, ``dict(row)``, iteration), so
`controller.records` has one body of SQL for both backends. The few functions the SQL uses that
PostgreSQL lacks (``instr``, ``json_extract``, ``json_type``) are created by the PostgreSQL
migrations (`controller.records.pg_schema`).

psycopg is imported here only: a clinic on the embedded SQLite file never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import RowMaker
from psycopg.types.string import StrDumper

# Connecting gives up after this long: a database that cannot be reached must turn into a
# records refusal (or the spool) quickly, not a hung session worker.
CONNECT_TIMEOUT_S = 3
# TCP keepalive: a server that vanished without closing the connection is noticed in seconds.
# Data sent and not acknowledged for this long ends the connection (keepalives only cover an
# idle one): a server that vanished mid-query becomes "out of reach", not a hang.
TCP_USER_TIMEOUT_MS = 10_000
# A write waits at most this long for the shared write lock (another room's writer stuck on a
# vanished host holds it until the server notices): then "out of reach", and the journal waits.
LOCK_TIMEOUT_MS = 10_000
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 2

_TOKEN = re.compile(r"'(?:[^']|'')*'|\?(\d*)|(?<!:):([A-Za-z_]\w*)|%")


class Row(tuple[Any, ...]):
    """A result row: by index, by column name, `keys()`, and `dict(row)` like sqlite3.Row."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = tuple(d.name for d in cursor.description or ())

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._names = names
        return row
    return make


def translate(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
              many: bool = False) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
    """SQLite placeholders to psycopg's: ``?`` → ``%s``; ``?N`` and ``:name`` → named
    parameters; a literal ``%`` is doubled. Text inside quotes is left alone. A statement
    without parameters is sent as it is (psycopg reads no placeholders in it).

    A None parameter is written as ``NULL`` into the statement (not for `many`): PostgreSQL
    cannot tell the type of a NULL parameter in ``? IS NULL``, where SQLite needs none."""
    if params is None and not many:
        return sql, None
    positional: list[Any] = []
    named: dict[str, Any] = {}
    index = 0

    def swap(m: re.Match[str]) -> str:
        nonlocal index
        text = m.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "%":
            return "%%"
        if text.startswith("?"):
            if many:
                return "%s"
            assert isinstance(params, Sequence)
            if m.group(1):
                key, value = f"p{m.group(1)}", params[int(m.group(1)) - 1]
            else:
                key, value = f"p_{index}", params[index]
                index += 1
        elif isinstance(params, Mapping):
            key, value = m.group(2), params[m.group(2)]
        else:
            return text  # ":name" with positional parameters: a cast or a literal, keep it
        if value is None:
            return "NULL"
        named[key] = value
        return f"%({key})s"
    out = _TOKEN.sub(swap, sql)
    if many:
        return out, None
    return out, named if named else positional


def _options(url: str) -> str:
    """The URL's own server options (a search path, say) with modctl's lock timeout added."""
    own = conninfo_to_dict(url).get("options") or ""
    return f"{own} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()


class PgCursor:
    """The part of a sqlite3 cursor the records use: iteration and fetches."""

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Row]:
        # Row by row: a verify over a million telemetry rows must not hold them all.
        return iter(self._cursor) if self._cursor.description else iter(())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class PgConnection:
    """One psycopg connection in autocommit mode: transactions are opened and closed with
    explicit BEGIN/COMMIT statements, as on the SQLite connection."""

    def __init__(self, url: str) -> None:
        self._conn: psycopg.Connection[Row] = psycopg.connect(
            url, autocommit=True, row_factory=_row_factory, connect_timeout=CONNECT_TIMEOUT_S,
            application_name="modctl", keepalives=1, keepalives_idle=KEEPALIVE_IDLE_S,
            keepalives_interval=KEEPALIVE_INTERVAL_S, keepalives_count=KEEPALIVE_COUNT,
            tcp_user_timeout=TCP_USER_TIMEOUT_MS, options=_options(url))
        # Text parameters are sent as `text` (psycopg's default leaves their type to the
        # server, which cannot tell it in `? IS NULL OR col = ?`).
        self._conn.adapters.register_dumper(str, StrDumper)

    def execute(self, sql: str,
                params: Sequence[Any] | Mapping[str, Any] | None = None) -> PgCursor:
        query, args = translate(sql, params)
        return PgCursor(self._conn.execute(query, args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, _ = translate(sql, None, many=True)
        with self._conn.cursor() as cursor:
            cursor.executemany(query, list(rows))

    @property
    def in_transaction(self) -> bool:
        status = self._conn.info.transaction_status
        return status != psycopg.pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    def close(self) -> None:
        self._conn.close()
