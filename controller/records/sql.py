"""What the records modules need of a database connection: the part of `sqlite3.Connection`
that `controller.records.pg_conn.PgConnection` also has. Rows are read by index or column name
(`sqlite3.Row` and `pg_conn.Row`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


Row = Any
"""A result row: `sqlite3.Row` or `pg_conn.Row` (index, column name, `dict(row)`)."""
