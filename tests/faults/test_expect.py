"""The fault scenarios' refusal check (jobs/faults/expect.py): a test of the tests. A scenario passes
only on the refusal it provokes; an unrelated crash or another gate's refusal must fail it."""

from __future__ import annotations

import pytest

from jobs.errors import GateFailed, QuarantineShareExceeded
from jobs.faults.expect import Refusal, check_refusal
from jobs.faults.scenarios import PARTIAL_DAY_REFUSAL


def raises(err: Exception):
    def call(*args, **kwargs):
        raise err
    return call


def test_the_expected_gate_refusal_passes_and_names_the_gate():
    seen, problem = check_refusal(raises(GateFailed("ds=2026-01-03: no item index", gate="complete_outputs")),
                                  PARTIAL_DAY_REFUSAL)
    assert problem is None and seen.startswith("GateFailed[complete_outputs]: ds=2026-01-03")


@pytest.mark.parametrize("crash", [RuntimeError("unrelated"), KeyError("user_id"), OSError("disk full"),
                                   ValueError("bad value")])
def test_an_unrelated_crash_fails_the_scenario(crash):
    seen, problem = check_refusal(raises(crash), PARTIAL_DAY_REFUSAL)
    assert problem and "crashed with" in problem and type(crash).__name__ in seen


def test_a_refusal_by_another_gate_fails_the_scenario():
    _, problem = check_refusal(raises(GateFailed("vectors are NaN", gate="vector_norms")), PARTIAL_DAY_REFUSAL)
    assert problem and "vector_norms" in problem


def test_a_refusal_of_another_type_fails_the_scenario():
    expected = Refusal(QuarantineShareExceeded, ("quarantine_share",))
    _, problem = check_refusal(raises(GateFailed("too few rows", gate="raw_volume")), expected)
    assert problem and "crashed with GateFailed" in problem


def test_a_day_that_is_not_refused_fails_the_scenario():
    seen, problem = check_refusal(lambda: {"model_version": "3"}, PARTIAL_DAY_REFUSAL)
    assert seen == "passed" and problem.startswith("not refused")


def test_the_partial_day_scenario_fails_when_check_gates_crashes(monkeypatch, lake_cfg):
    """The crash scenarios' own gate check, with publish.check_gates replaced by an unrelated crash."""
    from jobs.faults import scenarios
    from jobs.steps import publish

    monkeypatch.setattr(publish, "check_gates", raises(AttributeError("'NoneType' object has no attribute 'x'")))
    _, problem = scenarios.partial_day_refusal(lake_cfg, "2026-01-03")
    assert problem and "AttributeError" in problem


def test_every_scenario_names_the_world_snapshot_it_needs():
    from jobs.faults.scenarios import LAST_SNAPSHOT, SCENARIOS
    from jobs.faults.world import STAGE_NAMES

    assert set(LAST_SNAPSHOT) == set(SCENARIOS)
    assert {stage for stage in LAST_SNAPSHOT.values() if stage} <= set(STAGE_NAMES)


def test_the_new_reliability_scenarios_are_in_the_suite():
    from jobs.faults.scenarios import SCENARIOS

    assert {"registry_error", "sensor", "forced_refit", "parent_run"} <= set(SCENARIOS)


def test_a_scenario_that_crashes_fails_the_suite_instead_of_stopping_it(monkeypatch, tmp_path):
    """run_faults' broad catch is right: it turns a crashed scenario into a FAILED row (exit 1) and goes
    on with the others; it never turns a crash into a pass."""
    from jobs.faults import scenarios
    from jobs.faults.world import Outcome

    def crashing(world):
        raise KeyError("an unrelated crash")

    monkeypatch.setattr(scenarios, "build_stages", lambda *args, **kwargs: None)
    monkeypatch.setitem(scenarios.SCENARIOS, "unit", crashing)
    monkeypatch.setitem(scenarios.SCENARIOS, "sensor", lambda world: [Outcome("fine", "how", "ok", True)])
    outcomes = scenarios.run_faults(tmp_path, only=["unit", "sensor"])
    assert [(o.scenario, o.passed) for o in outcomes] == [("unit", False), ("fine", True)]
    assert "KeyError" in outcomes[0].observed


def test_a_cli_run_of_the_fault_world_may_override_one_of_its_settings(tmp_path):
    from jobs.faults.world import FaultWorld

    world = FaultWorld(tmp_path)
    assert world.env()["FACTORY__TRAIN__D_MODEL"] == "16"
    assert world.env(FACTORY__TRAIN__D_MODEL="8")["FACTORY__TRAIN__D_MODEL"] == "8"
