"""What `up`'s supervisor gives each service process (services/supervisor.py): only its own credential, the
pseudonym key only to intake; and the children's metrics merged into one exposition."""

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from services.hub import SERVICES
from services.infra import principals
from services.infra.settings import Settings
from services.supervisor import _Merged, child_environment, merge_metrics

PARENT = {"PATH": "/usr/bin", "VERWIJSHUB_KAFKA_USERNAME": "verwijshub-admin", "VERWIJSHUB_KAFKA_PASSWORD": "admin-pw",
          "VERWIJSHUB_KAFKA_CLIENT_CONFIG": "/etc/admin.env", "VERWIJSHUB_PSEUDONYM_KEY": "the-key",
          "VERWIJSHUB_GATEWAY_PORT": "8443"}


def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, log_file=tmp_path / "hub.log",
                    pseudonym_key=SecretStr("the-key"))


def test_a_service_process_gets_its_own_credential_file_and_no_admin_credential(tmp_path: Path) -> None:
    for name, spec in SERVICES.items():
        env = child_environment(PARENT, name, settings(tmp_path))
        assert env["VERWIJSHUB_KAFKA_CREDENTIAL_FILE"] == str(
            tmp_path / "secrets" / "credentials" / f"{spec.principal}.password")
        assert not {"VERWIJSHUB_KAFKA_USERNAME", "VERWIJSHUB_KAFKA_PASSWORD",
                    "VERWIJSHUB_KAFKA_CLIENT_CONFIG"} & set(env)
        assert "admin-pw" not in env.values()
        assert env["VERWIJSHUB_LOG_FILE"] == str(tmp_path / "hub.log") and env["VERWIJSHUB_GATEWAY_PORT"] == "8443"


def test_only_intake_is_given_the_pseudonym_key(tmp_path: Path) -> None:
    given = {name for name in SERVICES
             if "VERWIJSHUB_PSEUDONYM_KEY" in child_environment(PARENT, name, settings(tmp_path))}
    assert given == {"intake"}
    assert SERVICES["gateway"].principal == principals.GATEWAY and not SERVICES["gateway"].pseudonym_key


CHILD = """# HELP verwijshub_handovers_total Handovers.
# TYPE verwijshub_handovers_total counter
verwijshub_handovers_total{recipient_kind="wij-team"} 2.0
verwijshub_handovers_created{recipient_kind="wij-team"} 1.7e9
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
# HELP verwijshub_handler_seconds Handling.
# TYPE verwijshub_handler_seconds histogram
verwijshub_handler_seconds_bucket{le="0.1",service="intake"} 1.0
verwijshub_handler_seconds_bucket{le="+Inf",service="intake"} 2.0
verwijshub_handler_seconds_count{service="intake"} 2.0
verwijshub_handler_seconds_sum{service="intake"} 0.5
"""


def merged(own: str, children: list[tuple[str, str]]) -> dict[str, dict[tuple, float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge_metrics(own, children)))
    text = generate_latest(registry).decode()
    assert text.count("# TYPE verwijshub_handovers_total counter") == 1
    return {family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
            for family in text_string_to_metric_families(text)}


def test_the_childrens_metrics_are_one_exposition_alike_samples_added_process_metrics_labelled() -> None:
    families = merged("# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n"
                      "process_cpu_seconds_total 0.5\n", [("notifier", CHILD), ("routing", CHILD)])
    assert families["verwijshub_handovers"] == {("verwijshub_handovers_total", (("recipient_kind", "wij-team"),)): 4.0}
    assert families["process_cpu_seconds"] == {("process_cpu_seconds_total", ()): 0.5,
                                               ("process_cpu_seconds_total", (("service", "notifier"),)): 1.5,
                                               ("process_cpu_seconds_total", (("service", "routing"),)): 1.5}
    assert families["verwijshub_handler_seconds"][("verwijshub_handler_seconds_count", (("service", "intake"),))] == 4.0
    assert not any(name.endswith("_created") for name in families)


def test_a_child_that_does_not_answer_adds_nothing() -> None:
    assert merged("", [("gateway", ""), ("routing", CHILD)])["verwijshub_handovers"] == {
        ("verwijshub_handovers_total", (("recipient_kind", "wij-team"),)): 2.0}
