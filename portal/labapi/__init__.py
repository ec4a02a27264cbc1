"""The lab-facing JSON API: signed status events from labs (openapi/lab-api.yaml)."""
