"""The order of `make test`'s units of work (tests/scheduling.py): fast units first, then the costliest."""

from pathlib import Path

from tests.scheduling import module_costs, unit_order

SHARED = {"tests/e2e/test_b.py", "tests/e2e/test_c.py"}


def scope(module: str) -> str:
    return "shared" if module in SHARED else module


def test_unit_tests_first_as_collected_then_end_to_end_costliest_first_with_a_shared_unit_summed() -> None:
    modules = ["tests/unit/test_z.py", "tests/e2e/test_a.py", "tests/e2e/test_b.py", "tests/property/test_p.py",
               "tests/e2e/test_c.py", "tests/e2e/test_d.py", "tests/unit/test_a.py"]
    costs = {"tests/e2e/test_a.py": 100, "tests/e2e/test_b.py": 60, "tests/e2e/test_c.py": 50,
             "tests/e2e/test_d.py": 300}
    assert unit_order(modules, scope, costs) == ["tests/unit/test_z.py", "tests/property/test_p.py",
                                                 "tests/unit/test_a.py", "tests/e2e/test_d.py", "shared",
                                                 "tests/e2e/test_a.py"]


def test_a_module_without_a_recorded_cost_counts_as_the_costliest_and_ties_keep_collection_order() -> None:
    modules = ["tests/e2e/test_a.py", "tests/e2e/test_new.py", "tests/e2e/test_d.py"]
    costs = {"tests/e2e/test_a.py": 100, "tests/e2e/test_d.py": 300}
    assert unit_order(modules, lambda m: m, costs) == ["tests/e2e/test_new.py", "tests/e2e/test_d.py",
                                                       "tests/e2e/test_a.py"]


def test_costs_are_summed_per_end_to_end_module_from_a_junit_report(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite name="pytest">'
                      '<testcase classname="tests.e2e.test_a" name="test_one" time="10.4"/>'
                      '<testcase classname="tests.e2e.test_a" name="test_two[x]" time="2.3"/>'
                      '<testcase classname="tests.e2e.test_b" name="test_one" time="30"/>'
                      '<testcase classname="tests.unit.test_u" name="test_one" time="0.1"/>'
                      '</testsuite></testsuites>')
    assert module_costs(report) == {"tests/e2e/test_b.py": 30, "tests/e2e/test_a.py": 13}
