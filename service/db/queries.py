"""Named SQL queries kept in sql/queries/*.sql, loaded once and looked up by name."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources.abc import Traversable

from service.db.sql_files import SqlFilesError, sql_dir, sql_files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class UnknownQuery(SqlFilesError):
    """A query name that no file of the queries directory defines."""


def queries_dir() -> Traversable:
    return sql_dir() / "queries"


def parse_queries(text: str) -> dict[str, str]:
    """Splits a file of `-- name: x` sections into {name: sql}."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if match.group(1) in queries:
            raise ValueError(f"query {match.group(1)!r} is defined twice")
        queries[match.group(1)] = body
    return queries


@cache
def load_queries(directory: Traversable | None = None) -> dict[str, str]:
    """All named queries of the project; a missing directory, or one without a single named
    query, is an error naming it (SqlFilesError)."""
    directory = queries_dir() if directory is None else directory
    queries: dict[str, str] = {}
    for path in sql_files(directory):
        for name, sql in parse_queries(path.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in two files")
            queries[name] = sql
    if not queries:
        raise SqlFilesError(f"no named queries (-- name: ...) in {directory}/*.sql")
    return queries


def query(name: str) -> str:
    """The SQL text of one named query."""
    try:
        return load_queries()[name]
    except KeyError:
        raise UnknownQuery(f"no query named {name!r} in {queries_dir()}/*.sql") from None
