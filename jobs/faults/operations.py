"""Scenarios about what an operator relies on around a day: a transient registry error during train,
a misconfigured sensor, a forced codebook refit on a day that already refitted, and a failed step
shown on the day's MLflow parent run (and by `factory show`)."""

from __future__ import annotations

import json
import time

from jobs.config import load_config
from jobs.faults.inject import registry_unavailable_command
from jobs.faults.world import FaultWorld, Outcome, _in_fresh_process, _one_line_error, _tail


def _state(overrides: dict, ds: str) -> dict:
    """Registry, codebook and MLflow state of the world (run in a fresh process: its own MLflow client)."""
    import mlflow

    from jobs.steps.semantic_ids import latest_codebook
    from jobs.tracking import registry
    from jobs.tracking.day_runs import day_outcome
    from jobs.tracking.runs import TAG_DS, TAG_KIND, TAG_STEP, configure_mlflow

    cfg = load_config(overrides=overrides)
    experiment = configure_mlflow(cfg)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{cfg.mlflow.registered_model}'")
    book = latest_codebook(cfg)
    sid_runs = mlflow.search_runs([experiment], filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_KIND}` = 'step' "
                                  f"AND tags.`{TAG_STEP}` = 'semantic_ids'", order_by=["attributes.start_time DESC"],
                                  max_results=1, output_format="list")
    return {"champion": registry.alias_version(cfg, registry.CHAMPION), "model_versions": len(versions),
            "codebook": (book.version, book.built_ds, book.params.get("refit_reason"), book.params.get("forced_by"))
            if book else None,
            "sid_run": dict(sid_runs[0].data.params) if sid_runs else {}, "day": day_outcome(cfg, ds)}


def scenario_registry_error(world: FaultWorld) -> list[Outcome]:
    """A transient registry error during train fails the step: read as "no champion yet" it would train and
    register a champion without the gate (day 3's champion is not due for retraining). The rerun without
    the fault keeps the champion serving."""
    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("after_features")
    before = _in_fresh_process(_state, world.overrides, d3)
    args = ["run", "--ds", d3, "--step", "train"]
    done = world.run(registry_unavailable_command(*args), world.env())
    after = _in_fresh_process(_state, world.overrides, d3)
    day = after["day"] or {}
    rerun = world.factory(*args, check=False)
    final = _in_fresh_process(_state, world.overrides, d3)
    ok = (done.returncode != 0 and after["champion"] == before["champion"]
          and after["model_versions"] == before["model_versions"]
          and day.get("status") == "FAILED" and day.get("failed_step") == "train"
          and "database is locked" in (day.get("reason") or "")
          and rerun.returncode == 0 and final["champion"] == before["champion"])
    return [Outcome(
        "transient registry error during train", f"`factory run --ds {d3} --step train` (champion not due for "
        "retraining) with every registry lookup failing as a locked store does (jobs.faults.inject "
        "--registry-unavailable), then the same run without the fault",
        f"exit {done.returncode} (\"{_tail(done.stderr, 1)[:90]}\"); champion v{before['champion']} -> "
        f"v{after['champion']}, model versions {before['model_versions']} -> {after['model_versions']}; day's parent run "
        f"{day.get('status')} in {day.get('failed_step')}; rerun exit {rerun.returncode}, versions "
        f"{final['model_versions']}, champion v{final['champion']}", ok, seconds=time.perf_counter() - started)]


def scenario_sensor(world: FaultWorld) -> list[Outcome]:
    """The DAG's wait_for_drops through `airflow tasks test`: a landing that does not exist fails at once;
    a drop that has not landed is waited for (the task is rescheduled, not failed)."""
    out = []
    d3 = world.days[2]
    world.restore("after_d3")
    missing_landing = str(world.workdir / "no-such-landing")
    for name, landing, ds, expect_failure in [
        ("misconfigured sensor fails at once", missing_landing, d3, True),
        ("sensor waits for a drop not landed yet", str(world.workdir / "landing"), "2026-06-01", False),
    ]:
        started = time.perf_counter()
        env = world.env()
        env["FACTORY__PATHS__LANDING_URI"] = landing
        done = world.run(world.command("airflow", "tasks", "test", "daily_embeddings", "wait_for_drops", ds), env)
        text = done.stdout + done.stderr
        seconds = time.perf_counter() - started
        failed = "AirflowFailException" in text or "state=failed" in text.lower() or done.returncode != 0
        named = "paths.landing_uri" in text
        rescheduled = "up_for_reschedule" in text.lower() or "reschedul" in text.lower()
        ok = (failed and named and seconds < 300) if expect_failure else (rescheduled and "AirflowFailException" not in text)
        said = next((line.strip() for line in text.splitlines()
                     if "(paths.landing_uri)" in line and "raise " not in line and '"' not in line), "")
        out.append(Outcome(name, f"`factory airflow tasks test daily_embeddings wait_for_drops {ds}` with "
                           f"paths.landing_uri={landing.removeprefix(str(world.workdir) + '/')}",
                           f"exit {done.returncode} after {seconds:.0f}s; "
                           + (f"failed: {failed}, names the setting: {named} (\"{said[-120:]}\")" if expect_failure
                              else f"rescheduled: {rescheduled}, failed: {'AirflowFailException' in text}"),
                           ok, seconds=seconds))
    return out


def scenario_forced_refit(world: FaultWorld) -> list[Outcome]:
    """Forcing a codebook refit on a day that already refitted writes a new version and says so; forcing
    one on a day before the newest codebook fails with the reason and changes nothing."""
    started = time.perf_counter()
    d2, d3 = world.days[1], world.days[2]
    world.restore("after_sid")
    before = _in_fresh_process(_state, world.overrides, d3)
    forced = world.factory("run", "--ds", d3, "--step", "semantic_ids", "--force-codebook-rebuild", check=False)
    after = _in_fresh_process(_state, world.overrides, d3)
    earlier = world.factory("run", "--ds", d2, "--step", "semantic_ids", "--force-codebook-rebuild", check=False)
    last = _in_fresh_process(_state, world.overrides, d3)
    version, built, reason, forced_by = after["codebook"]
    message = _one_line_error(earlier.stderr)
    ok = (before["codebook"][1] == d3 and forced.returncode == 0 and version == before["codebook"][0] + 1
          and built == d3 and reason == "forced" and bool(forced_by)
          and after["sid_run"].get("refit_reason") == "forced" and after["sid_run"].get("force_refit") == "True"
          and earlier.returncode == 1 and "cannot force a codebook refit" in message and last["codebook"] == after["codebook"])
    return [Outcome(
        "forced refit on an already-refitted day", f"day 3 refitted its codebook (reason {before['codebook'][2]}); "
        f"`factory run --ds {d3} --step semantic_ids --force-codebook-rebuild`, then the same for day 2",
        f"codebook v{before['codebook'][0]} -> v{version} (built {built}, reason {reason}, forced_by {forced_by}); MLflow run "
        f"refit_reason={after['sid_run'].get('refit_reason')}; day 2: exit {earlier.returncode} \"{message[:110]}\"",
        ok, seconds=time.perf_counter() - started)]


def scenario_parent_run(world: FaultWorld) -> list[Outcome]:
    """A step that fails shows on the day's MLflow parent run, and `factory show` says the same."""
    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("before_embed")
    done = world.factory("run", "--ds", d3, "--step", "embed", check=False, FACTORY__RAY__ACTOR_NUM_CPUS="64")
    state = _in_fresh_process(_state, world.overrides, d3)
    shown = json.loads(world.factory("show", "--ds", d3, "--json").stdout)["day"] or {}
    day = state["day"] or {}
    ok = (done.returncode == 1 and day.get("status") == "FAILED" and day.get("outcome") == "failed"
          and day.get("failed_step") == "embed" and "ray.actor_num_cpus" in (day.get("reason") or "")
          and "FAILED in step embed" in (day.get("description") or "")
          and {k: shown.get(k) for k in ("run_id", "status", "failed_step")} == {k: day.get(k) for k in ("run_id", "status",
                                                                                                         "failed_step")})
    return [Outcome(
        "failed step visible on the parent run", f"`factory run --ds {d3} --step embed` with ray.actor_num_cpus=64 (more "
        "than the Ray cluster has), then `factory show --ds D --json`",
        f"exit {done.returncode}; MLflow parent run {day.get('status')} ({day.get('outcome')}) in "
        f"{day.get('failed_step')}: \"{(day.get('reason') or '')[:90]}\"; factory show: {shown.get('status')} in "
        f"{shown.get('failed_step')}, same run: {shown.get('run_id') == day.get('run_id')}",
        ok, seconds=time.perf_counter() - started)]
