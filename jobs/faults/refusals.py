"""Scenarios where the factory must refuse: bad input lines, oversize and empty drops, bad
invocations, and models or codebooks that must not reach the published pointer."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

from jobs.config import load_config
from jobs.days import day_bounds_ms
from jobs.errors import QuarantineShareExceeded
from jobs.faults.expect import Refusal, check_refusal
from jobs.faults.world import FaultWorld, Outcome, _in_fresh_process, _one_line_error, fingerprint
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVENTS, ITEMS, QUARANTINE, TABLES_BY_NAME


def bad_event_lines(ds: str, item_ids: list[str], good: int) -> tuple[list[bytes], Counter]:
    """A day's raw lines: `good` clean events (one with a CRLF ending) and one or more lines of every
    kind of defect ingest must quarantine, hostile ones included; and the expected count per reason."""
    start, end = day_bounds_ms(ds)

    def event(n: int, **changes) -> dict:
        return {"event_id": f"x{ds}_{n}", "user_id": f"u_{abs(n) % 7}", "item_id": item_ids[abs(n) % len(item_ids)],
                "event_type": "play", "ts": start + 1000 * abs(n), "ms_played": 30_000, **changes}

    def dumps(row: dict) -> bytes:
        return json.dumps(row).encode()

    def without(key: str, row: dict) -> dict:
        return {k: v for k, v in row.items() if k != key}

    clean = [dumps(event(n)) for n in range(good)]
    clean[1] += b"\r"  # a CRLF line ending is not a defect
    bad = [
        ("invalid_json", clean[0][:20]), ("invalid_json", b"[1, 2]"), ("invalid_json", b""),
        ("invalid_json", "\ufeff".encode() + dumps(event(-1))),  # a byte-order mark
        ("non_utf8", dumps(event(-2)).replace(b'"play"', b'"pl\xffay"')),
        ("missing_id", dumps(event(-3, user_id=None))), ("missing_id", dumps(without("item_id", event(-4)))),
        ("missing_id", dumps(event(-5, event_id=""))),
        ("schema_drift", dumps({**event(-6), "device": "tv"})), ("schema_drift", dumps(without("ts", event(-7)))),
        ("wrong_type", dumps(event(-8, ts="2026-01-01T00:00:00Z"))), ("wrong_type", dumps(event(-9, ms_played=12.5))),
        ("wrong_type", dumps(event(-10, event_type="like"))), ("wrong_type", dumps(event(-11, ms_played=True))),
        ("invalid_duration", dumps(event(-12, ms_played=-5))), ("invalid_duration", dumps(event(-13, ms_played=10**12))),
        ("ts_out_of_day", dumps(event(-14, ts=end + 400 * 86_400_000))), ("ts_out_of_day", dumps(event(-15, ts=0))),
        ("ts_out_of_day", dumps(event(-16, ts=end))),
        ("unknown_item", dumps(event(-17, item_id="trk_999999"))),
        ("duplicate_event", clean[2]),  # the exact same line again, later in the day
        # Hostile lines (jobs/steps/raw_line.py); the first three once stopped ingest for the whole day.
        ("too_deep", b"[" * 50_000 + b"]" * 50_000),
        ("invalid_number", dumps(event(-18)).replace(b'"ms_played": 30000', b'"ms_played": ' + b"9" * 5000)),
        ("invalid_text", dumps(event(-19, user_id="\ud800"))),
        ("invalid_text", dumps(event(-20, event_id="x\u0000\u001b[2J"))),
        ("out_of_range", dumps(event(-21, ts=2**64))),
        ("duplicate_key", dumps(event(-22)).replace(b"{", b'{"user_id": "u_1", ', 1)),
        ("invalid_json", dumps(event(-23)).replace(b"30000", b"NaN")),
        ("line_too_long", b'{"event_id": "' + b"x" * (1 << 20) + b'"}'),
    ]
    middle = len(clean) // 2
    return clean[:middle] + [line for _, line in bad] + clean[middle:], Counter(reason for reason, _ in bad)


def write_drop(landing: Path, source: str, ds: str, lines: list[bytes], files: int = 2) -> None:
    folder = landing / source / f"ds={ds}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    size = -(-len(lines) // files) if lines else 0
    for n in range(files):
        part = lines[n * size:(n + 1) * size] if size else []
        (folder / f"part-{n}.jsonl").write_bytes(b"".join(line + b"\n" for line in part))


def scenario_bad_input(world: FaultWorld) -> list[Outcome]:
    from jobs.steps.publish import check_gates

    world.restore("after_d3")
    cfg, landing = world.cfg, Path(world.cfg.landing_uri)
    items = delta.read(cfg, ITEMS, columns=["item_id"]).column(0).to_pylist()[:50]
    out = []
    mixed, share, empty = "2026-03-01", "2026-03-02", "2026-03-03"
    lines, expected = bad_event_lines(mixed, items, good=200)
    write_drop(landing, "events", mixed, lines)
    started = time.perf_counter()
    done = world.factory("run", "--ds", mixed, "--step", "ingest", check=False)
    quarantined = delta.read(cfg, QUARANTINE, where={"ds": mixed, "source": "events"}, columns=["reason"])
    counted = Counter(quarantined.column(0).to_pylist())
    clean = delta.read(cfg, EVENTS, where={"ds": mixed}, columns=["event_id"]).num_rows
    ok = done.returncode == 0 and counted == expected and clean + quarantined.num_rows == len(lines) and clean == 200
    out.append(Outcome("bad input is quarantined", f"{len(lines)} raw lines in 2 files: 200 clean (one CRLF) and "
                       f"{sum(expected.values())} defects of {len(expected)} kinds; `--step ingest`",
                       f"exit {done.returncode}; {clean} clean + {quarantined.num_rows} quarantined = {len(lines)} raw; "
                       f"reasons {dict(sorted(counted.items()))}", ok, len(lines), len(lines) - clean - quarantined.num_rows,
                       time.perf_counter() - started))

    started = time.perf_counter()
    before = fingerprint(cfg)
    done = world.factory("run", "--ds", mixed, "--step", "ingest", check=False, FACTORY__GATE__MAX_DROP_BYTES="1000")
    unchanged = fingerprint(cfg) == before
    message = _one_line_error(done.stderr)
    out.append(Outcome("oversize day is refused", "the same drop with gate.max_drop_bytes=1000", f"exit {done.returncode}: "
                       f"\"{message[:120]}\"; lake unchanged: {unchanged}",
                       done.returncode == 1 and "gate.max_drop_bytes" in message and unchanged,
                       seconds=time.perf_counter() - started))

    started = time.perf_counter()
    write_drop(landing, "events", empty, [], files=1)
    done = world.factory("run", "--ds", empty, "--step", "ingest", check=False)
    unchanged = fingerprint(cfg) == before
    message = _one_line_error(done.stderr)
    out.append(Outcome("empty day is refused", "an events drop with one empty file; `--step ingest`",
                       f"exit {done.returncode}: \"{message[:120]}\"; lake unchanged: {unchanged}",
                       done.returncode == 1 and "gate.min_raw_lines" in message and unchanged,
                       seconds=time.perf_counter() - started))

    started = time.perf_counter()
    lines, expected = bad_event_lines(share, items, good=40)
    write_drop(landing, "events", share, lines)
    done = world.factory("run", "--ds", share, "--step", "ingest", check=False)
    kept = delta.read(cfg, QUARANTINE, where={"ds": share, "source": "events"}, columns=["reason"]).num_rows
    refused, problem = check_refusal(lambda: check_gates(cfg, share), Refusal(QuarantineShareExceeded, ("quarantine_share",)))
    message = _one_line_error(done.stderr)
    out.append(Outcome("quarantine share above the gate fails the day", f"40 clean + {sum(expected.values())} bad lines "
                       f"({sum(expected.values()) / len(lines):.0%}) against gate.max_quarantine_share=0.2",
                       f"exit {done.returncode}: "
                       f"\"{message[:100]}\"; {kept} quarantined rows kept as evidence; publish: {refused[:110]}"
                       + (f"; PROBLEM: {problem}" if problem else ""),
                       done.returncode == 1 and "gate.max_quarantine_share" in message and kept == sum(expected.values())
                       and problem is None,
                       len(lines), 0, time.perf_counter() - started))
    return out


def scenario_bad_invocations(world: FaultWorld) -> list[Outcome]:
    world.restore("after_d3")
    d3 = world.days[2]
    not_a_folder = world.workdir / "not-a-folder"
    not_a_folder.write_text("a file where the lake's parent folder should be\n")
    cases = [
        ("unknown ds format", ["run", "--ds", "2026-1-3"], {}, "is not a date"),
        ("ds before the first data", ["run", "--ds", "2025-12-01", "--step", "features"], {}, "before the first data"),
        ("missing input drop", ["run", "--ds", "2026-06-01", "--step", "ingest"], {}, "No events drop"),
        ("MLflow unreachable", ["run", "--ds", d3, "--step", "catalog"],
         {"FACTORY__MLFLOW__TRACKING_URI": "http://127.0.0.1:9"}, "http://127.0.0.1:9"),
        ("Spark unreachable", ["run", "--ds", d3, "--step", "features"], {"FACTORY__SPARK__MASTER": "spark://127.0.0.1:9"},
         "spark://127.0.0.1:9"),
        ("Ray unreachable", ["run", "--ds", d3, "--step", "embed"], {"FACTORY__RAY__ADDRESS": "ray://127.0.0.1:9"},
         "ray://127.0.0.1:9"),
        ("lake not writable", ["run", "--ds", d3, "--step", "catalog"],
         {"FACTORY__PATHS__LAKE_URI": str(not_a_folder / "lake")}, "is not writable"),
    ]
    out = []
    for name, args, env, expected in cases:
        started = time.perf_counter()
        done = world.factory(*args, check=False, **env)
        message = _one_line_error(done.stderr)
        ok = done.returncode == 1 and expected in message and "Traceback" not in done.stderr
        out.append(Outcome(f"bad invocation: {name}",
                           f"`factory {' '.join(args)}`" + "".join(f" with {k}={v}" for k, v in env.items()),
                           f"exit {done.returncode} after {time.perf_counter() - started:.0f}s: \"{message}\"", ok,
                           seconds=time.perf_counter() - started))
    return out


def scenario_quality_gates(world: FaultWorld) -> list[Outcome]:
    out = [
        _bad_model(world, "untrained model is not promoted", "cold start (train.d_model=8) at train.lr=1e-6",
                   "validation NDCG@10", FACTORY__TRAIN__D_MODEL="8", FACTORY__TRAIN__LR="1e-6"),
        _bad_model(world, "diverged model (NaN) is not promoted", "train.lr=1e30: the loss and weights become NaN "
                   "(lr=30 only slows learning since the loop keeps its best validation weights)",
                   "training diverged", FACTORY__TRAIN__LR="1e30"),
    ]
    from jobs.steps.publish import latest_published

    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("before_sid")
    pointer = latest_published(world.cfg)
    world.factory("run", "--ds", d3, "--step", "semantic_ids", FACTORY__SID__CODES_PER_LEVEL="2")
    world.factory("run", "--ds", d3, "--step", "index", "--step", "evaluate")
    done = world.factory("run", "--ds", d3, "--step", "publish", check=False)
    runs = _in_fresh_process(_registry_state, world.overrides, d3, "publish")
    kept = latest_published(world.cfg) == pointer
    out.append(Outcome("bad codebook is not published", "day 3's codebook refit with sid.codes_per_level=2 (collapse), "
                       "then index, evaluate, `--step publish`",
                       f"publish exit {done.returncode}: \"{_one_line_error(done.stderr)[:110]}\"; pointer still "
                       f"{pointer['ds']}: {kept}; MLflow publish run: gate_decision={runs['gate_decision']}, "
                       f"gate={runs['gate']}",
                       done.returncode == 1 and kept and runs["gate_decision"] == "refused"
                       and runs["gate"] in ("collision_rate", "collision_rate_increase"),
                       seconds=time.perf_counter() - started))
    return out


def _bad_model(world: FaultWorld, name: str, how: str, reason: str, **env: str) -> Outcome:
    """Force a retrain of day 3 with a bad setting, then run the rest of the day: the champion must
    stay (held back by the train gate for `reason`, a phrase of its gate_reason), the day must be
    served by it, and the published pointer must never name the bad model."""
    from jobs.steps.publish import latest_published

    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("after_d3")
    before = _in_fresh_process(_registry_state, world.overrides, d3, "train")
    world.factory("run", "--ds", d3, "--step", "train", "--force-retrain", **env)
    after = _in_fresh_process(_registry_state, world.overrides, d3, "train")
    rest = world.factory("run", "--ds", d3, *[a for s in ("embed", "index", "evaluate", "publish") for a in ("--step", s)],
                         check=False)
    served = set(delta.read(world.cfg, TABLES_BY_NAME["user_embeddings"], where={"ds": d3},
                           columns=["model_version"]).column(0).to_pylist())
    published = (latest_published(world.cfg) or {}).get("model_version")
    ok = (after["champion"] == before["champion"] and after["gate_decision"] == "challenger"
          and reason in (after["gate_reason"] or "") and rest.returncode == 0
          and served == {before["champion"]} and published == before["champion"])
    return Outcome(name, f"`factory run --ds {d3} --step train --force-retrain` with {how}, then embed, index, "
                   f"evaluate, publish", f"champion v{before['champion']} -> v{after['champion']}, challenger "
                   f"v{after['challenger']}; MLflow train run: gate_decision={after['gate_decision']}, "
                   f"\"{after['gate_reason']}\"; rest of the day: exit {rest.returncode}"
                   + (f" (\"{_one_line_error(rest.stderr)[:100]}\")" if rest.returncode else "")
                   + f"; day served by {sorted(served)}; published model {published}",
                   ok, seconds=time.perf_counter() - started)


def _registry_state(overrides: dict, ds: str, step: str) -> dict:
    import mlflow

    from jobs.tracking import registry
    from jobs.tracking.runs import TAG_DS, TAG_KIND, TAG_STEP, configure_mlflow

    cfg = load_config(overrides=overrides)
    experiment = configure_mlflow(cfg)
    runs = mlflow.search_runs([experiment], filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_KIND}` = 'step' "
                              f"AND tags.`{TAG_STEP}` = '{step}'", order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    params = runs[0].data.params if runs else {}
    return {"champion": registry.alias_version(cfg, registry.CHAMPION),
            "challenger": registry.alias_version(cfg, registry.CHALLENGER),
            "gate_decision": params.get("gate_decision"), "gate": params.get("gate"),
            "gate_reason": params.get("gate_reason")}
