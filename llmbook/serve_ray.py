"""The sentiment classifier as a Ray Serve deployment with an autoscaling policy.

Taught in the deployment chapter (``notebooks/13_deployment.ipynb``, section 4).

The same file runs on a laptop and on a multi-node Ray cluster without a change: Ray Serve places
the replicas wherever the cluster has free CPUs, and its proxy on every node routes HTTP requests to
them. On a laptop::

    import ray
    from ray import serve
    from llmbook.serve_ray import build_app

    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app("runs/deploy/model"), name="sentiment", route_prefix="/")

On a cluster, with ``LLMBOOK_SERVE_MODEL_DIR`` pointing at a folder every node can read (a shared
file system, or a path the nodes' setup copies the model to) and ``LLMBOOK_API_TOKENS`` set::

    serve run llmbook.serve_ray:app

Each replica loads the ONNX model of :func:`llmbook.serve.save_model_dir` once, checks the bearer
token in constant time, and batches concurrent requests with ``@serve.batch`` (Ray's own micro-
batcher). The autoscaler adds a replica when the ongoing requests per replica stay above
``target_ongoing_requests`` for ``upscale_delay_s`` and removes one after ``downscale_delay_s`` below it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ray import serve

from llmbook.serve import _token_matches, load_model_dir, load_tokens, mask_pii

__all__ = ["AUTOSCALING", "SentimentDeployment", "build_app", "replica_count"]

AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2.0,
    "downscale_delay_s": 8.0,
    "look_back_period_s": 2.0,
}
"""The autoscaling policy: scale between 1 and 3 replicas, aiming at 2 requests in flight per replica.

The short delays suit a demonstration that lasts a minute; production services use longer ones
(Ray's defaults: 30 s up, 600 s down) so that a short burst does not start and stop replicas."""


@serve.deployment(autoscaling_config=AUTOSCALING, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16)
class SentimentDeployment:
    """One replica: the ONNX model (one thread), a token check, Ray's batching of concurrent requests."""

    def __init__(self, model_dir: str, tokens: list[str] | None = None, threads: int = 1) -> None:
        self.model = load_model_dir(model_dir, threads=threads)
        self.tokens = [t.encode() for t in (tokens or load_tokens())]
        self.replica = os.getpid()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        probs = self.model.predict(texts)
        labels = self.model.labels
        return [{"label": labels[int(p.argmax())], "score": round(float(p.max()), 6)} for p in probs]

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return JSONResponse({"error": "missing bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if not _token_matches(token.strip(), self.tokens):
            return JSONResponse({"error": "invalid token"}, status_code=403)
        try:
            payload = await request.json()
            texts = payload["texts"]
        except Exception:  # no stack trace for a malformed body
            return JSONResponse({"error": "send JSON {\"texts\": \"...\"}"}, status_code=422)
        texts = [texts] if isinstance(texts, str) else texts
        if (not isinstance(texts, list) or not texts or len(texts) > 32
                or not all(isinstance(t, str) and t.strip() and len(t) <= 1000 for t in texts)):
            return JSONResponse({"error": "texts must be 1-32 non-empty strings of at most 1000 characters"},
                                status_code=422)
        results = await asyncio.gather(*(self.classify(text) for text in texts))
        return JSONResponse({"model_version": self.model.version, "replica": self.replica, "results": results},
                            headers={"X-Model-Version": self.model.version})

    def masked(self, text: str) -> str:
        """What a log line may contain of a text (personal data masked)."""
        return mask_pii(text)


def build_app(model_dir: str | os.PathLike, tokens: list[str] | None = None, *,
              autoscaling: dict[str, Any] | None = None, num_cpus: float = 0.5, threads: int = 1) -> Any:
    """The bound Ray Serve application for ``serve.run`` (optionally with another autoscaling policy)."""
    deployment = SentimentDeployment
    if autoscaling is not None or num_cpus != 0.5:
        deployment = deployment.options(autoscaling_config={**AUTOSCALING, **(autoscaling or {})},
                                        ray_actor_options={"num_cpus": num_cpus})
    return deployment.bind(str(model_dir), tokens, threads)


def replica_count(app_name: str = "sentiment") -> int:
    """Number of RUNNING replicas of the application's deployment (from ``serve.status()``)."""
    status = serve.status().applications.get(app_name)
    if status is None:
        return 0
    return sum(int(d.replica_states.get("RUNNING", 0)) for d in status.deployments.values())


def _app_from_environment() -> Any:
    folder = os.environ.get("LLMBOOK_SERVE_MODEL_DIR")
    if not folder:
        return None  # importing the module (docs, tests) must not need a model
    return build_app(folder)


app = _app_from_environment()
"""For ``serve run llmbook.serve_ray:app`` (reads ``LLMBOOK_SERVE_MODEL_DIR`` and ``LLMBOOK_API_TOKENS``)."""
