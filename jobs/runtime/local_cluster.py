"""`factory cluster up|down|status`: a real Spark standalone cluster and a two-node Ray on this machine.

`up` starts a Spark master and one worker (the launch classes ship in the pyspark wheel's bin/) and a
Ray head plus a second Ray node (`ray start --block`), all on 127.0.0.1, and waits until the master
has an alive worker and Ray has two alive nodes. Addresses come from the config only: spark.master
("spark://127.0.0.1:PORT") and ray.address ("127.0.0.1:PORT"); the other ports, the worker's size
and Ray's private temp dir from [local_cluster]. No Ray default port is used, so other Ray instances
on the machine are never touched.

Every process is started in a session of its own; its pid (and start time, against pid reuse) goes
to <state_dir>/cluster/pids.json. `down` stops exactly those process groups, then any process left
under this cluster's Ray temp dir (Ray's workers), and removes the pid file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from jobs.config import FactoryConfig
from jobs.errors import FactoryError

LOCALHOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 20.0
PORTS_PER_RAY_NODE = 100  # 10 service ports, then 90 worker ports
RAY_NODES = 2


@dataclass(frozen=True)
class ClusterPlan:
    """What `up` starts, derived from the config."""

    spark_port: int
    spark_webui_port: int
    ray_port: int
    ray_temp_dir: str
    folder: Path  # pid file and process logs

    @property
    def spark_master(self) -> str:
        return f"spark://{LOCALHOST}:{self.spark_port}"

    @property
    def ray_address(self) -> str:
        return f"{LOCALHOST}:{self.ray_port}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "pids.json"


def plan(cfg: FactoryConfig) -> ClusterPlan:
    """The local cluster the config describes; a one-line error when the config names no local cluster."""
    master = cfg.spark.master
    if not master.startswith(f"spark://{LOCALHOST}:"):
        raise FactoryError(f"spark.master is {master!r}; a local cluster needs spark://{LOCALHOST}:PORT "
                           "(see infra/factory.local-cluster.toml).")
    address = cfg.ray.address
    if not address.startswith(f"{LOCALHOST}:"):
        raise FactoryError(f"ray.address is {address!r}; a local cluster needs {LOCALHOST}:PORT "
                           "(see infra/factory.local-cluster.toml).")
    try:
        spark_port, ray_port = int(master.rsplit(":", 1)[1]), int(address.rsplit(":", 1)[1])
    except ValueError:
        raise FactoryError(f"spark.master {master!r} and ray.address {address!r} must end in a port number.") from None
    local = cfg.local_cluster
    return ClusterPlan(spark_port, local.spark_webui_port, ray_port,
                       local.ray_temp_dir or f"/tmp/factory-ray-{ray_port}", cfg.state_dir / "cluster")


# --- up ---------------------------------------------------------------------------------------

def up(cfg: FactoryConfig, progress=lambda line: None) -> dict:
    """Start the cluster and wait until it is ready; return status(). Fails, stopping what it started,
    when Java is missing, a port is busy or a process does not come up."""
    p = plan(cfg)
    if any(_alive(info) for info in _recorded(p).values()):
        raise FactoryError(f"a local cluster is already up (pids in {p.pid_file}); `factory cluster down` first.")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise FactoryError("Java is missing: Spark's master and worker need a JRE (apt-get install openjdk-17-jre-headless).")
    _check_ports_free(cfg, p)
    p.folder.mkdir(parents=True, exist_ok=True)
    started: dict[str, dict] = {}
    try:
        for name, command in _commands(cfg, p):
            started[name] = _start(p, name, command)
            _write_pids(p, started)
            if name == "spark-master":
                _wait(lambda: _port_open(p.spark_port), f"the Spark master on port {p.spark_port}", p, name)
            elif name == "ray-head":
                _wait(lambda: _port_open(p.ray_port), f"the Ray head on port {p.ray_port}", p, name)
            progress(f"started {name} (pid {started[name]['pid']})")
        _wait(lambda: _spark_workers(p) >= 1, "an alive Spark worker", p, "spark-worker")
        _wait(lambda: _ray_nodes(p) >= RAY_NODES, f"{RAY_NODES} alive Ray nodes", p, "ray-node-2")
    except BaseException:
        _stop_all(p, started)
        raise
    return status(cfg)


def _commands(cfg: FactoryConfig, p: ClusterPlan) -> list[tuple[str, list[str]]]:
    local = cfg.local_cluster
    spark_class = str(_pyspark_home() / "bin" / "spark-class")
    ray = str(Path(sys.executable).parent / "ray")
    commands = [
        ("spark-master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", LOCALHOST,
                          "--port", str(p.spark_port), "--webui-port", str(p.spark_webui_port)]),
        ("spark-worker", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", LOCALHOST,
                          "--cores", str(local.spark_worker_cores), "--memory", local.spark_worker_memory,
                          "--webui-port", str(p.spark_webui_port + 1), "--work-dir", str(p.folder / "spark-work"),
                          p.spark_master]),
    ]
    for node in range(RAY_NODES):
        base = local.ray_port_base + PORTS_PER_RAY_NODE * node
        where = ["--head", "--port", str(p.ray_port), "--ray-client-server-port", str(base)] if node == 0 \
            else ["--address", p.ray_address]
        commands.append(("ray-head" if node == 0 else f"ray-node-{node + 1}", [
            ray, "start", "--block", *where, "--node-ip-address", LOCALHOST, "--temp-dir", p.ray_temp_dir,
            "--num-cpus", str(local.ray_node_cpus), "--object-store-memory", str(local.ray_object_store_mb * 1024**2),
            "--resources", json.dumps({f"factory_node_{node + 1}": 1}), "--disable-usage-stats",
            "--node-manager-port", str(base + 1), "--object-manager-port", str(base + 2),
            "--dashboard-agent-listen-port", str(base + 3), "--dashboard-agent-grpc-port", str(base + 4),
            "--metrics-export-port", str(base + 5), "--runtime-env-agent-port", str(base + 6),
            "--min-worker-port", str(base + 10), "--max-worker-port", str(base + PORTS_PER_RAY_NODE - 1),
            *(["--include-dashboard", "false"] if node == 0 else []),
        ]))
    return commands


def _pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _check_ports_free(cfg: FactoryConfig, p: ClusterPlan) -> None:
    wanted = {p.spark_port: "spark.master", p.spark_webui_port: "local_cluster.spark_webui_port",
              p.spark_webui_port + 1: "local_cluster.spark_webui_port + 1 (the worker's UI)",
              p.ray_port: "ray.address"}
    for node in range(RAY_NODES):
        base = cfg.local_cluster.ray_port_base + PORTS_PER_RAY_NODE * node
        wanted.update({port: f"local_cluster.ray_port_base + {port - cfg.local_cluster.ray_port_base}"
                       for port in (base, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6)})
    for port, setting in wanted.items():
        if not _port_bindable(port):
            raise FactoryError(f"port {port} ({setting}) is busy on {LOCALHOST}: stop what uses it or pick "
                               "other ports in the config.")


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not busy
        try:
            s.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((LOCALHOST, port)) == 0


def _start(p: ClusterPlan, name: str, command: list[str]) -> dict:
    log = open(p.folder / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    env = {**os.environ, "SPARK_LOG_DIR": str(p.folder), "SPARK_NO_DAEMONIZE": "1",
           "PYSPARK_PYTHON": sys.executable, "RAY_USAGE_STATS_ENABLED": "0",
           # 127.0.0.1 only: no token (Ray 2.60's `ray start --head` would otherwise write ~/.ray/auth_token).
           "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, env=env)
    log.close()
    return {"pid": process.pid, "started": psutil.Process(process.pid).create_time(), "command": command[:3]}


def _wait(ready, what: str, p: ClusterPlan, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return
        for process, info in _recorded(p).items():
            if not _alive(info):
                raise FactoryError(f"{process} exited while waiting for {what}; see {p.folder / (process + '.log')}.")
        time.sleep(1.0)
    raise FactoryError(f"timed out after {START_TIMEOUT_SECONDS:.0f} s waiting for {what}; "
                       f"see {p.folder / (name + '.log')}.")


# --- status -------------------------------------------------------------------------------------

def status(cfg: FactoryConfig) -> dict:
    """What is running: our recorded processes, the Spark master's alive workers, Ray's alive nodes."""
    p = plan(cfg)
    processes = {name: _alive(info) for name, info in _recorded(p).items()}
    up_now = bool(processes) and all(processes.values())
    return {"spark_master": p.spark_master, "spark_ui": f"http://{LOCALHOST}:{p.spark_webui_port}",
            "ray_address": p.ray_address, "processes": processes,
            "spark_alive_workers": _spark_workers(p) if up_now else 0,
            "ray_alive_nodes": _ray_nodes(p) if up_now else 0}


def spark_master_state(p: ClusterPlan) -> dict:
    """The master's JSON status (workers, active and completed applications), {} when unreachable."""
    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{p.spark_webui_port}/json/", timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def _spark_workers(p: ClusterPlan) -> int:
    return int(spark_master_state(p).get("aliveworkers", 0))


def _ray_nodes(p: ClusterPlan) -> int:
    """Alive Ray nodes, asked from a child process (this one must not stay connected to the cluster)."""
    probe = (f"import ray; ray.init(address={p.ray_address!r}, log_to_driver=False, configure_logging=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0


# --- down ---------------------------------------------------------------------------------------

def down(cfg: FactoryConfig) -> list[str]:
    """Stop what `up` started (and only that); return the names stopped. Nothing recorded: nothing to do."""
    p = plan(cfg)
    recorded = _recorded(p)
    stopped = _stop_all(p, recorded)
    return stopped


def _stop_all(p: ClusterPlan, recorded: dict[str, dict]) -> list[str]:
    stopped = []
    for name, info in reversed(list(recorded.items())):  # Ray's second node and Spark's worker first
        if _alive(info):
            _stop_group(info["pid"])
            stopped.append(name)
    for process in _processes_under(p.ray_temp_dir):  # Ray workers that left the nodes' process groups
        _kill(process)
    p.pid_file.unlink(missing_ok=True)
    return stopped


def _stop_group(pid: int) -> None:
    with _ignore_gone():
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.3)
    with _ignore_gone():
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    for process in psutil.process_iter(["pid"]):
        with _ignore_gone():
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _processes_under(temp_dir: str) -> list[psutil.Process]:
    """Processes of this user whose command line names this cluster's Ray temp dir."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "uids"]):
        with _ignore_gone():
            if process.pid != os.getpid() and any(temp_dir in part for part in process.info["cmdline"] or ()):
                found.append(process)
    return found


def _kill(process: psutil.Process) -> None:
    with _ignore_gone():
        process.kill()


class _ignore_gone:
    """A process that ended meanwhile (or one we may not signal) is not an error when stopping."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError, psutil.Error))


def _alive(info: dict) -> bool:
    try:
        process = psutil.Process(info["pid"])
        return abs(process.create_time() - info["started"]) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _recorded(p: ClusterPlan) -> dict[str, dict]:
    if not p.pid_file.exists():
        return {}
    return json.loads(p.pid_file.read_text())


def _write_pids(p: ClusterPlan, started: dict[str, dict]) -> None:
    p.pid_file.write_text(json.dumps(started, indent=1))
