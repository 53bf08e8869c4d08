"""Researcher tools: the simulation runner, baselines, privacy audits, pilot data, plots.

The partitioners (aidmp.tasks.partition) and the governance scenarios
(aidmp.governance.scenarios) live in library packages, since a node uses them too.
"""
