"""README, Metrics and alerts: its table lists every metric of the registry, with its type and
labels, and its alert rules are docs/alerts.yml as is (the file promtool checks and tests)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[2]


def readme_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Metrics and alerts\n")
    return readme[start : readme.index("\n## ", start + 1)]


def registered() -> dict[str, tuple[str, set[str]]]:
    """{name: (type, labels)} of every metric of the registry."""
    metrics = {}
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe():
            labels = set(getattr(collector, "_labelnames", ()))
            metrics[family.name + ("_total" if family.type == "counter" else "")] = (
                family.type,
                labels,
            )
    return metrics


def test_the_readme_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = {}
    for line in readme_section().splitlines():
        match = re.match(r"^\| `(\w+)` \| (\w+) \|([^|]*)\|", line)
        if match:
            labels = set(re.findall(r"`(\w+)`", match.group(3)))
            rows[match.group(1)] = (match.group(2), labels)
    assert rows == registered()


def test_the_readme_alert_rules_are_docs_alerts_yml() -> None:
    rules = (REPO / "docs" / "alerts.yml").read_text(encoding="utf-8")
    assert "```yaml\n" + rules + "```" in readme_section()
    names = set(registered()) | {
        f"{name}_{suffix}"
        for name, (kind, _) in registered().items()
        if kind == "histogram"
        for suffix in ("bucket", "count", "sum")
    }
    metric_like = re.compile(r"_(total|seconds|backlog|state|bucket|count|sum)$|^jobs$")
    for rule in yaml.safe_load(rules)["groups"][0]["rules"]:
        # Label values in quotes are not names: drop them before reading the names.
        tokens = set(re.findall(r"[a-z_]+", re.sub(r'"[^"]*"', "", rule["expr"])))
        used = {t for t in tokens if metric_like.search(t)}
        assert used and used <= names, (rule["alert"], used - names)
