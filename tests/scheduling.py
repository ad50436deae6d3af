"""The order in which `make test` hands out its units of work (a module, or the session hub's modules together).

The unit and property tests go first, so a broken core fails in seconds; then the end-to-end units, the costliest
first (longest processing time first): in xdist's default order, by number of tests, a module of one long test (the
fault test runs for minutes) came near the end and ran on while the other workers idled. The costs are the seconds
each module took in a recorded run (`tests/e2e/costs.json`); a module not in it counts as the costliest, so a new
module is never the tail. To record them again after a run with `--junitxml=junit.xml`: `.venv/bin/python -m
tests.scheduling junit.xml > tests/e2e/costs.json`.
"""

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

COSTS_FILE = Path(__file__).parent / "e2e" / "costs.json"


def load_costs(path: Path = COSTS_FILE) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def is_end_to_end(module: str) -> bool:
    return module.startswith("tests/e2e/")


def unit_order(modules: Iterable[str], scope_of: Callable[[str], str], costs: dict[str, float]) -> list[str]:
    """The units of `modules` (in collection order; `scope_of` maps a module to its unit) in the order they are
    handed out: units without an end-to-end module first as collected, then the others by their modules' summed
    cost, costliest first (an unknown module as costly as the costliest known one)."""
    units: dict[str, list[str]] = defaultdict(list)
    for module in dict.fromkeys(modules):
        units[scope_of(module)].append(module)
    unknown = max(costs.values(), default=0.0)

    def cost(unit: str) -> float:
        return sum(costs.get(module, unknown) for module in units[unit])

    fast = [unit for unit, members in units.items() if not any(map(is_end_to_end, members))]
    slow = sorted((unit for unit in units if unit not in fast), key=cost, reverse=True)  # stable on ties
    return fast + slow


def module_costs(junit_xml: Path) -> dict[str, int]:
    """Seconds per end-to-end module (setup, call and teardown of each of its tests) in a JUnit XML report."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        if is_end_to_end(module):
            seconds[module] += float(case.get("time", 0))
    return {module: round(total) for module, total in sorted(seconds.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    print(json.dumps(module_costs(Path(sys.argv[1])), indent=1))
