"""What a scenario expects to be refused, and the check that the refusal is that one.

A fault scenario passes only when the factory refuses for the reason the scenario provokes: the
exception type and the gate that refused (`GateFailed.gate`). An unrelated crash (a KeyError, a lost
connection) must fail the scenario, not pass it as "some refusal"; tests/faults/test_expect.py pins
that this check does so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs.errors import GateFailed


@dataclass(frozen=True)
class Refusal:
    kind: type[Exception] = GateFailed
    gates: tuple[str, ...] = ()  # GateFailed.gate must be one of these (empty: any gate of `kind`)

    def describe(self) -> str:
        return f"{self.kind.__name__}" + (f" by gate {'/'.join(self.gates)}" if self.gates else "")


def check_refusal(call: Callable[[], object], expected: Refusal) -> tuple[str, str | None]:
    """Run call(); (what happened in one line, the problem or None if it refused as expected)."""
    try:
        call()
    except expected.kind as err:
        gate = getattr(err, "gate", "")
        seen = f"{type(err).__name__}[{gate}]: {err}" if gate else f"{type(err).__name__}: {err}"
        if expected.gates and gate not in expected.gates:
            return seen, f"refused by gate {gate!r}, expected {expected.describe()}"
        return seen, None
    except Exception as err:  # noqa: BLE001 - turned into a failure: an unrelated crash is what this check catches
        return f"{type(err).__name__}: {err}", f"crashed with {type(err).__name__} instead of a {expected.describe()} refusal"
    return "passed", f"not refused (expected {expected.describe()})"
