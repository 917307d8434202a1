-- Separate databases for Dagster's instance and MLflow's tracking store.
CREATE DATABASE dagster OWNER quadra;
CREATE DATABASE mlflow OWNER quadra;
