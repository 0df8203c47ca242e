"""Ways to run the service beyond one `bentoml serve`: replicas behind HAProxy (replicas.py)."""
