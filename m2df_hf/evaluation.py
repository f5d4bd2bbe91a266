"""The few-shot evaluation protocol: N fixed-by-seed episodes, each test video encoded once.

The standard protocol (METHOD.md 6.4) draws N = 10,000 episodes (5-way, K-shot, 1 query per class) from the
test split and reports the mean per-episode accuracy with ``CI95 = 1.96 * std / sqrt(n)`` (population std).
Episode ``i`` is a pure function of ``(seed, i)`` (:class:`m2df_hf.episodes.EpisodeSampler`), so two runs,
or two models, are tested on exactly the same episodes.

The evaluation transform is deterministic, so a video's frame features do not depend on the episode it
appears in. :func:`evaluate_episodes` therefore

1. collects the videos used by the N episodes and encodes each of them **once** with the backbone
   (``get_video_features``), in fixed chunks of ``video_batch_size`` videos, into a :class:`FeatureCache`
   keyed by ``(model fingerprint, video)``;
2. runs each episode's head from the cache (``support_video_embeds`` / ``query_video_embeds``) with the
   class prompts taken from the split's text table (computed once with the frozen text tower).

With 2,400 test videos and 10,000 5-way 1-shot episodes this is 2,400 * T instead of 10,000 * 10 * T backbone
frame encodings (~20x fewer; 5-shot: ~60x). ``cached=False`` encodes per episode (the reference path, used
to check equality). Under ``accelerate launch`` the chunks and the episodes are sharded over the ranks and
gathered; every chunk and every episode is computed exactly as on one process, so the numbers are equal.

Episodes use their own RNG seed (``seed``, episode index), so a stochastic eval rule (the reference preset's
sampled PPS) is also reproducible and independent of the number of processes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "episode_accuracy")


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_episode_metric():
    """The local ``evaluate`` metric (mean accuracy, CI95, n); loads offline from the package folder (once)."""
    import evaluate

    return evaluate.load(METRIC_PATH)


def _field(episode, name: str) -> torch.Tensor:
    """An index array of an ``EpisodeSampler`` episode as a long tensor."""
    return torch.as_tensor(getattr(episode, name), dtype=torch.long)


def model_fingerprint(model: torch.nn.Module, processor: Any = None) -> str:
    """A hash of every parameter and buffer (names, shapes, values) and of the processor settings.

    Cached features are valid only for the exact weights and transform that produced them.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if processor is not None:
        settings = processor.to_dict() if hasattr(processor, "to_dict") else vars(processor)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def split_class_names(split) -> list[str]:
    """Prompt name of every label id of ``split`` (``class_name`` column; ClassLabel names as fallback)."""
    names = list(split.features["label"].names)
    if "class_name" in split.column_names:
        labels = split["label"]
        prompt_names = split["class_name"]
        for label, prompt in zip(labels, prompt_names):
            names[label] = prompt
    return names


def class_prompts(config, class_names: Sequence[str]) -> list[str]:
    """The CLIP prompt of each class: ``config.prompt_template.format(name)`` ("a photo of {}")."""
    return [config.prompt_template.format(name) for name in class_names]


def compute_text_table(model, tokenizer, class_names: Sequence[str], batch_size: int = 256,
                       grad: bool = False) -> torch.Tensor:
    """``[C, D]`` text embeddings of ``prompt_template.format(name)`` for every class name.

    With the frozen text tower this is computed once per split, in float32, without gradients, exactly as
    the release does at construction (METHOD.md 2.1); ``grad=True`` keeps the graph (trainable text tower).
    """
    prompts = class_prompts(model.config, class_names)
    device = next(model.parameters()).device
    rows = []
    with torch.set_grad_enabled(grad):
        for start in range(0, len(prompts), batch_size):
            tok = tokenizer(prompts[start : start + batch_size], padding=True, return_tensors="pt")
            feats = model.get_text_features(input_ids=tok["input_ids"].to(device),
                                            attention_mask=tok["attention_mask"].to(device))
            rows.append(feats.float())
    return torch.cat(rows)


class FeatureCache:
    """Frame features ``[T, D]`` keyed by ``(model fingerprint, namespace, video key)``.

    The namespace names the dataset split (its ``datasets`` fingerprint), so one cache reused across splits
    never hands split A's row 5 to split B's row 5 (video keys are row indices when there is no ``video_id``).
    In memory; optionally backed by a safetensors file per (fingerprint, namespace) under ``cache_dir`` so that
    repeated evaluations of the same model (other shots, other seeds) skip the backbone entirely.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._store: dict[tuple[str, str, str], torch.Tensor] = {}

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def get(self, fingerprint: str, namespace: str, video_key: str) -> torch.Tensor:
        return self._store[(fingerprint, namespace, video_key)]

    def put(self, fingerprint: str, namespace: str, video_key: str, features: torch.Tensor) -> None:
        self._store[(fingerprint, namespace, video_key)] = features

    def _file(self, fingerprint: str, namespace: str) -> str:
        return os.path.join(self.cache_dir, f"{fingerprint}-{namespace}.safetensors")

    def load(self, fingerprint: str, namespace: str) -> int:
        """Read a saved cache file into memory; returns the number of videos read."""
        if self.cache_dir is None or not os.path.isfile(self._file(fingerprint, namespace)):
            return 0
        from safetensors.torch import load_file

        tensors = load_file(self._file(fingerprint, namespace))
        for key, value in tensors.items():
            self._store[(fingerprint, namespace, key)] = value
        return len(tensors)

    def save(self, fingerprint: str, namespace: str) -> None:
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file

        os.makedirs(self.cache_dir, exist_ok=True)
        tensors = {k: v.contiguous() for (fp, ns, k), v in self._store.items() if (fp, ns) == (fingerprint, namespace)}
        save_file(tensors, self._file(fingerprint, namespace))


# ------------------------------------------------------------------------------------------------------------
# The protocol
# ------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate_episodes`. Accuracies and CIs are percentages."""

    accuracy: float
    ci95: float
    num_episodes: int
    episode_accuracies: np.ndarray  # [E] fraction correct per episode (episode order)
    predictions: np.ndarray  # [E, N*Q] predicted episode labels
    query_labels: np.ndarray  # [E, N*Q]
    backbone_frame_encodings: int  # frames that went through the visual backbone
    seconds: float
    excluded_episodes: list[int] = field(default_factory=list)  # episodes with an undecodable video
    failed_videos: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "ci95": self.ci95,
            "num_episodes": self.num_episodes,
            "backbone_frame_encodings": self.backbone_frame_encodings,
            "seconds": round(self.seconds, 2),
            "excluded_episodes": len(self.excluded_episodes),
        }


def _distributed(accelerator) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def _gather(objects: list, accelerator) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return objects
    from accelerate.utils import gather_object

    return gather_object(objects)


def _video_key(index: int, video_ids) -> str:
    """Row index plus video id: ids alone can repeat within a split (Kinetics-100's train list does)."""
    return f"{index}:{video_ids[index]}" if video_ids is not None else f"{index}"


def _load_clips(processor, split, indices: Sequence[int]) -> tuple[list[torch.Tensor | None], list[str]]:
    """Deterministic eval clips ``[T, 3, H, W]`` (``None`` for an undecodable video) and the failures."""
    clips, failures = [], []
    for i in indices:
        row = split[int(i)]["video"]
        try:
            clips.append(processor(row)["pixel_values"][0])
        except ValueError as err:  # VideoDecodeError: report and exclude, never kill the run
            clips.append(None)
            failures.append(f"row {int(i)}: {err}")
    return clips, failures


class _ChunkDecoder(torch.utils.data.Dataset):
    """Chunk ``j`` of videos -> deterministic eval clips (decoded in DataLoader workers when asked)."""

    def __init__(self, processor, split, chunks):
        self.processor, self.split, self.chunks = processor, split, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, j):
        return _load_clips(self.processor, self.split, self.chunks[j])


def _episodes(split, way, shot, query_per_class, num_episodes, seed):
    from m2df_hf.episodes import EpisodeSampler

    sampler = EpisodeSampler(split["label"], way=way, shot=shot, query_per_class=query_per_class, seed=seed)
    return [sampler.episode(i) for i in range(num_episodes)]


def _autocast(accelerator):
    import contextlib

    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate_episodes(
    model,
    split,
    processor,
    *,
    text_table: torch.Tensor | None = None,
    tokenizer=None,
    way: int = 5,
    shot: int = 1,
    query_per_class: int = 1,
    num_episodes: int = 10_000,
    seed: int = 0,
    cached: bool = True,
    video_batch_size: int = 16,
    num_workers: int = 0,
    cache: FeatureCache | None = None,
    accelerator=None,
    progress: bool = True,
    desc: str = "eval",
) -> EvaluationResult:
    """Run the protocol on ``split`` (a ``datasets.Dataset`` with ``video`` and ``label`` columns).

    Args:
        model: an ``M2DFModel`` (unwrapped; it is put in eval mode and restored afterwards).
        text_table: ``[C, D]`` prompt embeddings of the split's classes (label-id order); computed from
            ``tokenizer`` and the split's class names when omitted.
        cached: encode every video once (default) or per episode (reference path; same predictions).
        video_batch_size: videos per backbone call when filling the cache.
        num_workers: DataLoader workers decoding those videos (0: in this process).
        cache: a :class:`FeatureCache` to reuse across calls (fresh one when omitted).
        accelerator: shards videos and episodes over processes and gathers them; ``None`` = one process.
    """
    start = time.time()
    rank, world = _distributed(accelerator)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if text_table is None:
        if tokenizer is None:
            raise ValueError("evaluate_episodes needs either text_table or tokenizer (to build the text table)")
        text_table = compute_text_table(model, tokenizer, split_class_names(split))
    text_table = text_table.to(device)
    episodes = _episodes(split, way, shot, query_per_class, num_episodes, seed)
    video_ids = list(split["video_id"]) if "video_id" in split.column_names else None
    from tqdm.auto import tqdm

    show = progress and rank == 0
    num_frames = processor.num_frames
    failed: set[int] = set()
    failure_messages: list[str] = []
    encodings = 0

    if cached:
        # 1) every video used by the episodes, encoded once, in fixed chunks (the same on 1 or N processes)
        used = sorted({int(i) for ep in episodes for name in ("support_indices", "query_indices")
                       for i in _field(ep, name).tolist()})
        cache = cache if cache is not None else FeatureCache()
        fingerprint = model_fingerprint(model, processor)
        namespace = getattr(split, "_fingerprint", "split")
        cache.load(fingerprint, namespace)
        todo = [i for i in used if (fingerprint, namespace, _video_key(i, video_ids)) not in cache]
        chunks = [todo[c : c + video_batch_size] for c in range(0, len(todo), video_batch_size)]
        mine = []
        my_chunks = chunks[rank::world]
        decoded = torch.utils.data.DataLoader(_ChunkDecoder(processor, split, my_chunks), batch_size=None,
                                              num_workers=num_workers)
        for chunk, (clips, failures) in tqdm(zip(my_chunks, decoded), total=len(my_chunks),
                                             desc=f"{desc}: encode videos", disable=not show, leave=False):
            ok = [k for k, clip in enumerate(clips) if clip is not None]
            feats = None
            if ok:
                pixels = torch.stack([clips[k] for k in ok]).to(device)
                with _autocast(accelerator):
                    feats = model.get_video_features(pixels).float().cpu()
            mine.append((chunk, ok, feats, failures))
        for chunk, ok, feats, failures in _gather(mine, accelerator):
            failure_messages.extend(failures)
            failed.update(chunk[k] for k in range(len(chunk)) if k not in ok)
            for j, k in enumerate(ok):
                cache.put(fingerprint, namespace, _video_key(chunk[k], video_ids), feats[j])
            encodings += len(ok) * num_frames
        if rank == 0:
            cache.save(fingerprint, namespace)
        features = {i: cache.get(fingerprint, namespace, _video_key(i, video_ids)) for i in used if i not in failed}

    # 2) the head of every episode (sharded over processes), each with its own RNG seed
    devices = [device] if device.type == "cuda" else []
    mine = []
    with torch.random.fork_rng(devices=devices):
        for e in tqdm(range(rank, num_episodes, world), desc=desc, disable=not show, total=math.ceil(
                (num_episodes - rank) / world)):
            ep = episodes[e]
            s_idx, q_idx = _field(ep, "support_indices"), _field(ep, "query_indices")
            s_lab, q_lab = _field(ep, "support_labels"), _field(ep, "query_labels")
            class_ids = _field(ep, "class_ids")
            kwargs = {"support_labels": s_lab.to(device), "class_text_embeds": text_table[class_ids.to(device)]}
            if cached:
                if any(int(i) in failed for i in torch.cat([s_idx, q_idx])):
                    mine.append((e, None, None, 0, []))
                    continue
                kwargs["support_video_embeds"] = torch.stack([features[int(i)] for i in s_idx]).to(device)
                kwargs["query_video_embeds"] = torch.stack([features[int(i)] for i in q_idx]).to(device)
                n_enc = 0
            else:
                clips, failures = _load_clips(processor, split, torch.cat([s_idx, q_idx]).tolist())
                if failures:
                    mine.append((e, None, None, 0, failures))
                    continue
                kwargs["support_pixel_values"] = torch.stack(clips[: len(s_idx)]).to(device)
                kwargs["query_pixel_values"] = torch.stack(clips[len(s_idx):]).to(device)
                n_enc = len(clips) * num_frames
            torch.manual_seed(seed * 1_000_003 + e)
            with _autocast(accelerator):
                logits = model(**kwargs).logits
            pred = logits.float().argmax(-1).cpu()
            mine.append((e, pred.numpy(), q_lab.numpy(), n_enc, []))
    results = sorted(_gather(mine, accelerator), key=lambda r: r[0])
    if was_training:
        model.train()

    excluded = [e for e, pred, _, _, _ in results if pred is None]
    kept = [r for r in results if r[1] is not None]
    for _, _, _, n_enc, failures in results:
        encodings += n_enc
        failure_messages.extend(failures)
    if failure_messages:
        logger.warning("%d undecodable video(s) excluded %d episode(s): %s", len(set(failure_messages)),
                       len(excluded), "; ".join(sorted(set(failure_messages))[:5]))
    if not kept:
        raise ValueError(f"No episode could be evaluated: every episode had an undecodable video "
                         f"({'; '.join(sorted(set(failure_messages))[:3])})")
    predictions = np.stack([r[1] for r in kept])
    labels = np.stack([r[2] for r in kept])
    per_episode = (predictions == labels).mean(axis=1)
    scores = load_episode_metric().compute(episode_accuracies=per_episode.tolist())
    if rank == 0:
        logger.info("%s: %.2f +- %.2f over %d episodes; %d backbone frame encodings (%s), %.1f s", desc,
                    scores["accuracy"], scores["ci95"], scores["num_episodes"], encodings,
                    "each video once" if cached else "per episode", time.time() - start)
    return EvaluationResult(
        accuracy=scores["accuracy"],
        ci95=scores["ci95"],
        num_episodes=scores["num_episodes"],
        episode_accuracies=per_episode,
        predictions=predictions,
        query_labels=labels,
        backbone_frame_encodings=encodings,
        seconds=time.time() - start,
        excluded_episodes=excluded,
        failed_videos=sorted(set(failure_messages)),
    )


# ------------------------------------------------------------------------------------------------------------
# Datasets from a spec (shared with train_accelerate.py)
# ------------------------------------------------------------------------------------------------------------


SYNTHETIC_ROOT_FILES = ("classes.json", "synthetic.json")  # what make_synthetic_dataset writes at its root


def open_dataset(spec: str, source: str = "auto"):
    """A ``DatasetDict`` from a ``save_to_disk`` folder, parquet files (folder or glob), a synthetic set's root, or a
    Hub dataset id.

    ``source``: ``auto`` (guess from the spec), ``disk``, ``parquet``, ``synthetic`` or ``hub``. A parquet folder is
    expected to hold ``<split>-*.parquet`` files or ``<split>/*.parquet`` sub-folders; a synthetic root is what
    ``make_synthetic_dataset`` writes (``classes.json``, ``synthetic.json``, ``splits/``, ``videos/``; the demo's
    ``data/synthetic-demo``).
    """
    import glob

    import datasets

    if source == "auto":
        if os.path.isdir(spec) and (os.path.isfile(os.path.join(spec, "dataset_dict.json"))
                                    or os.path.isfile(os.path.join(spec, "state.json"))):
            source = "disk"
        elif all(os.path.isfile(os.path.join(spec, name)) for name in SYNTHETIC_ROOT_FILES):
            source = "synthetic"
        elif spec.endswith(".parquet") or (os.path.isdir(spec) and glob.glob(os.path.join(spec, "**", "*.parquet"),
                                                                              recursive=True)):
            source = "parquet"
        elif os.path.exists(spec):
            raise ValueError(f"{spec!r} is not a save_to_disk folder, a folder of parquet files or a synthetic set "
                             f"root ({' and '.join(SYNTHETIC_ROOT_FILES)}); see `m2df evaluate --help`")
        else:
            source = "hub"
    if source == "disk":
        loaded = datasets.load_from_disk(spec)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"test": loaded})
    if source == "parquet":
        if os.path.isdir(spec):
            files = {}
            for split in ("train", "val", "validation", "test"):
                found = sorted(glob.glob(os.path.join(spec, f"{split}-*.parquet"))
                               + glob.glob(os.path.join(spec, split, "*.parquet"))
                               + glob.glob(os.path.join(spec, "data", f"{split}-*.parquet")))
                if found:
                    files["val" if split == "validation" else split] = found
            if not files:
                raise ValueError(f"no <split>-*.parquet or <split>/*.parquet files under {spec!r}")
        else:
            files = {"test": spec}
        return datasets.load_dataset("parquet", data_files=files)
    if source == "synthetic":
        from .synthetic import build_synthetic_dataset_dict

        missing = [name for name in SYNTHETIC_ROOT_FILES if not os.path.isfile(os.path.join(spec, name))]
        if missing:
            raise ValueError(f"{spec!r} is not a synthetic set root: missing {', '.join(missing)}")
        return build_synthetic_dataset_dict(spec)
    if source == "hub":
        return datasets.load_dataset(spec)
    raise ValueError(f"unknown dataset source {source!r}; use auto, disk, parquet, synthetic or hub")


def get_split(dsd, name: str):
    if name not in dsd:
        raise ValueError(f"split {name!r} not in the dataset (available: {sorted(dsd)})")
    return dsd[name]


# ------------------------------------------------------------------------------------------------------------
# m2df evaluate
# ------------------------------------------------------------------------------------------------------------

EXAMPLES = """examples:
  # the standard protocol: 10,000 5-way 1-shot test episodes, 1 query per class (on what `make demo` wrote)
  m2df evaluate --model outputs/demo/model --dataset data/synthetic-demo --episodes 10000

  # 5-shot on a parquet export, results as JSON
  m2df evaluate --model org/clip-m2df-ssv2 --dataset data/ssv2_small_parquet --shot 5 --json

  # reuse frame features across runs (other shots/seeds skip the backbone)
  m2df evaluate --model outputs/run/model --dataset hf_datasets/ucf101 --cache-dir outputs/feature_cache

  # many GPUs: videos and episodes are sharded, the numbers equal one process
  accelerate launch -m m2df_hf.cli evaluate --model outputs/run/model --dataset hf_datasets/ucf101
"""


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="run the N-episode few-shot protocol on a saved model",
        description="Evaluate a saved CLIP-M2DF model on N fixed-by-seed few-shot episodes (mean accuracy and "
                    "CI95 = 1.96*std/sqrt(n)). Each video is encoded once and cached.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="saved model folder or Hub id (remote code is trusted)")
    parser.add_argument("--dataset", required=True,
                        help="save_to_disk folder, parquet folder/file, synthetic set root (classes.json + "
                             "synthetic.json, e.g. data/synthetic-demo), or Hub dataset id (m2df_hf.data layout)")
    parser.add_argument("--source", default="auto", choices=["auto", "disk", "parquet", "synthetic", "hub"],
                        help="how to read --dataset (default: guess)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--episodes", type=int, default=10_000, help="number of episodes (default 10000)")
    parser.add_argument("--way", type=int, default=5, help="classes per episode (default 5)")
    parser.add_argument("--shot", type=int, default=1, help="support videos per class (default 1)")
    parser.add_argument("--query", type=int, default=1, help="queries per class (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (default 0: the standard episodes)")
    parser.add_argument("--video-batch-size", type=int, default=16, help="videos per backbone call")
    parser.add_argument("--num-workers", type=int, default=0, help="video decoding workers")
    parser.add_argument("--cache-dir", default=None, help="keep frame features on disk between runs")
    parser.add_argument("--uncached", action="store_true", help="encode every episode's videos (slow; reference)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from accelerate import Accelerator
    from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

    if args.episodes < 1:
        raise ValueError(f"--episodes must be positive, got {args.episodes}")
    accelerator = Accelerator()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(accelerator.device)
    processor = AutoFeatureExtractor.from_pretrained(args.model, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    split = get_split(open_dataset(args.dataset, args.source), args.split)
    result = evaluate_episodes(
        model, split, processor, tokenizer=tokenizer, way=args.way, shot=args.shot, query_per_class=args.query,
        num_episodes=args.episodes, seed=args.seed, cached=not args.uncached,
        video_batch_size=args.video_batch_size, num_workers=args.num_workers, cache=FeatureCache(args.cache_dir),
        accelerator=accelerator,
        progress=not args.json, desc=f"{args.split} episodes",
    )
    if accelerator.is_main_process:
        summary = {"model": args.model, "dataset": args.dataset, "split": args.split, "way": args.way,
                   "shot": args.shot, "query_per_class": args.query, "seed": args.seed, **result.summary()}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{args.split}: {summary['accuracy']:.2f} +- {summary['ci95']:.2f} % over "
                  f"{summary['num_episodes']} {args.way}-way {args.shot}-shot episodes "
                  f"({summary['backbone_frame_encodings']} backbone frame encodings, {summary['seconds']} s)")
    accelerator.end_training()
    return 0


__all__ = [
    "EvaluationResult",
    "FeatureCache",
    "add_cli",
    "compute_text_table",
    "evaluate_episodes",
    "load_episode_metric",
    "model_fingerprint",
    "open_dataset",
    "split_class_names",
]
