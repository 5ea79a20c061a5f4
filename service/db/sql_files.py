"""Where the SQL files are: the one place that resolves the `sql` directory.

The repository keeps them in `sql/` at its top; the wheel carries that directory as
`service/sql/` (pyproject.toml maps it), read through `importlib.resources`. An editable install
or a source checkout on PYTHONPATH has no `service/sql/`: there the repository's own `sql/` is
read, so an edited migration or query is seen without reinstalling.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

# The source tree this module sits in when it is not installed from a wheel.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class SqlFilesError(Exception):
    """The SQL files the service needs are missing or unusable (a broken installation)."""


def sql_dir() -> Traversable:
    """The directory holding `migrations/`, `queries/` and `schema.sql`."""
    packaged = files("service") / "sql"
    if packaged.is_dir():
        return packaged
    # A source checkout is recognised by its pyproject.toml, so that an installed package never
    # reads some unrelated `sql` folder that happens to sit beside it in site-packages.
    source = _SOURCE_ROOT / "sql"
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and source.is_dir():
        return source
    raise SqlFilesError(
        f"the SQL files are missing: neither {packaged} (installed package) nor {source} "
        "(source checkout) is a directory; reinstall the package"
    )


def sql_files(directory: Traversable) -> list[Traversable]:
    """The `*.sql` files of a directory, by name; an error naming it if it does not exist."""
    if not directory.is_dir():
        raise SqlFilesError(f"SQL directory {directory} does not exist")
    found = [
        entry
        for entry in directory.iterdir()
        if entry.name.endswith(".sql") and not entry.name.startswith(".") and entry.is_file()
    ]
    return sorted(found, key=lambda entry: entry.name)
