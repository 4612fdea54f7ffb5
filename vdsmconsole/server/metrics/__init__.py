"""Prometheus metrics: ``GET /metrics`` on the port, and a plain loopback
listener for a local scraper (``[metrics] port``)."""
