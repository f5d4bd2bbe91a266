"""Inference Endpoints custom handler for CLIP-M2DF (exported as ``handler.py`` at the root of the model repo).

Request body (JSON)::

    {"inputs": {"query": "<base64 video>" | ["<base64 video>", ...],
                "support_set": {"class name": ["<base64 video>", ...], ...},   # few-shot
                "candidate_labels": ["class name", ...],                      # or zero-shot
                "top_k": 5}}

Response: one ranking ``[{"label", "score", "mode"}, ...]`` per query (a list of rankings when ``query`` is a
list). Videos are base64-encoded files (mp4, avi, ...; optionally as ``data:...;base64,`` URLs).
"""

from __future__ import annotations

import base64
import binascii

from transformers import pipeline


def decode_base64_video(data: str, what: str) -> bytes:
    """Decode one base64 (or data-URL) video; a bad one raises ``ValueError`` naming it."""
    if not isinstance(data, str) or not data:
        raise ValueError(f"{what}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what}: not valid base64 ({err})") from err


class EndpointHandler:
    """Loads the few-shot pipeline from the repository folder and answers JSON requests."""

    def __init__(self, path: str = ""):
        self.pipeline = pipeline("video-classification", model=path or ".", trust_remote_code=True)

    def __call__(self, data: dict) -> list:
        inputs = data.get("inputs", data)
        if not isinstance(inputs, dict) or "query" not in inputs:
            raise ValueError("request must be {'inputs': {'query': <base64 video or list>, 'support_set': {...}}}")
        query = inputs["query"]
        if isinstance(query, list):
            queries = [decode_base64_video(q, f"query {i}") for i, q in enumerate(query)]
        else:
            queries = decode_base64_video(query, "query")
        kwargs = {"top_k": int(inputs.get("top_k", 5))}
        if inputs.get("support_set") is not None:
            support = inputs["support_set"]
            if not isinstance(support, dict):
                raise ValueError("support_set must be an object {class name: [base64 videos]}")
            kwargs["support_set"] = {
                name: [
                    decode_base64_video(v, f"support video {j} of class {name!r}")
                    for j, v in enumerate([videos] if isinstance(videos, str) else videos)
                ]
                for name, videos in support.items()
            }
        if inputs.get("candidate_labels") is not None:
            kwargs["candidate_labels"] = inputs["candidate_labels"]
        return self.pipeline(queries, **kwargs)
