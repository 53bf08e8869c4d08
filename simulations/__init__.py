"""Researcher tools: partitioners, the in-process simulation runner, reports and plots."""
