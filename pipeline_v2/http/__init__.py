"""The daemon's HTTP seam: JSON status API, health, Prometheus metrics (dashboard pages later)."""
