"""Run configuration for ``train_accelerate.py``: YAML files with inheritance, plus command-line overrides.

A config file is a nested mapping. It may name the files it extends under the key ``base`` (a path, or a list
of paths, relative to the file); bases are merged in order, then the file itself on top (mappings merge key
by key, any other value replaces). Command-line overrides are ``section.key=value`` strings whose value is
parsed as YAML (``train.lr=2e-5``, ``model.config.views=local``, ``eval.before_training=true``,
``processor.image_mean=[0,0,0]``); ``key=null`` sets ``None``.

Every key must already exist in :data:`DEFAULTS` (after the files are merged), except under the free-form
sections listed in :data:`FREE_FORM` (model-config overrides, CLIP sizes, synthetic-set options), so a typo
is a ``ValueError`` naming the key instead of a silently ignored setting.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import yaml

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# The full schema with defaults. Values the paper does not state are chosen here and documented in
# docs/training.md.
DEFAULTS: dict[str, Any] = {
    "run": {
        "output_dir": "outputs/run",  # model folder, results.json, checkpoints/, logs/
        "seed": 0,
        "demo": False,  # the demo's extra steps: reload via AutoModel and classify one query
        "torch_threads": None,  # intra-op CPU threads (null: torch's default); 1 avoids oversubscription on CPU
    },
    "data": {
        # synthetic | disk (save_to_disk folder) | parquet (folder or glob) | hub (dataset id)
        "source": "synthetic",
        "path": "data/synthetic",
        "name": "synthetic",  # dataset name written into results.json / the card
        "dataset_id": None,  # optional Hub id for the card
        "synthetic": {},  # options for m2df_hf.synthetic (made if data.path is absent)
        "num_workers": 0,  # DataLoader workers decoding training episodes
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
    },
    "processor": {
        "num_frames": 8,
        "resize_short_side": 256,
        "crop_size": 224,
        "sampler": None,  # tsn (paper) | linspace_jitter (release); null = the model preset's
        "do_normalize": None,  # CLIP mean/std; null = the model preset's (paper: yes, reference: no)
        "image_mean": None,
        "image_std": None,
        "flip": True,  # training horizontal flip (off for SSv2: labels name directions)
    },
    "model": {
        "preset": "paper",  # paper | reference | reference_run (M2DFConfig.from_preset)
        "base_model": None,  # CLIP checkpoint (hub id or dir); null = random init from model.clip_config
        "clip_config": {},  # tiny_clip_config(**clip_config) when base_model is null
        "config": {},  # any M2DFConfig field, applied on top of the preset
        "tokenizer": None,  # defaults to base_model's tokenizer, or the tiny offline one
    },
    "episodes": {
        "way": 5,
        "shot": 1,
        "train_query_per_class": 5,
        "test_query_per_class": 1,
    },
    "train": {
        "num_updates": 1250,  # optimizer updates; episodes = num_updates * episodes_per_update
        "episodes_per_update": 16,  # over all processes: accumulation steps = this / num_processes
        "optimizer": "adam",  # adam | adamw
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "lr_scheduler": "constant",  # any transformers.get_scheduler name
        "warmup_updates": 0,
        "max_grad_norm": None,
        "activation_checkpointing": False,  # recompute CLIP activations in backward: far less memory, ~30% slower
        "mixed_precision": "no",  # no | fp16 | bf16
        "find_unused_parameters": False,  # DDP: only needed if some trainable parameter gets no gradient
        "max_consecutive_nonfinite": 10,  # abort after this many skipped updates in a row
        "log_every": 10,  # updates between tensorboard scalars
    },
    "eval": {
        "val_every": 250,  # updates between val evaluations (and always after the last update)
        "val_episodes": 1000,
        "val_seed": 1,
        "test_episodes": 10000,
        "test_seed": 0,
        "video_batch_size": 16,  # videos per backbone call when filling the feature cache
        "before_training": False,  # also test the untrained model on the same test episodes (the demo)
        "cache_dir": None,  # optional on-disk feature cache (keyed by model fingerprint)
    },
    "checkpoint": {
        "every": 250,  # updates between save_state checkpoints
        "keep_last": 2,
    },
    "log": {
        "tensorboard": True,
        "project_name": "clip-m2df",
    },
}

# Sections whose keys are not fixed by the schema.
FREE_FORM = ("data.synthetic", "model.clip_config", "model.config")


def deep_merge(base: dict, top: dict) -> dict:
    """Merge ``top`` into a copy of ``base``: mappings key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_with_bases(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Read a YAML config, resolving its ``base`` chain (paths relative to the file)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ValueError(f"config inheritance cycle: {' -> '.join(_seen + (path,))}")
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml_with_bases(os.path.join(os.path.dirname(path), base), _seen + (path,)))
    return deep_merge(merged, data)


def _check_keys(cfg: dict, schema: dict, prefix: str = "") -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if dotted in FREE_FORM:
            if not isinstance(value, dict):
                raise ValueError(f"config key {dotted!r} must be a mapping, got {value!r}")
            continue
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ValueError(f"unknown config key {dotted!r} (known keys here: {known})")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {dotted!r} must be a mapping, got {value!r}")
            _check_keys(value, schema[key], dotted + ".")


def apply_override(cfg: dict, override: str) -> dict:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) in place and return ``cfg``."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value (e.g. train.lr=2e-5)")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ValueError(f"override {override!r} has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "2e-5" (no dot) as a string
    node = cfg
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = value
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults <- YAML file (with bases) <- overrides, validated against :data:`DEFAULTS`."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        file_cfg = load_yaml_with_bases(path)
        _check_keys(file_cfg, DEFAULTS)
        cfg = deep_merge(cfg, file_cfg)
    for override in overrides:
        apply_override(cfg, override)
    _check_keys(cfg, DEFAULTS)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Range checks that would otherwise fail late (after data or model were built)."""
    ep, tr = cfg["episodes"], cfg["train"]
    for key in ("way", "shot", "train_query_per_class", "test_query_per_class"):
        if not isinstance(ep[key], int) or ep[key] < 1:
            raise ValueError(f"episodes.{key} must be a positive integer, got {ep[key]!r}")
    if ep["way"] < 2:
        raise ValueError(f"episodes.way must be at least 2, got {ep['way']}")
    for section, key in (("train", "num_updates"), ("train", "episodes_per_update"), ("eval", "val_every"),
                         ("eval", "val_episodes"), ("eval", "test_episodes"), ("checkpoint", "every"),
                         ("checkpoint", "keep_last"), ("eval", "video_batch_size"), ("train", "log_every")):
        value = cfg[section][key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{section}.{key} must be a positive integer, got {value!r}")
    if tr["mixed_precision"] not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision must be no, fp16 or bf16, got {tr['mixed_precision']!r}")
    if tr["optimizer"] not in ("adam", "adamw"):
        raise ValueError(f"train.optimizer must be adam or adamw, got {tr['optimizer']!r}")
    if not float(tr["lr"]) > 0:
        raise ValueError(f"train.lr must be positive, got {tr['lr']!r}")
    if cfg["data"]["source"] not in ("synthetic", "disk", "parquet", "hub"):
        raise ValueError(f"data.source must be synthetic, disk, parquet or hub, got {cfg['data']['source']!r}")
    if cfg["model"]["preset"] not in ("paper", "reference", "reference_run"):
        raise ValueError(f"model.preset must be paper, reference or reference_run, got {cfg['model']['preset']!r}")


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
