"""Finding the SQL files, and refusing loudly to run without them (no database)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.db.sql_files as sql_files_module
from service.__main__ import main
from service.db.migrations import load_migrations
from service.db.queries import UnknownQuery, load_queries, query
from service.db.sql_files import SqlFilesError, sql_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_query_cache() -> Iterator[None]:
    """The queries are cached per process: load them anew here, and again for later tests."""
    load_queries.cache_clear()
    yield
    load_queries.cache_clear()


def installed_package(tmp_path: Path, *, with_sql: bool = True) -> Path:
    """A stand-in for site-packages/service with (or without) the SQL the wheel carries."""
    package = tmp_path / "site-packages" / "service"
    (package / "sql" if with_sql else package).mkdir(parents=True)
    return package


def test_a_source_checkout_reads_the_repository_sql() -> None:
    # The editable install of `make install` has no service/sql: it reads the top-level sql/.
    assert Path(str(sql_dir())) == REPO / "sql"
    assert len(load_migrations()) == len(list((REPO / "sql" / "migrations").glob("*.sql")))


def test_an_installed_package_reads_its_own_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = installed_package(tmp_path)
    monkeypatch.setattr(sql_files_module, "files", lambda _name: package)
    assert sql_dir() == package / "sql"


def test_no_sql_anywhere_is_an_error_naming_both_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = installed_package(tmp_path, with_sql=False)
    monkeypatch.setattr(sql_files_module, "files", lambda _name: package)
    # Installed: the package's parent is site-packages, which has no pyproject.toml.
    monkeypatch.setattr(sql_files_module, "_SOURCE_ROOT", package.parent)
    (package.parent / "sql").mkdir()  # some unrelated `sql` folder in site-packages is not used
    with pytest.raises(SqlFilesError) as raised:
        sql_dir()
    assert str(package / "sql") in str(raised.value)
    assert str(package.parent / "sql") in str(raised.value)


def test_a_missing_migrations_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SqlFilesError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_migrations(tmp_path / "nowhere")


def test_an_empty_migrations_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a migration")
    with pytest.raises(SqlFilesError, match=f"no migration files .* in {tmp_path}"):
        load_migrations(tmp_path)


def test_a_missing_or_empty_queries_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SqlFilesError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_queries(tmp_path / "nowhere")
    with pytest.raises(SqlFilesError, match=f"no named queries .* in {tmp_path}"):
        load_queries(tmp_path)
    (tmp_path / "empty.sql").write_text("-- no name here\nSELECT 1;\n")
    with pytest.raises(SqlFilesError, match=f"no named queries .* in {tmp_path}"):
        load_queries(tmp_path)


def test_an_unknown_query_names_itself_and_the_directory() -> None:
    with pytest.raises(UnknownQuery) as raised:
        query("no_such_query")
    assert "'no_such_query'" in str(raised.value)
    assert str(REPO / "sql" / "queries") in str(raised.value)
    assert not isinstance(raised.value, KeyError)


def sql_tree(root: Path, *, migrations: bool, queries: bool) -> Path:
    """An sql/ directory with the real migrations and queries, or an empty folder instead."""
    for part, keep in (("migrations", migrations), ("queries", queries)):
        (root / part).mkdir(parents=True)
        if keep:
            for source in (REPO / "sql" / part).glob("*.sql"):
                (root / part / source.name).write_text(source.read_text(encoding="utf-8"))
    return root


@pytest.mark.parametrize("command", ["migrate", "serve"])
@pytest.mark.parametrize(
    ("missing", "message"),
    [("migrations", "no migration files"), ("queries", "no named queries")],
)
@pytest.mark.usefixtures("fresh_query_cache", "logging_restored")
def test_the_command_line_refuses_to_start_without_sql_files(
    command: str,
    missing: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = installed_package(tmp_path, with_sql=False)
    sql_tree(package / "sql", migrations=missing != "migrations", queries=missing != "queries")
    monkeypatch.setattr(sql_files_module, "files", lambda _name: package)
    # Nothing listens there: the check must come before any connection is tried.
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:9/none")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("LOG_FORMAT", "console")
    assert main([command]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cannot {command}: {message}")
    assert str(package / "sql" / missing) in err
    assert len(err.splitlines()) == 1


def test_a_plain_source_checkout_on_pythonpath_reads_the_repository_sql(tmp_path: Path) -> None:
    # -S: no site-packages, so not the editable install either; only PYTHONPATH finds the code.
    out = subprocess.run(
        [sys.executable, "-S", "-c", "from service.db.sql_files import sql_dir; print(sql_dir())"],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(REPO / "sql")
