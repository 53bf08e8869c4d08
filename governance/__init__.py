"""Local data governance: the institution's guard before every round.

policy    the institution's YAML policy, validated (pydantic), with line numbers in errors
pii       personal-data detection per column: samples, thresholds, column names
phones    phone numbers with libphonenumber and the site's regions
idnumbers national ID numbers and their checksums (python-stdnum)
names     people's names against a lexicon of Faker's per-locale name lists
textscan  addresses, free text with identifiers inside, and masking it
load      reading CSV and Parquet with clear errors
pipeline  schema, PII, consent, cleaning, outliers, k-anonymity, profile, decision
report    the full local report (JSON, HTML) and the coordinator's aggregate summary
draft     `aidmp govern init`: a first policy inferred from the data, for review
scenarios made-up PII and dirty rows for simulated institutions (demonstrations)
"""
