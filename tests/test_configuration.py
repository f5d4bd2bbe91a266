"""Tests of configuration_m2df.py: presets, validation, serialisation."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, CLIPConfig

from configuration_m2df import PRESETS, M2DFConfig

# The paper's choices (class defaults) and the release's, field by field (METHOD.md sections 4, 5 and 8).
PAPER = dict(
    num_frames=8,
    prompt_template="a photo of {}",
    views="both",
    use_pps=True,
    pps_top_k=4,
    pps_scale=200.0,
    pps_eval_mode="argmax",
    ltce_activation="relu_bn",
    use_position_embeddings=True,
    reliability_token="prompt",
    distillation_text_condition=True,
    distillation_visual_condition=True,
    distillation_teacher="both",
    distillation_weight=1.0,
    distillation_detach_teacher=True,
    unconditioned_distillation="weighted_mean",
    text_loss_weight=0.0,
    otam_lambda=0.5,
    otam_bidirectional=True,
    cosine_eps=0.0,
    ce_reduction="mean",
    mmfe_num_layers=1,
    mmfe_num_heads=8,
    mmfe_ffn_dim=2048,
    mmfe_dropout=0.2,
    mmfe_ffn_dropout=0.05,
    tcn_num_levels=3,
    tcn_kernel_size=3,
    tcn_dropout=0.1,
    ltce_kernel_size=3,
    layer_norm_eps=1e-5,
    freeze_text_encoder=True,
    freeze_vision_encoder=False,
    trainable_vision_layers=None,
)
RELEASE = dict(
    PAPER,
    pps_eval_mode="sample",
    ltce_activation="linear",
    use_position_embeddings=False,
    reliability_token="first_frame",
    cosine_eps=0.01,
    ce_reduction="sum",
    distillation_detach_teacher=False,
    unconditioned_distillation="sum",
)


def _fields(config, names):
    return {name: getattr(config, name) for name in names}


def test_paper_and_reference_presets():
    assert _fields(M2DFConfig.from_preset("paper"), PAPER) == PAPER
    assert _fields(M2DFConfig(), PAPER) == PAPER
    assert _fields(M2DFConfig.from_preset("reference"), RELEASE) == RELEASE
    run = dict(RELEASE, distillation_visual_condition=False, distillation_teacher="global")
    assert _fields(M2DFConfig.from_preset("reference_run"), run) == run
    assert M2DFConfig.from_preset("reference").preset == "reference"
    assert M2DFConfig.from_preset("paper").clip_config.projection_dim == 512


def test_overrides_apply_on_top_of_the_preset(clip_config):
    config = M2DFConfig.from_preset("reference", clip_config=clip_config, num_frames=16, cosine_eps=0.0)
    assert config.num_frames == 16 and config.cosine_eps == 0.0 and config.ce_reduction == "sum"
    assert config.hidden_size == 32 and isinstance(config.clip_config, CLIPConfig)
    assert PRESETS["reference"]["cosine_eps"] == 0.01  # the preset table is not mutated
    with pytest.raises(ValueError, match="Unknown preset 'official'"):
        M2DFConfig.from_preset("official")


def test_clip_config_from_dict_keeps_tower_projections_equal(clip_config):
    as_dict = clip_config.to_dict()
    as_dict["projection_dim"] = 16
    config = M2DFConfig(clip_config=as_dict, mmfe_num_heads=4)
    assert isinstance(config.clip_config, CLIPConfig)
    assert config.clip_config.vision_config.projection_dim == config.clip_config.text_config.projection_dim == 16


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_frames", 1),
        ("num_frames", "8"),
        ("prompt_template", "a photo of"),
        ("views", "both_views"),
        ("use_pps", 1),
        ("pps_top_k", 0),
        ("pps_top_k", 9),
        ("pps_scale", 0.0),
        ("pps_eval_mode", "max"),
        ("ltce_activation", "relu"),
        ("ltce_kernel_size", 2),
        ("tcn_num_levels", 0),
        ("tcn_kernel_size", 1),
        ("tcn_dropout", 1.0),
        ("use_position_embeddings", "yes"),
        ("mmfe_num_layers", 0),
        ("mmfe_num_heads", 7),
        ("mmfe_ffn_dim", 0),
        ("mmfe_dropout", -0.1),
        ("mmfe_ffn_dropout", 1.5),
        ("layer_norm_eps", 0.0),
        ("reliability_token", "cls"),
        ("distillation_text_condition", None),
        ("distillation_visual_condition", 0),
        ("distillation_teacher", "up2down"),
        ("distillation_weight", -1.0),
        ("distillation_detach_teacher", "no"),
        ("unconditioned_distillation", "mean"),
        ("text_loss_weight", -0.5),
        ("otam_lambda", 0.0),
        ("otam_bidirectional", None),
        ("cosine_eps", -0.01),
        ("ce_reduction", "none"),
        ("freeze_text_encoder", 1),
        ("freeze_vision_encoder", None),
        ("trainable_vision_layers", -1),
        ("trainable_vision_layers", 13),
        ("initializer_range", -1.0),
        ("preset", 3),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"M2DFConfig\.{field}"):
        M2DFConfig(**{field: value})


def test_conflicting_freezing_options_raise():
    with pytest.raises(ValueError, match="trainable_vision_layers"):
        M2DFConfig(freeze_vision_encoder=True, trainable_vision_layers=2)
    assert M2DFConfig(trainable_vision_layers=0).trainable_vision_layers == 0


def test_any_number_of_frames_from_two():
    assert M2DFConfig(num_frames=2, pps_top_k=2).num_frames == 2
    assert M2DFConfig(num_frames=32).num_frames == 32


def test_save_pretrained_round_trip_and_auto_config(clip_config, tmp_path):
    config = M2DFConfig.from_preset(
        "reference_run", clip_config=clip_config, num_frames=6, mmfe_num_heads=4, trainable_vision_layers=1
    )
    config.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert '"model_type": "clip_m2df"' in text and '"AutoConfig": "configuration_m2df.M2DFConfig"' in text
    assert '"temperature"' not in text  # a reserved generation parameter would break save_pretrained
    for loaded in (M2DFConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)):
        assert type(loaded).__name__ == "M2DFConfig"
        names = list(PAPER) + ["preset"]
        assert _fields(loaded, names) == _fields(config, names)
        assert loaded.clip_config.to_dict() == config.clip_config.to_dict()
