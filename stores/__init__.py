"""The team's shared stores on one machine: a private PostgreSQL cluster, an MLflow tracking server
on it (with proxied artifacts, optionally basic auth), beside the DVC remote the project is
configured for. `python -m stores up|down|status|env` (`make stores`, `make stores-stop`).

Nothing here is imported by the pipeline or the service: they reach the stores by environment
alone (MLFLOW_TRACKING_URI, the DVC remote), as they would a team's real servers.
"""
