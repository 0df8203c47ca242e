"""A rolling replacement of replicas behind HAProxy (deploy/replicas.py)."""
