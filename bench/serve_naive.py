"""The baseline for bench/serve.py: what a user writes without mlci.

A FastAPI app with a pydantic request body and a sync `def` endpoint (FastAPI runs it in its thread pool)
doing one torch forward per request. Run: python3 bench/serve_naive.py ARTIFACT PORT
(No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations at runtime.)
"""

import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from mlci.artifacts import load_model


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def naive_app(artifact: Path) -> FastAPI:
    model, manifest = load_model(artifact)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, req: InferRequest) -> dict:
        t = req.inputs[0]
        x = torch.tensor(t.data, dtype=torch.float32).reshape(t.shape)
        with torch.no_grad():
            y = model(x)
        return {
            "model_name": name,
            "model_version": str(manifest["version"]),
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.flatten().tolist()}],
        }

    return app


if __name__ == "__main__":
    uvicorn.run(naive_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
