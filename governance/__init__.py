"""Data governance: personal identifiers in tabular data (`pii`)."""
