"""`make screenshots`: pictures of the MLflow and Airflow UIs over a finished demo, checked in a real browser.

On the state of a finished `make demo` (.state, or $FACTORY__PATHS__STATE_DIR) it starts the MLflow
UI and `airflow standalone` on their own ports, runs an Airflow backfill of the demo's days (rerunning
completed days: every step is idempotent), then takes screenshots with headless Chromium (Debian's
`chromium` package) into docs/img/:

  mlflow-day-runs.png        the day's parent run with its nested step runs
  mlflow-step-metrics.png    the embed step run: its metrics
  mlflow-step-artifacts.png  the embed step run: its artifacts (the hypersphere plot)
  mlflow-registry.png        the registered user encoder with its aliases (champion, challenger if any)
  airflow-backfill-grid.png  the DAG's grid with the backfill's runs

and checks each page's rendered text (read over Chromium's DevTools protocol once the page's
scripts ran) for what a user looks for there (run names, the alias, the DAG and its tasks). Exit 1
with one line per failed check. Run by hand (several minutes: the backfill reruns the days); not in .ci/run.

    python infra/screenshots/take.py [--mlflow-port 5055] [--airflow-port 8089] [--no-backfill]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from jobs.config import FactoryConfig, load_config
from jobs.runtime.airflow_env import DAG_ID, airflow_env
from jobs.runtime.quiet import quiet_third_parties

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "img"
MAX_PNG_BYTES = 500_000
WINDOW = "1440,900"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlflow-port", type=int, default=5055)
    parser.add_argument("--airflow-port", type=int, default=8089)
    parser.add_argument("--browser-port", type=int, default=9333, help="Chromium's DevTools port.")
    parser.add_argument("--no-backfill", action="store_true", help="Use the Airflow runs there are.")
    parser.add_argument("--out", type=Path, default=IMAGES, help="Folder of the pictures (default docs/img).")
    parser.add_argument("--wait-minutes", type=float, default=40.0, help="Longest wait for the backfill.")
    args = parser.parse_args(argv)
    quiet_third_parties()
    cfg = load_config()
    if not Path(cfg.mlflow_tracking_uri.removeprefix("sqlite:///")).is_file() or not cfg.airflow_home.is_dir():
        print(f"error: no finished demo under {cfg.state_dir}; run `make demo` first.", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**airflow_env(cfg), "AIRFLOW__API__PORT": str(args.airflow_port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{args.airflow_port}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # the browser needs no login
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}  # only the backfill's runs, no run for today
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="screenshots-") as logs:
        mlflow_cmd = [str(Path(sys.executable).parent / "factory"), "mlflow-ui", "--port", str(args.mlflow_port)]
        airflow_cmd = [str(Path(sys.executable).parent / "airflow"), "standalone"]
        with serve(mlflow_cmd, os.environ.copy(), Path(logs) / "mlflow.log"), \
                serve(airflow_cmd, env, Path(logs) / "airflow.log"):
            mlflow_url, airflow_url = f"http://127.0.0.1:{args.mlflow_port}", f"http://127.0.0.1:{args.airflow_port}"
            wait_for(f"{mlflow_url}/health", "the MLflow UI", Path(logs) / "mlflow.log")
            wait_for(f"{airflow_url}/api/v2/monitor/health", "Airflow's API server", Path(logs) / "airflow.log")
            if not args.no_backfill:
                backfill(cfg, env, args.wait_minutes * 60)
            browser = Browser(args.browser_port, str(Path(logs) / "chromium"), args.out)
            try:
                failures += mlflow_pages(cfg, mlflow_url, browser)
                failures += airflow_pages(airflow_url, browser)
            finally:
                browser.close()
    for failure in failures:
        print(f"check failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


# --- the two servers --------------------------------------------------------------------------------

@contextlib.contextmanager
def serve(command: list[str], env: dict, log: Path) -> Iterator[None]:
    """Run a server for the duration of the block (its own process group, stopped with SIGTERM)."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=REPO)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        time.sleep(5)  # children (the MLflow server under `factory mlflow-ui`) may outlive their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_for(url: str, what: str, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        time.sleep(3)
    raise SystemExit(f"error: {what} did not answer on {url} within {seconds:.0f} s; see {log}.")


def airflow(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`airflow <args>` with the servers' environment (the DB exists: the demo migrated it)."""
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True,
                          text=True, cwd=REPO)


def airflow_json(env: dict, *args: str) -> list[dict]:
    """An `airflow ... --output json` listing (Airflow logs warnings to stdout before the JSON)."""
    done = airflow(env, *args, "--output", "json")
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    return json.loads(lines[-1]) if lines else []


def backfill(cfg: FactoryConfig, env: dict, seconds: float) -> None:
    """Backfill the demo's days (those with an events drop) through the scheduler and wait for it.
    Days that already ran are run again (`--reprocess-behavior completed`): their runs become the
    backfill's."""
    from jobs.lakehouse.landing import drop_days

    days = drop_days(cfg, "events")
    if not days:
        raise SystemExit(f"error: no events drops under {cfg.landing_uri}; run `make demo` first.")
    deadline = time.monotonic() + 300
    while not any(d.get("dag_id") == DAG_ID for d in airflow_json(env, "dags", "list")):
        if time.monotonic() > deadline:
            raise SystemExit("error: the dag-processor did not parse dags/ within 5 minutes.")
        time.sleep(5)
    print(f"backfilling {days[0]}..{days[-1]} through the scheduler (reruns the days) ...", file=sys.stderr)
    created_at = datetime.datetime.now(datetime.UTC)
    created = airflow(env, "backfill", "create", "--dag-id", DAG_ID, "--from-date", days[0], "--to-date", days[-1],
                      "--max-active-runs", "1", "--reprocess-behavior", "completed")
    if created.returncode != 0:
        raise SystemExit(f"error: `airflow backfill create` failed: {created.stderr.strip().splitlines()[-1:]}")
    deadline = time.monotonic() + seconds
    while True:
        runs = {r["logical_date"][:10]: r for r in airflow_json(env, "dags", "list-runs", DAG_ID)}
        done = [ds for ds in days if ds in runs and runs[ds]["state"] in ("success", "failed")
                and runs[ds]["start_date"] and datetime.datetime.fromisoformat(runs[ds]["start_date"]) >= created_at]
        if len(done) == len(days):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the backfill did not finish within {seconds / 60:.0f} minutes: "
                             f"{ {ds: runs.get(ds, {}).get('state') for ds in days} }")
        time.sleep(15)


# --- the pages ------------------------------------------------------------------------------------------

def mlflow_pages(cfg: FactoryConfig, url: str, browser: Browser) -> list[str]:
    """Screenshots of the day's runs, a step run's metrics and artifacts, and the registry."""
    import mlflow

    client = mlflow.MlflowClient(cfg.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`factory.step` = 'embed'", order_by=["start_time DESC"],
                              max_results=1)
    if not runs:
        return [f"no embed step run in the MLflow experiment {cfg.mlflow.experiment}"]
    step = runs[0]
    ds, parent_id = step.data.tags["factory.ds"], step.data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    exp, run = experiment.experiment_id, step.info.run_id
    day_filter = urllib.parse.quote(f"tags.`factory.ds` = '{ds}'")
    day_runs = f"{url}/#/experiments/{exp}/runs?searchFilter={day_filter}"
    # Nested runs start collapsed: click the expander in the parent run's row, as a user would.
    browser.open(day_runs, [parent.info.run_name])
    clicked = browser.evaluate(f"""(() => {{
        const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === {json.dumps(parent.info.run_name)});
        const row = link && (link.closest('[role="row"]') || link.parentElement.parentElement);
        const button = row && row.querySelector('button');
        if (!button) return false;
        button.click();
        return true; }})()""")
    failures = [] if clicked else [f"no expander in the row of {parent.info.run_name} on {day_runs}"]
    failures += page(browser, None, "mlflow-day-runs.png",
                     list(dict.fromkeys([parent.info.run_name] + [c.info.run_name for c in children])))
    # The step logs more metrics than one screen holds: filter the charts as a user would, in the page's
    # own search box, to the two headline counts.
    browser.open(f"{url}/#/experiments/{exp}/runs/{run}/model-metrics", [step.info.run_name, "Search metric charts"])
    browser.evaluate("""(() => {
        const input = document.querySelector('input[placeholder="Search metric charts"]');
        if (!input) return false;
        Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(input, '_embedded');
        input.dispatchEvent(new Event('input', {bubbles: true}));
        return true; })()""")
    failures += page(browser, None, "mlflow-step-metrics.png", [step.info.run_name, "users_embedded", "items_embedded"])
    plot = next((a.path for a in client.list_artifacts(run, "plots") if a.path.endswith(".png")), "")
    failures += page(browser, f"{url}/#/experiments/{exp}/runs/{run}/artifacts/{plot}", "mlflow-step-artifacts.png",
                     [step.info.run_name, plot.rsplit("/", 1)[-1] or "a .png plot"])
    aliases = client.get_registered_model(cfg.mlflow.registered_model).aliases
    failures += page(browser, f"{url}/#/models/{cfg.mlflow.registered_model}", "mlflow-registry.png",
                     [cfg.mlflow.registered_model, *aliases])
    return failures


def airflow_pages(url: str, browser: Browser) -> list[str]:
    from jobs.steps import STEP_NAMES

    return page(browser, f"{url}/dags/{DAG_ID}", "airflow-backfill-grid.png", [DAG_ID, *STEP_NAMES])


def page(browser: Browser, url: str | None, image: str, expected: list[str]) -> list[str]:
    """Open `url` (None: stay on the page shown), wait until its rendered text shows every `expected`
    name (or 90 s), screenshot it into docs/img/`image`; a name still missing is a failed check."""
    text = browser.open(url, expected)
    path = browser.out / image
    browser.screenshot(path)
    shrink(path)
    missing = [name for name in expected if name not in text]
    print(f"{image}: {path.stat().st_size // 1024} KB, {'checked' if not missing else 'MISSING ' + ', '.join(missing)}",
          file=sys.stderr)
    return [f"{image} ({url}) does not show {', '.join(missing)}"] if missing else []


class Browser:
    """Headless Chromium driven over the DevTools protocol: open a page, wait for its scripts to
    render what we expect, read its text, take a screenshot."""

    def __init__(self, port: int, profile: str, out: Path):
        from websockets.sync.client import connect

        self.out = out
        self.process = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WINDOW}",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                    pages = [t for t in json.load(answer) if t["type"] == "page"]
                if pages:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("error: headless chromium did not start (apt-get install chromium).")
            time.sleep(1)
        self.connection = contextlib.ExitStack()
        self.socket = self.connection.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None))
        self.calls = 0
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str | None, expected: list[str], seconds: float = 90) -> str:
        if url:
            self.call("Page.navigate", url=url)
        deadline, text = time.monotonic() + seconds, ""
        while time.monotonic() < deadline:
            time.sleep(2)
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(name in text for name in expected):
                time.sleep(3)  # charts and images finish drawing
                break
        return self.evaluate("document.body ? document.body.innerText : ''") or text

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def shrink(path: Path) -> None:
    """Keep a screenshot under MAX_PNG_BYTES: a 256-colour palette is plenty for a UI."""
    if path.stat().st_size <= MAX_PNG_BYTES:
        return
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
