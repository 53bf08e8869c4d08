"""Privacy at the institution: DP-SGD and the budget ledger, CKKS (`he`), the audit log."""
