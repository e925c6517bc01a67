-- One Postgres server for the cluster, one database per service that needs one.
-- The postgres image runs this once, on the first start of an empty data volume
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER, who therefore owns both databases.
-- The role and its password come from infra/compose.env; nothing secret lives here.
CREATE DATABASE airflow;  -- Airflow 3 metadata (docker-compose: airflow-init runs `airflow db migrate`)
CREATE DATABASE mlflow;   -- MLflow tracking + model registry (the server creates its tables on start)
