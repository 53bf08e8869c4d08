"""Local data governance: the institution's guard before every round.

policy    the institution's YAML policy, validated (pydantic), with line numbers in errors
pii       personal-data detectors: value patterns with checksums, and column names
load      reading CSV and Parquet with clear errors
pipeline  schema, PII, consent, cleaning, outliers, k-anonymity, profile, decision
report    the full local report (JSON, HTML) and the coordinator's aggregate summary
draft     `aidmp govern init`: a first policy inferred from the data, for review
scenarios made-up PII and dirty rows for simulated institutions (demonstrations)
"""
