"""The API against its own OpenAPI document, in the suite: Schemathesis with every check and
every phase (examples, coverage, fuzzing, stateful), 5 examples per operation, against the demo
(the service with the provider simulators) on this session's PostgreSQL. `make conformance` runs
the same with 10 examples per operation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.run import run_conformance

EXAMPLES = 5


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failure(database_url: str, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.txt"
    with report.open("w") as output:
        status = run_conformance(
            max_examples=EXAMPLES, env={"DATABASE_URL": database_url}, output=output
        )
    text = report.read_text()
    assert "Stateful" in text  # every phase ran, the stateful one included
    assert status == 0, text[-6000:]
