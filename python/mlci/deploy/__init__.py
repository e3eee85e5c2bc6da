"""Deploying the model server to serving hosts."""
