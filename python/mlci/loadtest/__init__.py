"""Load tests: Locust (in its own process) against a model server's URL, gated on the SLO in mlci.toml.

`run_loadtest(config, Target(url=...))` runs one and returns its summary; `read_summary(folder)` reads a
finished one back (what the run report embeds: figures, each check's verdict, the latency histogram).
Nothing here imports Locust or the server: the server is a black box over HTTP.
"""

from __future__ import annotations

from mlci.loadtest.gate import Target, run_loadtest
from mlci.loadtest.summary import read_summary

__all__ = ["Target", "read_summary", "run_loadtest"]
