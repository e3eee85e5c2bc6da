"""The gated rolling deploy: which run, where, through which playbook, and what the ledger records."""
