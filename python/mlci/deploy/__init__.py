"""The gated rolling deploy: which run, where, through which playbook, what the ledger records, and what
each serving host serves."""
