"""Where the records live: an SQLite file (the default, one PC) or a PostgreSQL server
(several rooms sharing one database), from `--db`, `$MODCTL_DB` or the default file.

A PostgreSQL location is a ``postgresql://`` (or ``postgres://``) URL, kept as a `PgUrl` so a
`Path` never mangles it; its password never appears in a message (`PgUrl.shown`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_SCHEMES = ("postgresql://", "postgres://")


class PgUrl(str):
    """A PostgreSQL connection URL."""

    __slots__ = ()

    @property
    def shown(self) -> str:
        """The URL without its password (in the user part or a `password=` parameter), for
        messages and logs."""
        parts = urlsplit(self.raw)
        query = "&".join(p for p in parts.query.split("&")
                         if not p.lower().startswith("password="))
        if parts.password is None and query == parts.query:
            return self.raw
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit((parts.scheme, user + host, parts.path, query, parts.fragment))

    @property
    def raw(self) -> str:
        """The whole URL (password included), for connecting only."""
        return str.__str__(self)

    def __str__(self) -> str:
        return self.shown

    def __format__(self, spec: str) -> str:
        return format(self.shown, spec)

    def __repr__(self) -> str:
        return f"PgUrl({self.shown!r})"


DbTarget = Path | PgUrl
"""An SQLite file or a PostgreSQL URL."""


def is_pg(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.startswith(PG_SCHEMES)


def as_target(value: str | os.PathLike[str]) -> DbTarget:
    """`value` as a records location: a PostgreSQL URL stays text, anything else is a path."""
    if isinstance(value, PgUrl):
        return value
    if is_pg(value):
        return PgUrl(str.__str__(value))
    text = os.fspath(value)
    for scheme in PG_SCHEMES:
        # A URL that went through Path() lost a slash ("postgresql:/host/db"): it is still a
        # URL, never a file to create in the working directory.
        if text.startswith(scheme[:-1]) and not text.startswith(scheme):
            return PgUrl(scheme + text[len(scheme) - 1:])
    return Path(value).expanduser()
