"""Import rules between the packages (the diagram in docs/architecture.md), checked on the source.

Every import counts, lazy ones inside functions too. The rules that matter most:
- models/ is pure torch/numpy: it imports nothing of jobs/ or dags/;
- no module under jobs/steps imports Airflow (the DAG calls the steps, never the other way);
- jobs/bench and jobs/faults are leaves: nothing outside them imports them. The one exception is
  jobs/cli.py, which mounts their typer apps (jobs.bench.cli, jobs.faults.cli: import-light, each
  command imports its benchmark or scenarios when it runs).
ALLOWED below is the full layer map: which package may import which.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import REPO

BASE = "jobs.base"  # jobs/config.py, errors.py, days.py: everything may import them
ALLOWED: dict[str, set[str]] = {
    "models": {"models"},
    BASE: {BASE},
    "jobs.lakehouse": {BASE, "jobs.lakehouse"},
    "jobs.tracking": {BASE, "jobs.lakehouse", "jobs.tracking", "models"},
    "jobs.runtime": {BASE, "jobs.runtime"},
    "jobs.steps": {BASE, "jobs.lakehouse", "jobs.tracking", "jobs.runtime", "jobs.steps", "models"},
    "jobs.pipeline": {BASE, "jobs.lakehouse", "jobs.tracking", "jobs.steps"},
    "jobs.serving": {BASE, "jobs.lakehouse", "jobs.tracking", "jobs.steps", "jobs.serving", "models"},
    "jobs.synthetic": {BASE, "jobs.synthetic"},  # the generator and its worlds stand alone
    # ... except the demo, which runs the generated world through Airflow and shows the outputs.
    "jobs.synthetic.demo": {BASE, "jobs.synthetic", "jobs.runtime", "jobs.pipeline", "jobs.serving", "jobs.tracking",
                            "jobs.steps"},
    "jobs.cli": {BASE, "jobs.lakehouse", "jobs.runtime", "jobs.pipeline", "jobs.serving", "jobs.steps",
                 "jobs.synthetic", "jobs.bench.cli", "jobs.faults.cli"},  # the two mounted apps, nothing else of them
    "jobs.bench": {BASE, "jobs.lakehouse", "jobs.tracking", "jobs.runtime", "jobs.steps", "jobs.pipeline",
                   "jobs.synthetic", "jobs.bench", "models",
                   "jobs.serving"},  # bench taste judges what `factory neighbours` serves
    "jobs.faults": {BASE, "jobs.lakehouse", "jobs.tracking", "jobs.runtime", "jobs.steps", "jobs.pipeline",
                    "jobs.synthetic", "jobs.faults", "jobs.cli"},  # inject runs the CLI with a pause installed
    "dags": {BASE, "jobs.lakehouse", "jobs.steps", "jobs.pipeline", "jobs.runtime", "airflow"},
    "jobs": set(),  # jobs/__init__.py: a docstring only
}
ALLOWED_AIRFLOW = {"dags", "jobs.runtime"}  # nothing else imports Airflow (the runtime only starts it as a process)


def layer_of_module(name: str) -> str | None:
    """The layer an imported module belongs to, or None for a third-party module other than Airflow."""
    parts = name.split(".")
    if parts[0] == "models":
        return "models"
    if parts[0] == "dags":
        return "dags"
    if parts[0] == "airflow":
        return "airflow"
    if parts[0] != "jobs":
        return None
    if len(parts) == 1 or parts[1] in ("config", "errors", "days"):
        return BASE
    if parts[1] in ("bench", "faults") and len(parts) > 2 and parts[2] == "cli":
        return f"jobs.{parts[1]}.cli"
    return f"jobs.{parts[1]}"


def layer_of_file(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    name = ".".join(p for p in relative.parts if p != "__init__")
    if name == "jobs.synthetic.demo":
        return name
    if name == "jobs":
        return "jobs"
    layer = layer_of_module(name)
    return layer.removesuffix(".cli") if layer.startswith(("jobs.bench", "jobs.faults")) else layer  # bench/cli.py: jobs.bench


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import; `from jobs import x` counts as jobs.x."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("jobs", "jobs.bench", "jobs.faults"):  # names may be sub-modules
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def violations(path: Path, source: str) -> list[str]:
    """Every import of `source` (the text of the file at `path`) that breaks a rule, as one line each."""
    source_layer = layer_of_file(path)
    allowed = ALLOWED[source_layer] | {source_layer}
    out = []
    for line, module in imported_modules(ast.parse(source)):
        target = layer_of_module(module)
        if target is None or target == source_layer:
            continue
        if target == "airflow":
            ok = source_layer in ALLOWED_AIRFLOW
        else:
            ok = target in allowed or target.removesuffix(".cli") == source_layer  # jobs.bench.cli inside jobs.bench
        if not ok:
            out.append(f"{path.relative_to(REPO)}:{line} imports {module} ({source_layer} may not import {target})")
    return out


def source_files() -> list[Path]:
    return sorted(p for folder in ("jobs", "models", "dags") for p in (REPO / folder).rglob("*.py"))


def test_every_package_imports_only_what_the_layer_map_allows():
    broken = [v for path in source_files() for v in violations(path, path.read_text())]
    assert broken == [], "\n".join(broken)


def test_every_source_file_belongs_to_a_layer_of_the_map():
    assert {layer_of_file(p) for p in source_files()} <= set(ALLOWED)


@pytest.mark.parametrize("where, code", [
    ("models/user_encoder.py", "from jobs.config import FactoryConfig"),
    ("models/reranking.py", "import dags.daily_embeddings"),
    ("jobs/steps/train.py", "def run():\n    from airflow.sdk import task"),
    ("jobs/steps/embed.py", "import airflow"),
    ("jobs/serving/show.py", "from jobs.bench.common import machine"),
    ("jobs/pipeline.py", "from jobs import bench"),
    ("jobs/steps/publish.py", "from jobs.faults.world import fingerprint"),
    ("jobs/cli.py", "from jobs.bench.encoder import run_benchmark"),  # only the mounted app
    ("jobs/lakehouse/delta.py", "from jobs.steps import STEPS"),
    ("jobs/steps/index.py", "from jobs.serving.show import day_report"),
    ("jobs/synthetic/generate.py", "from jobs.lakehouse import delta"),
    ("jobs/bench/perf.py", "from jobs.faults.world import FaultWorld"),
])
def test_a_forbidden_import_is_reported(where, code):
    assert violations(REPO / where, code), f"{where}: `{code}` should break a rule"


@pytest.mark.parametrize("where, code", [
    ("jobs/cli.py", "from jobs.bench.cli import bench_app"),
    ("jobs/cli.py", "from jobs.faults.cli import faults"),
    ("jobs/steps/train.py", "from jobs.lakehouse import delta\nfrom models.user_encoder import UserEncoder"),
    ("dags/daily_embeddings.py", "from airflow.sdk import dag\nfrom jobs.steps import STEP_NAMES"),
    ("jobs/bench/perf.py", "from jobs.bench import features"),
])
def test_an_allowed_import_is_not_reported(where, code):
    assert violations(REPO / where, code) == []
