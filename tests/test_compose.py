"""docker-compose.yml, the Dockerfile and infra/ checked without a container engine (none exists in CI).

Three layers: Debian's docker-compose v1 `config -q` when it is on PATH (interpolation with the example
env file, plus its own schema); the Compose Specification's JSON schema (vendored in tests/data); and
the promises the files make: loopback-only ports, credentials only from ${VAR}s that
infra/compose.env.example defines, one image for every service that runs factory code, and
configuration that jobs.config accepts and that agrees across compose, the cluster TOML and Kubernetes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from jobs.config import ENV_PREFIX, as_dict, load_config
from tests import REPO

ROOT = REPO
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
INFRA = ROOT / "infra"
ENV_EXAMPLE = INFRA / "compose.env.example"
CLUSTER_TOML = INFRA / "factory.cluster.toml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

FACTORY_IMAGE = "embedding-factory:local"
FACTORY_CONFIG_IN_IMAGE = "/opt/factory/infra/factory.cluster.toml"
# Services started from the image built from ./Dockerfile, and those that run the factory's code
# (they need the cluster config and the lake's credentials).
FACTORY_IMAGE_SERVICES = {
    "mlflow", "spark-master", "spark-worker", "ray-head", "ray-worker",
    "airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
}
FACTORY_CODE_SERVICES = FACTORY_IMAGE_SERVICES - {"mlflow"}
THIRD_PARTY_SERVICES = {"postgres", "minio", "minio-init"}

# ${VAR}, ${VAR:-default}, ${VAR:?error} ...; "$${VAR}" is an escaped dollar for the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|FERNET|TOKEN|_KEY$")
URL_USERINFO = re.compile(r"://([^:/@\s]+):([^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture
def no_factory_env(monkeypatch):
    """The test process's own FACTORY__ variables must not leak into config loading."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX) or n == "FACTORY_CONFIG"]:
        monkeypatch.delenv(name)


def _strings(node):
    """Every string anywhere in a parsed YAML document (keys included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
def test_docker_compose_accepts_the_file_with_the_example_env():
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_compose_file_satisfies_the_compose_specification_schema(compose):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_expected_services_exist(compose):
    assert set(compose["services"]) == FACTORY_IMAGE_SERVICES | THIRD_PARTY_SERVICES


def test_every_published_port_binds_to_loopback(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port!r} beyond loopback"


def test_services_running_factory_code_use_the_image_built_from_the_dockerfile(compose):
    assert DOCKERFILE.is_file()
    for name in FACTORY_IMAGE_SERVICES:
        service = compose["services"][name]
        assert service["image"] == FACTORY_IMAGE, name
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
    for name in THIRD_PARTY_SERVICES:
        assert "build" not in compose["services"][name], name


def test_every_variable_is_interpolated_from_the_env_example(compose, env_example):
    text = COMPOSE.read_text()
    used = set(VARIABLE.findall(text))
    assert used, "docker-compose.yml should take its credentials from variables"
    assert used <= set(env_example), f"not in {ENV_EXAMPLE.name}: {sorted(used - set(env_example))}"
    # Only the ${VAR} form: a bare $NAME is easy to misread as the container shell's variable.
    assert not re.findall(r"(?<!\$)\$(?![{$])", text.replace("$$", "")), "use ${VAR} or $$ escapes only"


def test_credentials_come_only_from_variables(compose):
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert VARIABLE.fullmatch(value), f"{name}: {key} must be a ${{VAR}} from the env file"
    for text in _strings(compose):
        for user, password in URL_USERINFO.findall(text):
            assert VARIABLE.fullmatch(user) and VARIABLE.fullmatch(password), f"literal credentials in {text!r}"


def test_env_example_holds_only_placeholder_secrets(env_example):
    for key, value in env_example.items():
        if SECRET_NAME.search(key) and not key.endswith("_ID"):
            assert value == "" or value.startswith("change-me"), f"{key} looks like a real secret"


def test_cluster_config_loads_and_makes_every_component_remote(no_factory_env):
    cfg = load_config(CLUSTER_TOML)
    assert cfg.spark.master.startswith("spark://")
    assert cfg.ray.address.startswith("ray://")
    assert cfg.mlflow_tracking_uri.startswith("http://")
    assert cfg.mlflow_artifact_uri.startswith("mlflow-artifacts:")
    for uri in (cfg.lake_uri, cfg.landing_uri, cfg.ray_storage_uri):
        assert uri.startswith("s3://"), uri


def test_cluster_config_commits_safely_on_s3_with_conditional_puts(no_factory_env):
    options = load_config(CLUSTER_TOML).lake.storage_options
    assert options.get("aws_conditional_put") == "etag"
    assert not {k for k in options if k.upper() == "AWS_S3_ALLOW_UNSAFE_RENAME"}  # it voids concurrent-writer safety


def test_compose_endpoints_agree_with_the_cluster_config(compose, no_factory_env):
    from_file = as_dict(load_config(CLUSTER_TOML))
    for name in FACTORY_CODE_SERVICES:
        env = _environment(compose["services"][name])
        assert env.get("FACTORY_CONFIG") == FACTORY_CONFIG_IN_IMAGE, name
        overrides = {k[len(ENV_PREFIX):].replace("__", ".").lower(): v
                     for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert overrides, name
        assert as_dict(load_config(CLUSTER_TOML, overrides)) == from_file, name


def test_dockerfile_copies_only_existing_files_and_runs_as_non_root():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^USER factory$", text, re.M)
    assert 'ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu' in text
    assert '--extra-index-url "${TORCH_INDEX_URL}" -c requirements.lock .' in text
    copies = re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M)
    sources = [src for line in copies for src in line.split()]
    assert f"infra/{CLUSTER_TOML.name}" in sources
    missing = [src for src in sources if not (ROOT / src).exists()]
    assert not missing, f"the Dockerfile copies files that do not exist: {missing}"


def test_kubernetes_manifests_pin_the_installed_versions_and_one_image():
    ray_cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    airflow = yaml.safe_load((INFRA / "airflow" / "values.yaml").read_text())
    mlflow = yaml.safe_load((INFRA / "mlflow" / "values.yaml").read_text())
    assert ray_cluster["spec"]["rayVersion"] == metadata.version("ray")
    assert airflow["airflowVersion"] == metadata.version("apache-airflow")
    head = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [c for g in ray_cluster["spec"]["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    images = {head["image"], *(c["image"] for c in workers),
              f"{airflow['images']['airflow']['repository']}:{airflow['images']['airflow']['tag']}",
              f"{airflow['defaultAirflowRepository']}:{airflow['defaultAirflowTag']}",
              f"{mlflow['image']['repository']}:{mlflow['image']['tag']}"}
    assert len(images) == 1, images
    env = {e["name"]: e.get("value") for e in airflow["env"]}
    assert env["FACTORY_CONFIG"] == FACTORY_CONFIG_IN_IMAGE


def test_spark_hadoop_aws_matches_the_hadoop_bundled_with_pyspark():
    import pyspark

    conf = (INFRA / "spark" / "spark-defaults.conf").read_text()
    wanted = re.search(r"^spark\.jars\.packages\s+org\.apache\.hadoop:hadoop-aws:(\S+)$", conf, re.M).group(1)
    bundled = [p.name for p in (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar")]
    assert bundled == [f"hadoop-client-api-{wanted}.jar"]


def test_postgres_init_creates_the_databases_the_services_use(compose):
    created = set(re.findall(r"CREATE DATABASE (\w+);", (INFRA / "postgres" / "init.sql").read_text()))
    used = {m for text in _strings(compose) for m in re.findall(r"@postgres:5432/(\w+)", text)}
    assert used == created == {"airflow", "mlflow"}
