"""The model server: Open Inference Protocol (KServe v2) REST over uvicorn, with dynamic batching.

Modules, one job each: protocol (request checks, JSON tensors), loaded (an artifact made servable),
batching (the bounded queue and batch runner), metrics (Prometheus), manager (current/previous model,
hot swap, rollback), app (the inference listener), management (the management listener), runner (both
listeners on one event loop, signals), champion (which artifact to serve by default).
"""
