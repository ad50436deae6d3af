"""deploy/observability: promtool accepts the rules and the scrape config, the alert unit tests pass,
and every metric the alerts and the dashboard use is one the hub exports."""

import json
import re
import subprocess

import pytest
from prometheus_client import REGISTRY

import services.infra.metrics  # noqa: F401 (registers the hub's metrics)
from services.infra.settings import REPO_ROOT
from tests.system_tools import require

OBSERVABILITY = REPO_ROOT / "deploy" / "observability"


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                                  ["test", "rules", "alerts.test.yml"]])
def test_promtool_accepts(args: list[str]) -> None:
    result = subprocess.run([require("promtool"), *args], cwd=OBSERVABILITY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bverwijshub_[a-z_]+", text))


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    used = used_names(exprs) | used_names((OBSERVABILITY / "alerts.yml").read_text())
    assert used and used <= exported_names(), used - exported_names()
