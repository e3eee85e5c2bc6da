"""Rolling out to the inventory's serving hosts, and asking them what they serve."""
