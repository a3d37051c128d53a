"""The gateway's routes by concern, each an APIRouter that app.py includes:
runs (start, list, stop, resume, metrics), evals, ops (Prometheus, health,
presets) and pages (the dashboard)."""
