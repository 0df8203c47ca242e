"""Monitoring for the digit service: Prometheus config, rules, alerts, a Grafana dashboard."""
