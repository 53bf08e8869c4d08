"""Privacy at the institution: DP-SGD and the budget ledger (`dp`), CKKS (`he`), audit log.

Empty until the differential-privacy and encryption issues land; see README's status.
"""
