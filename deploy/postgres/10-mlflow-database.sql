-- Run by the postgres image once, when its data volume is created (compose.yaml mounts this folder at
-- /docker-entrypoint-initdb.d). POSTGRES_DB already created the service database (prediction log, feedback,
-- jobs); this adds MLflow's backend store (runs, registry) beside it, owned by the same user.
CREATE DATABASE mlflow OWNER incomeops;
