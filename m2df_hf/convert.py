"""Convert a checkpoint trained with the official CLIP-MDMF release into this project's format.

The release (``cofly2014/CLIP-MDMF``) saves the whole model's ``state_dict`` with ``torch.save``: the few-shot head
and the OpenAI CLIP visual tower (``backbone.*``), but not the text tower. This module maps those tensors, without
any change of value, onto [`M2DFModel`]'s parameter names (key table: ``docs/convert.md``; the release's names:
METHOD.md section 9) and fills the text tower from the CLIP checkpoint the release started from.

Loading is safe: ``torch.load(weights_only=True)`` or safetensors only. A file that needs arbitrary unpickling is
refused, never executed.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

# The release hard-codes 8 attention heads in both cross-transformers (METHOD.md 2.6); the weights do not say it.
RELEASE_MMFE_HEADS = 8

# Release view module -> this project's view (METHOD.md section 3: `context2` serves the local view, `context_local`
# the global one, despite its name).
_VIEW_MODULES = {"context2": "local_view", "context_local": "global_view"}
_VISION = "vision_tower.vision_model."

_Transform = Callable[[torch.Tensor], torch.Tensor]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous()


# (release key pattern, project key template, transform). Every release key must match exactly one rule;
# templates use the pattern's named groups.
_RULES: list[tuple[re.Pattern, str, _Transform]] = [
    (re.compile(rf"(?P<view>{'|'.join(_VIEW_MODULES)})\.layers\.(?P<i>\d+)\.0\.norm\.(?P<p>weight|bias)"),
     "{view}.fusion_encoder.layers.{i}.norm.{p}", _same),
    (re.compile(rf"(?P<view>{'|'.join(_VIEW_MODULES)})\.layers\.(?P<i>\d+)\.0\.fn\.to_(?P<x>[qkv])\.weight"),
     "{view}.fusion_encoder.layers.{i}.attention.{x}_proj.weight", _same),
    (re.compile(rf"(?P<view>{'|'.join(_VIEW_MODULES)})\.layers\.(?P<i>\d+)\.0\.fn\.to_out\.0\.(?P<p>weight|bias)"),
     "{view}.fusion_encoder.layers.{i}.attention.out_proj.{p}", _same),
    (re.compile(rf"(?P<view>{'|'.join(_VIEW_MODULES)})\.layers\.(?P<i>\d+)\.1\.net\.0\.(?P<p>weight|bias)"),
     "{view}.fusion_encoder.layers.{i}.ffn.fc1.{p}", _same),
    (re.compile(rf"(?P<view>{'|'.join(_VIEW_MODULES)})\.layers\.(?P<i>\d+)\.1\.net\.3\.(?P<p>weight|bias)"),
     "{view}.fusion_encoder.layers.{i}.ffn.fc2.{p}", _same),
    (re.compile(r"context_conv(?P<n>[12])\.(?P<p>weight|bias)"), "local_view.temporal_context.conv{n}.{p}", _same),
    # Old hook-based weight norm: weight = g * v / |v| over dims (1, 2), which is exactly torch's weight-norm
    # parametrization with dim=0 (original0 = g, original1 = v), so the tensors move unchanged.
    (re.compile(r"tcn\.network\.(?P<i>\d+)\.conv(?P<n>[12])\.weight_g"),
     "global_view.temporal_context.tcn.{i}.conv{n}.parametrizations.weight.original0", _same),
    (re.compile(r"tcn\.network\.(?P<i>\d+)\.conv(?P<n>[12])\.weight_v"),
     "global_view.temporal_context.tcn.{i}.conv{n}.parametrizations.weight.original1", _same),
    (re.compile(r"tcn\.network\.(?P<i>\d+)\.conv(?P<n>[12])\.bias"), "global_view.temporal_context.tcn.{i}.conv{n}.bias",
     _same),
    # ViT-B/16 visual tower, OpenAI layout -> transformers' CLIPVisionModelWithProjection.
    (re.compile(r"backbone\.conv1\.weight"), _VISION + "embeddings.patch_embedding.weight", _same),
    (re.compile(r"backbone\.class_embedding"), _VISION + "embeddings.class_embedding", _same),
    (re.compile(r"backbone\.positional_embedding"), _VISION + "embeddings.position_embedding.weight", _same),
    (re.compile(r"backbone\.ln_pre\.(?P<p>weight|bias)"), _VISION + "pre_layrnorm.{p}", _same),
    (re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.attn\.out_proj\.(?P<p>weight|bias)"),
     _VISION + "encoder.layers.{i}.self_attn.out_proj.{p}", _same),
    (re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.ln_1\.(?P<p>weight|bias)"),
     _VISION + "encoder.layers.{i}.layer_norm1.{p}", _same),
    (re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.mlp\.c_fc\.(?P<p>weight|bias)"),
     _VISION + "encoder.layers.{i}.mlp.fc1.{p}", _same),
    (re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.mlp\.c_proj\.(?P<p>weight|bias)"),
     _VISION + "encoder.layers.{i}.mlp.fc2.{p}", _same),
    (re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.ln_2\.(?P<p>weight|bias)"),
     _VISION + "encoder.layers.{i}.layer_norm2.{p}", _same),
    (re.compile(r"backbone\.ln_post\.(?P<p>weight|bias)"), _VISION + "post_layernorm.{p}", _same),
    # OpenAI computes `x @ proj` with proj [width, D]; nn.Linear stores [D, width].
    (re.compile(r"backbone\.proj"), "vision_tower.visual_projection.weight", _transpose),
]
# nn.MultiheadAttention packs q, k, v (in that order) along dim 0.
_IN_PROJ = re.compile(r"backbone\.transformer\.resblocks\.(?P<i>\d+)\.attn\.in_proj_(?P<p>weight|bias)")
# Created but never used by the release (METHOD.md 2.4): dropped.
_UNUSED = re.compile(r"context_conv(11|22)\.(weight|bias)")
# `tcn.network.i.net.{0,4}` are the block's Sequential holding conv1 / conv2 again: the same tensors.
_TCN_ALIAS = re.compile(r"tcn\.network\.(?P<i>\d+)\.net\.(?P<j>[04])\.(?P<p>weight_g|weight_v|bias)")
# OpenAI ModifiedResNet (RN50) keys.
_RESNET = re.compile(r"backbone\.(attnpool|layer[1-4]|bn[1-3]|conv[2-3])\.")


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a release checkpoint safely and return its model state dict.

    Accepts a ``.safetensors`` file, or a ``torch.save`` file read with ``torch.load(weights_only=True)`` holding
    either a raw state dict or a dict with ``model_state_dict`` (what the release's training script writes, next to
    the optimizer state). ``module.`` components left by ``DataParallel`` are removed from the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded = load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"Could not read {str(path)!r} as safetensors (corrupt or truncated?): {err}") from err
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler error:" in line), "")
            raise ValueError(
                f"Refusing to load {str(path)!r}: torch.load(weights_only=True) cannot read it. Either it holds objects "
                "other than tensors and plain containers (unpickling those can run arbitrary code, so this converter "
                "never does), or it is not a torch.save file. If you trust the file, re-save just its tensors in a "
                "throw-away environment, e.g. `torch.save(torch.load(p, weights_only=False)['model_state_dict'], "
                f"'clean.pth')`, and convert that. {reason}"
            ) from err
        except (RuntimeError, EOFError, OSError) as err:  # torch reports damaged archives in all three
            raise ValueError(f"Could not read {str(path)!r} (corrupt or truncated checkpoint?): {err}") from err
    if isinstance(loaded, Mapping) and "model_state_dict" in loaded:
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        kind = type(loaded).__name__ if not isinstance(loaded, Mapping) else "an empty dict"
        raise ValueError(
            f"{str(path)!r} holds {kind}, not a state dict: expected a mapping of parameter names to tensors, or a "
            "dict with a 'model_state_dict' entry."
        )
    not_tensors = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(
            f"{str(path)!r} is not a state dict: entries {not_tensors[:10]} are not tensors (top-level keys: "
            f"{sorted(map(str, loaded))[:10]}); expected parameter tensors or a dict with 'model_state_dict'."
        )
    return _strip_data_parallel(loaded)


def _strip_data_parallel(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module` key components that `DataParallel` adds (around the whole model or the backbone)."""
    stripped = {}
    for key, tensor in state_dict.items():
        clean = ".".join(part for part in key.split(".") if part != "module")
        if clean in stripped:
            raise ValueError(f"Key {clean!r} appears both with and without a 'module.' (DataParallel) prefix.")
        stripped[clean] = tensor
    return stripped


def _check_release_compatible(config) -> None:
    """The release's head has a fixed structure; a config that differs cannot hold its weights losslessly."""
    required = {
        "views": "both",
        "ltce_activation": "linear",
        "use_position_embeddings": False,
        "mmfe_num_heads": RELEASE_MMFE_HEADS,
    }
    wrong = {name: getattr(config, name) for name, value in required.items() if getattr(config, name) != value}
    vision = config.clip_config.vision_config
    if vision.hidden_act != "quick_gelu":
        wrong["clip_config.vision_config.hidden_act"] = vision.hidden_act
    if vision.layer_norm_eps != 1e-5:
        wrong["clip_config.vision_config.layer_norm_eps"] = vision.layer_norm_eps
    if wrong:
        raise ValueError(
            f"This config cannot hold a release checkpoint losslessly: {wrong}. The release has both views, a linear "
            "LTCE, no positional embeddings, 8 MMFE heads and an OpenAI ViT (QuickGELU, LayerNorm eps 1e-5): "
            f"required {required} (the 'reference' preset), a CLIP vision config with hidden_act='quick_gelu' and "
            "layer_norm_eps=1e-5."
        )


def _expected_shapes(config) -> dict[str, torch.Size]:
    """Names and shapes of every head and vision-tower tensor of `M2DFModel(config)`, built on the meta device."""
    from modeling_m2df import M2DFModel  # imported here: `m2df --help` should not pay for transformers

    with torch.device("meta"):
        model = M2DFModel(config)
    return {k: v.shape for k, v in model.state_dict().items() if not k.startswith("text_tower.")}


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], config
) -> dict[str, torch.Tensor]:
    """Map a release state dict (keys of METHOD.md section 9) to `M2DFModel`'s head and vision-tower keys.

    The values are unchanged (q/k/v are split out of OpenAI's packed ``in_proj``, ``proj`` is transposed), so the
    reference preset computes what the release computed. The unused ``context_conv11/22`` are dropped, the TCN's
    ``net.{0,4}`` aliases are checked against the convs they alias and skipped, and ``scale`` (the auxiliary
    text-logit scale) is kept as ``text_logit_scale`` only when ``config.text_loss_weight > 0``. The text tower is
    not in the release; `M2DFModel.from_clip` provides it.

    Raises:
        ValueError: for an RN50 backbone, a feature width other than the config's, a config whose head differs from
            the release's, unknown or missing keys, or shape mismatches (all listed).
    """
    state_dict = _strip_data_parallel(state_dict)
    if any(_RESNET.match(key) for key in state_dict):
        raise ValueError(
            "This checkpoint has an RN50 backbone (OpenAI ModifiedResNet keys such as 'backbone.attnpool.*'): not "
            "supported: transformers has no CLIP RN50 vision model, so the converter handles ViT backbones only."
        )
    width_source = next((k for k in ("context_conv1.weight", "backbone.proj") if k in state_dict), None)
    if width_source is not None:
        width = state_dict[width_source].shape[0 if width_source == "context_conv1.weight" else -1]
        if width != config.hidden_size:
            raise ValueError(
                f"The checkpoint's feature width D={width} (from {width_source!r}) differs from the config's "
                f"clip_config.projection_dim={config.hidden_size}: use the CLIP model the release was trained from "
                "(D=512 for ViT-B/16)."
            )
    _check_release_compatible(config)

    converted: dict[str, torch.Tensor] = {}
    unknown, alias_mismatch = [], []
    for key, tensor in state_dict.items():
        if _UNUSED.fullmatch(key):
            continue
        if key == "scale":
            if config.text_loss_weight > 0:
                converted["text_logit_scale"] = tensor.reshape(1)
            continue
        alias = _TCN_ALIAS.fullmatch(key)
        if alias:
            conv = "conv1" if alias["j"] == "0" else "conv2"
            original = state_dict.get(f"tcn.network.{alias['i']}.{conv}.{alias['p']}")
            if original is None or original.shape != tensor.shape or not torch.equal(original, tensor):
                alias_mismatch.append(key)
            continue
        packed = _IN_PROJ.fullmatch(key)
        if packed:
            if tensor.shape[0] % 3 != 0:
                raise ValueError(f"{key!r} has shape {tuple(tensor.shape)}: dim 0 must hold q, k and v (3 x width).")
            for name, part in zip("qkv", tensor.chunk(3, dim=0)):
                converted[f"{_VISION}encoder.layers.{packed['i']}.self_attn.{name}_proj.{packed['p']}"] = part.clone()
            continue
        for pattern, template, transform in _RULES:
            match = pattern.fullmatch(key)
            if match:
                groups = match.groupdict()
                if "view" in groups:
                    groups["view"] = _VIEW_MODULES[groups["view"]]
                converted[template.format(**groups)] = transform(tensor)
                break
        else:
            unknown.append(key)

    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k]
    ]
    problems = []
    if unknown:
        problems.append(f"unknown release keys (not in METHOD.md section 9): {sorted(unknown)}")
    if alias_mismatch:
        problems.append(f"TCN alias keys that differ from the conv they alias: {sorted(alias_mismatch)}")
    if extra:
        problems.append(f"keys the config's model does not have (e.g. more layers or TCN levels): {extra}")
    if missing:
        problems.append(f"model tensors the checkpoint does not provide: {missing}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError("Cannot convert the release checkpoint:\n- " + "\n- ".join(problems))
    return converted


def convert_official_checkpoint(
    checkpoint_path: str | os.PathLike,
    clip_name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "reference",
    **config_overrides,
):
    """Convert a release checkpoint into a saved `M2DFModel` folder (remote code, safetensors).

    Builds `M2DFModel.from_clip(clip_name_or_path, preset=preset, **config_overrides)` (its text tower is CLIP's,
    as the release did not save one), loads the converted head and vision weights, checks that every head and vision
    tensor was set to the checkpoint's value, and writes ``save_pretrained(output_dir)``, the video processor with
    the release's settings (`M2DFVideoProcessor.from_preset("reference")`) and the CLIP tokenizer when
    ``clip_name_or_path`` has one. The checkpoint is read and validated before the CLIP model is loaded.
    Returns the model.
    """
    from transformers import AutoTokenizer, CLIPConfig

    from configuration_m2df import M2DFConfig
    from m2df_hf.processing_m2df import M2DFVideoProcessor
    from modeling_m2df import M2DFModel

    fields = M2DFConfig.field_names()
    unknown = sorted(set(config_overrides) - fields)
    if unknown:  # PretrainedConfig would silently keep a misspelt field
        raise ValueError(f"Unknown M2DFConfig fields {unknown}; valid fields: {sorted(fields)}.")
    state_dict = load_official_checkpoint(checkpoint_path)
    clip_config = CLIPConfig.from_pretrained(clip_name_or_path)
    config = M2DFConfig.from_preset(preset, clip_config=clip_config.to_dict(), **config_overrides)
    converted = convert_official_state_dict(state_dict, config)

    model = M2DFModel.from_clip(clip_name_or_path, preset=preset, **config_overrides)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    not_set = [k for k in missing if not k.startswith("text_tower.")]
    if not_set or unexpected:
        raise ValueError(f"Loading the converted weights left {not_set} unset and {unexpected} unused.")
    loaded = model.state_dict()
    differ = [k for k, v in converted.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if differ:
        raise ValueError(f"Converted tensors did not load unchanged: {differ}")

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    # The release's input pipeline: jittered linspace frames, resize 256 / crop 224 (scaled to the CLIP's image
    # size), no mean/std normalisation.
    image_size = config.clip_config.vision_config.image_size
    M2DFVideoProcessor.from_preset(
        "reference", num_frames=config.num_frames, crop_size=image_size, resize_short_side=round(image_size * 256 / 224)
    ).save_pretrained(output_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(clip_name_or_path)
    except (OSError, ValueError):  # a CLIP folder saved without its tokenizer
        warnings.warn(
            f"No tokenizer found at {clip_name_or_path}: the model was saved without one; save the CLIP tokenizer "
            f"into {output_dir} before using the model with class names."
        )
    else:
        tokenizer.save_pretrained(output_dir)
    return model


def _parse_override(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as `argmax`
    return key.strip(), value


def _run_cli(args: argparse.Namespace) -> int:
    overrides = dict(args.set or [])
    convert_official_checkpoint(args.checkpoint, args.clip, args.out, preset=args.preset, **overrides)
    print(f"Converted {args.checkpoint} -> {args.out} (preset {args.preset!r}, overrides {overrides}).")
    return 0


def add_cli(subparsers) -> None:
    """Register ``m2df convert-official``."""
    parser = subparsers.add_parser(
        "convert-official",
        help="convert a checkpoint trained with the official CLIP-MDMF release (ViT-B/16) into a model folder",
        description=(
            "Convert a checkpoint written by the official CLIP-MDMF release (torch.save of the model state dict, "
            "or of a dict with 'model_state_dict') into a saved CLIP-M2DF model folder. The checkpoint is read with "
            "torch.load(weights_only=True): files that need arbitrary unpickling are refused. The text tower comes "
            "from --clip (the release does not save it). Only ViT backbones are supported."
        ),
        epilog=(
            "examples:\n"
            "  m2df convert-official --checkpoint checkpoint_ssv2_small.pt \\\n"
            "      --clip openai/clip-vit-base-patch16 --out converted/ssv2-small\n"
            "  # evaluate deterministically (argmax PPS) instead of the release's sampled prompts:\n"
            "  m2df convert-official --checkpoint ckpt.pt --clip ./clip-vit-base-patch16 --out out \\\n"
            "      --set pps_eval_mode=argmax --set num_frames=8"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="release checkpoint (.pt/.pth/.tar, or .safetensors)")
    parser.add_argument("--clip", required=True, help="CLIPModel the release started from: Hub id or local folder")
    parser.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, code, tokenizer)")
    parser.add_argument(
        "--preset",
        default="reference",
        choices=("reference", "reference_run"),
        help="release behaviour: 'reference' (statistics script: t+v conditions, both teachers) or "
        "'reference_run' (main script: t condition, global teacher); default: reference",
    )
    parser.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override an M2DFConfig field (value parsed as JSON, else a string); repeatable",
    )
    parser.set_defaults(func=_run_cli)
