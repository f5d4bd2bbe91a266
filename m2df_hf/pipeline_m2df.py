"""Few-shot video classification pipeline for CLIP-M2DF (uploaded to the Hub beside the model).

``pipeline("video-classification", model=..., trust_remote_code=True)`` returns this class for a saved model folder
(from training or export) or its Hub id (``config.json["custom_pipelines"]``). Self-contained: torch, numpy,
transformers and the sibling ``processing_m2df`` only.

Few-shot (the paper's method)::

    pipe(query, support_set={"class name": [video, ...], ...}, top_k=5)
    -> [{"label": "class name", "score": 0.93, "mode": "few-shot"}, ...]

Zero-shot (plain CLIP text-video similarity, *not* the paper's method; results say ``"mode": "zero-shot"``)::

    pipe(query, candidate_labels=["class a", "class b"])

A video is a file path, raw bytes, a ``{"path": ..., "bytes": ...}`` dict (a ``datasets`` ``Video(decode=False)``
row) or a ``uint8`` array ``[T, H, W, 3]``. A list of queries is batched and returns one ranking per query.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Pipeline

from .processing_m2df import M2DFVideoProcessor

FEW_SHOT = "few-shot"
ZERO_SHOT = "zero-shot"
# The model keeps CLIP's towers but not CLIPModel's logit scale; OpenAI CLIP's trained (and clamped) value is 100.
ZERO_SHOT_LOGIT_SCALE = 100.0
DEFAULT_SEED = 0  # the few-shot head's seed when the caller gives none (see __call__)


@dataclass
class _QueryBatch:
    """The queries of one call, kept together so that the base class runs them as one batch."""

    videos: list


@dataclass
class _SupportEmbeddings:
    """What the model needs from a support set, computed once and cached by content."""

    video_embeds: torch.Tensor  # [N*K, T, D]
    labels: torch.Tensor  # [N*K], episode labels 0..N-1 in the support set's class order
    text_embeds: torch.Tensor  # [N, D], prompt embeddings, row i for label i


def describe_video(video) -> str:
    """A short description of a video input for error messages."""
    if isinstance(video, (str, os.PathLike)):
        return repr(os.fspath(video))
    if isinstance(video, (bytes, bytearray, memoryview)):
        return f"<{len(video)} bytes>"
    if isinstance(video, dict):
        return repr(video.get("path")) if video.get("path") else f"<{len(video.get('bytes') or b'')} bytes>"
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return f"<{type(video).__name__} shape {tuple(video.shape)} dtype {video.dtype}>"
    return f"<{type(video).__name__}>"


def check_video(video, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``video`` is a supported, plausible video input."""
    if isinstance(video, (str, os.PathLike)):
        if not os.path.isfile(video):
            raise ValueError(f"{what}: video file not found: {os.fspath(video)!r}")
    elif isinstance(video, (bytes, bytearray, memoryview)):
        if len(video) == 0:
            raise ValueError(f"{what}: empty bytes")
    elif isinstance(video, dict):
        if video.get("bytes"):
            return
        if not video.get("path"):
            raise ValueError(f"{what}: a video dict needs 'path' or 'bytes', got keys {sorted(video)}")
        check_video(video["path"], what)
    elif isinstance(video, (np.ndarray, torch.Tensor)):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype not in (np.uint8, torch.uint8):
            raise ValueError(
                f"{what}: a video array must be uint8 [T, H, W, 3], got {describe_video(video)}"
            )
    else:
        raise ValueError(
            f"{what}: unknown video type {type(video).__name__}; use a file path, bytes, a "
            "{'path'|'bytes'} dict or a uint8 array [T, H, W, 3]"
        )


def video_fingerprint(video) -> str:
    """A content hash of a video input (file bytes, raw bytes or array data), used as a cache key."""
    digest = hashlib.sha1()
    if isinstance(video, dict):
        video = video["bytes"] if video.get("bytes") else video["path"]
    if isinstance(video, (str, os.PathLike)):
        with open(video, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    elif isinstance(video, (bytes, bytearray, memoryview)):
        digest.update(bytes(video))
    else:
        array = video.cpu().numpy() if isinstance(video, torch.Tensor) else video
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class M2DFFewShotVideoClassificationPipeline(Pipeline):
    """Classify query videos among the classes of a support set (CLIP-M2DF), or zero-shot by class names.

    Support embeddings (frame features of the support videos and the class-prompt text embeddings) are computed
    once per support set and cached by content, so calling the pipeline again with the same support set, or with
    many queries, encodes the support videos only once. ``support_cache_size`` support sets are kept.
    """

    _load_tokenizer = True
    _load_feature_extractor = True
    _load_image_processor = False
    _load_video_processor = False
    _load_processor = False
    support_cache_size = 8
    video_batch_size = 32  # videos per backbone call; `pipeline(..., batch_size=n)` overrides it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._support_cache: OrderedDict[str, _SupportEmbeddings] = OrderedDict()

    # ---------------------------------------------------------------------------------------------- public API

    def __call__(
        self,
        videos,
        support_set: dict | None = None,
        candidate_labels=None,
        top_k: int | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        """Rank the support classes (few-shot) or ``candidate_labels`` (zero-shot) for one or more queries.

        Args:
            videos: one query video, or a list of them (batched).
            support_set: ``{class name: [video, ...]}``, the same number of videos for every class.
            candidate_labels: class names for zero-shot mode (a list, or a comma-separated string).
            top_k: how many labels to return per query (default 5, at most the number of classes).
            seed: the seed the few-shot head runs under (default 0). Models whose config samples the prompt at
                evaluation (``pps_eval_mode="sample"``, the ``reference`` preset) draw from it, so the same inputs
                and seed give the same scores; the global torch RNG is left untouched.

        Returns:
            For one query, a list of ``{"label", "score", "mode"}`` sorted by score; for a list, one such list per
            query. Scores sum to 1 over all classes.
        """
        single = not isinstance(videos, (list, tuple))
        batch = _QueryBatch([videos] if single else list(videos))
        results = super().__call__(
            batch, support_set=support_set, candidate_labels=candidate_labels, top_k=top_k, seed=seed, **kwargs
        )
        return results[0] if single else results

    def clear_cache(self) -> None:
        """Forget the cached support embeddings (e.g. after changing the model's weights)."""
        self._support_cache.clear()

    # ------------------------------------------------------------------------------------ Pipeline interface

    def _sanitize_parameters(self, support_set=None, candidate_labels=None, top_k=None, seed=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown pipeline argument(s): {sorted(kwargs)}")
        preprocess = {}
        if support_set is not None:
            preprocess["support_set"] = support_set
        if candidate_labels is not None:
            preprocess["candidate_labels"] = candidate_labels
        postprocess = {}
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            postprocess["top_k"] = int(top_k)
        forward = {"seed": int(seed)} if seed is not None else {}
        return preprocess, forward, postprocess

    def preprocess(self, batch: _QueryBatch, support_set=None, candidate_labels=None):
        if self.tokenizer is None:
            raise ValueError("this pipeline needs the CLIP tokenizer saved with the model (tokenizer files not found)")
        if not batch.videos:
            raise ValueError("no query video given")
        for i, video in enumerate(batch.videos):
            check_video(video, f"query {i} {describe_video(video)}")
        if support_set is not None and candidate_labels is not None:
            raise ValueError("give either support_set (few-shot) or candidate_labels (zero-shot), not both")
        if support_set is None and candidate_labels is None:
            raise ValueError("give support_set={class: [videos]} (few-shot) or candidate_labels=[...] (zero-shot)")

        if candidate_labels is not None:
            labels = self._check_candidate_labels(candidate_labels)
            inputs = {"mode": ZERO_SHOT, "labels": labels, "text": self._tokenize(labels)}
        else:
            classes = self._check_support_set(support_set)
            labels = list(classes)
            key = self._support_key(classes)
            inputs = {"mode": FEW_SHOT, "labels": labels, "support_key": key}
            if key not in self._support_cache:
                videos = [(f"support video {j} of class {c!r}", v) for c in labels for j, v in enumerate(classes[c])]
                inputs["support_pixel_values"] = self._decode(videos)
                inputs["support_labels"] = torch.arange(len(labels)).repeat_interleave(len(classes[labels[0]]))
                inputs["text"] = self._tokenize(labels)
        inputs["query_pixel_values"] = self._decode(
            [(f"query {i} {describe_video(v)}", v) for i, v in enumerate(batch.videos)]
        )
        return inputs

    def _forward(self, inputs, seed: int = DEFAULT_SEED):
        model = self.model
        query_embeds = self._encode_videos(inputs["query_pixel_values"])  # [NQ, T, D]
        if inputs["mode"] == ZERO_SHOT:
            text_embeds = model.get_text_features(**inputs["text"])  # [C, D]
            video = torch.nn.functional.normalize(query_embeds.mean(dim=1), dim=-1)  # [NQ, D]
            text = torch.nn.functional.normalize(text_embeds, dim=-1)
            logits = ZERO_SHOT_LOGIT_SCALE * video @ text.T  # [NQ, C]
        else:
            support = self._support_cache.get(inputs["support_key"])
            if support is None:
                support = _SupportEmbeddings(
                    video_embeds=self._encode_videos(inputs["support_pixel_values"]),
                    labels=inputs["support_labels"].to(query_embeds.device),
                    text_embeds=model.get_text_features(**inputs["text"]),
                )
                self._support_cache[inputs["support_key"]] = support
                while len(self._support_cache) > self.support_cache_size:
                    self._support_cache.popitem(last=False)
            else:
                self._support_cache.move_to_end(inputs["support_key"])
            # A private RNG for the head: a sampled prompt selector (reference preset) is then a function of the
            # inputs and `seed`, and the caller's global RNG stream is unchanged.
            devices = [query_embeds.device] if query_embeds.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                logits = model(
                    support_video_embeds=support.video_embeds,
                    support_labels=support.labels,
                    query_video_embeds=query_embeds,
                    class_text_embeds=support.text_embeds,
                ).logits  # [NQ, N]
        return {"logits": logits.float(), "labels": inputs["labels"], "mode": inputs["mode"]}

    def _encode_videos(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``[B, T, D]``, encoded ``video_batch_size`` videos at a time to bound memory."""
        size = self._batch_size or self.video_batch_size
        return torch.cat([self.model.get_video_features(chunk) for chunk in pixel_values.split(size)])

    def postprocess(self, outputs, top_k: int = 5):
        probs = outputs["logits"].softmax(dim=-1)  # [NQ, N]
        k = min(top_k, probs.shape[-1])
        scores, ids = probs.topk(k, dim=-1)
        labels, mode = outputs["labels"], outputs["mode"]
        return [
            [{"label": labels[i], "score": s, "mode": mode} for s, i in zip(row_scores, row_ids, strict=True)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]

    # ------------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _check_candidate_labels(candidate_labels) -> list[str]:
        if isinstance(candidate_labels, str):
            candidate_labels = [c for c in candidate_labels.split(",")]
        labels = [str(c).strip() for c in candidate_labels]
        if not labels or any(not c for c in labels):
            raise ValueError(f"candidate_labels must be non-empty class names, got {candidate_labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"candidate_labels has duplicates: {labels}")
        return labels

    @staticmethod
    def _check_support_set(support_set) -> dict[str, list]:
        if not isinstance(support_set, dict):
            raise ValueError(f"support_set must be a dict {{class name: [videos]}}, got {type(support_set).__name__}")
        if not support_set:
            raise ValueError("support_set is empty: give at least one class with at least one video")
        classes = {}
        for name, videos in support_set.items():
            videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
            if not videos:
                raise ValueError(f"support_set class {name!r} has no videos")
            for j, video in enumerate(videos):
                check_video(video, f"support video {j} of class {name!r}")
            classes[str(name)] = videos
        shots = {name: len(videos) for name, videos in classes.items()}
        if len(set(shots.values())) != 1:
            raise ValueError(f"every support class needs the same number of videos (shots), got {shots}")
        return classes

    def _support_key(self, classes: dict[str, list]) -> str:
        digest = hashlib.sha1(json.dumps(self.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
        for name, videos in classes.items():
            digest.update(name.encode() + b"\0")
            for video in videos:
                digest.update(video_fingerprint(video).encode())
        return digest.hexdigest()

    def _tokenize(self, labels: list[str]) -> dict:
        template = getattr(self.model.config, "prompt_template", "a photo of {}")
        return dict(
            self.tokenizer([template.format(c) for c in labels], padding=True, truncation=True, return_tensors="pt")
        )

    def _decode(self, videos: list[tuple[str, object]]) -> torch.Tensor:
        """Decode and transform each video; a failure names the video. Returns [B, T, 3, H, W]."""
        processor: M2DFVideoProcessor = self.feature_extractor
        pixel_values = []
        for what, video in videos:
            try:
                pixel_values.append(torch.as_tensor(processor(video)["pixel_values"]))
            except Exception as err:  # decoders raise their own types; re-raise with the video's name
                raise ValueError(f"{what}: could not decode the video ({type(err).__name__}: {err})") from err
        return torch.cat(pixel_values).to(self.model.dtype)

