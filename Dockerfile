# One image for every service of the factory's cluster (docker-compose.yml, infra/kuberay, infra/*/values.yaml):
# Airflow's api-server, scheduler and dag-processor, the MLflow server, Spark master/workers and Ray
# head/workers. A task, a Spark executor and a Ray worker then run the same Python, the same pinned
# packages and the same code, which Spark's Python workers and Ray's client mode both require.
#
#   docker build -t embedding-factory:local .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t embedding-factory:cuda .
FROM python:3.11-slim-bookworm

# Java 17 runs Spark 4's JVM (pyspark ships the jars and bin/spark-class, not a JRE). procps: Spark's
# launch scripts call ps. wget: compose healthchecks and KubeRay's readiness/liveness probes use it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps wget \
 && rm -rf /var/lib/apt/lists/*

# torch==2.13.0 is pinned in requirements.lock. On PyPI the Linux x86_64 wheel of torch==2.13.0 is the
# CUDA build and pulls several GB of nvidia-* wheels; the PyTorch CPU index serves 2.13.0+cpu, which
# satisfies the same pin (a local version label matches ==2.13.0) and is preferred over the plain
# version. Point TORCH_INDEX_URL at a CUDA index (e.g. .../whl/cu128) for a GPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/factory

# Dependencies first, in a layer that changes only with pyproject.toml / requirements.lock: the
# package directories are empty stand-ins here and the real code is installed on top below.
# Cluster-only clients, not in requirements.lock because a local run needs none of them:
#   ray[default]     the dashboard and dashboard agent (KubeRay's probes call the agent's health endpoint)
#   psycopg2-binary  Airflow's and MLflow's Postgres backends
#   boto3            MLflow's S3 artifact store
COPY pyproject.toml requirements.lock README.md ./
RUN mkdir jobs models && touch jobs/__init__.py models/__init__.py \
 && pip install --extra-index-url "${TORCH_INDEX_URL}" -c requirements.lock . \
        "ray[default]==2.60.0" "psycopg2-binary==2.9.13" "boto3==1.44.5" \
 && rm -rf jobs models build ./*.egg-info

COPY jobs/ jobs/
COPY models/ models/
RUN pip install --no-deps -c requirements.lock . && rm -rf build ./*.egg-info

COPY dags/ dags/
COPY factory.toml ./
# The cluster config and Spark's S3A settings travel with the image so Kubernetes pods need no mounts.
COPY infra/factory.cluster.toml infra/
COPY infra/spark/ infra/spark/

# Everything the factory writes goes under /var/lib/factory (a volume in compose); the code stays read-only.
RUN useradd --create-home --uid 1000 --user-group factory \
 && mkdir -p /var/lib/factory/airflow /var/lib/factory/spark-work \
 && chown -R factory:factory /var/lib/factory

# SPARK_HOME: pyspark's own tree (bin/spark-class, jars/); its scripts are also on PATH via pip.
# PYSPARK_PYTHON: executors must run this interpreter, the one with the factory's packages.
# FACTORY__PATHS__STATE_DIR overrides [paths] state_dir of any config file, so the default
# factory.toml and infra/factory.cluster.toml both write to the volume; AIRFLOW_HOME matches
# FactoryConfig.airflow_home (<state_dir>/airflow). Compose and Helm set FACTORY_CONFIG to the
# cluster file; the default here runs everything embedded, like `make demo`.
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    SPARK_WORKER_DIR=/var/lib/factory/spark-work \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python \
    FACTORY_CONFIG=/opt/factory/factory.toml \
    FACTORY__PATHS__STATE_DIR=/var/lib/factory \
    AIRFLOW_HOME=/var/lib/factory/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/factory/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

USER factory
CMD ["factory", "--help"]
