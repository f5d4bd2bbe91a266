"""Tests of configuration_m2df.py: presets, validation, serialisation."""

from __future__ import annotations

import inspect

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
# The release's values written out from METHOD.md (never derived from PAPER, so a changed paper default cannot hide a
# changed reference preset). Section numbers are METHOD.md's.
RELEASE = dict(
    num_frames=8,  # 8.1 seq_len
    prompt_template="a photo of {}",  # 2.1, 8.1
    views="both",  # 1: both views, always
    use_pps=True,  # 8.1 is_pps
    pps_top_k=4,  # 2.2, 8.1
    pps_scale=200.0,  # 2.2, 8.1
    pps_eval_mode="sample",  # 2.2 item 4, 4 row 6: sampled also at test
    ltce_activation="linear",  # 2.4, 4 row 1: Conv-Conv, no ReLU/BN
    use_position_embeddings=False,  # 2.6, 4 row 2
    reliability_token="first_frame",  # 2.7, 4 row 3
    distillation_text_condition=True,  # 2.10, 8.1: STAT [1, 1]
    distillation_visual_condition=True,
    distillation_teacher="both",  # 'bid'
    distillation_weight=1.0,  # 2.11 lambda_2
    distillation_detach_teacher=False,  # 2.10: nothing is detached
    unconditioned_distillation="sum",  # 2.10, 4 row 11
    text_loss_weight=0.0,  # 2.3, 2.11 lambda_0
    otam_lambda=0.5,  # 2.8
    otam_bidirectional=True,  # 2.8: unless SINGLE_DIRECT
    cosine_eps=0.01,  # 2.2, 5: added to the norm product
    ce_reduction="sum",  # 2.9: summed over queries
    mmfe_num_layers=1,  # 2.6: depth 1
    mmfe_num_heads=8,  # 2.6
    mmfe_ffn_dim=2048,  # 2.6, 5: 2048 for every D
    mmfe_dropout=0.2,  # 2.6 dropout_atte
    mmfe_ffn_dropout=0.05,  # 2.6 dropout_ffn
    tcn_num_levels=3,  # 2.5
    tcn_kernel_size=3,  # 2.5
    tcn_dropout=0.1,  # 2.5
    ltce_kernel_size=3,  # 2.4
    layer_norm_eps=1e-5,  # 2.6
    freeze_text_encoder=True,  # 2.1, 7: the text tower is used once under no_grad
    freeze_vision_encoder=False,  # 6.1, 7: the whole visual encoder is trained
    trainable_vision_layers=None,
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


def test_reference_preset_lists_every_release_value_explicitly():
    """The preset table itself holds the release's values: none comes from the (paper) class defaults."""
    fields = set(inspect.signature(M2DFConfig.__init__).parameters) - {"self", "kwargs"}
    not_release_values = {"clip_config", "initializer_range", "preset"}
    assert set(PRESETS["reference"]) == fields - not_release_values
    assert PRESETS["reference"] == RELEASE
    assert set(RELEASE) == fields - not_release_values  # this test's table is complete too
    run = dict(RELEASE, distillation_visual_condition=False, distillation_teacher="global")
    assert PRESETS["reference_run"] == run


def test_clip_config_of_the_caller_is_not_modified(clip_config):
    clip_config.vision_config.projection_dim = 7
    clip_config.text_config.projection_dim = 9
    before = clip_config.to_dict()
    config = M2DFConfig(clip_config=clip_config, mmfe_num_heads=4)
    assert clip_config.to_dict() == before
    assert config.clip_config is not clip_config and config.clip_config.vision_config is not clip_config.vision_config
    assert config.clip_config.vision_config.projection_dim == config.clip_config.text_config.projection_dim == 32


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
        ("num_frames", 30),  # beyond the global view's receptive field (29 frames with the default TCN)
        ("prompt_template", "a photo of"),
        ("views", "both_views"),
        ("use_pps", 1),
        ("pps_top_k", 0),
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


def test_number_of_frames_from_two_to_the_tcn_receptive_field():
    # the default pps_top_k=4 is fine for short clips (PPS then averages every frame: test_modeling)
    assert M2DFConfig(num_frames=2).pps_top_k == 4 and M2DFConfig(num_frames=3).num_frames == 3
    assert M2DFConfig(num_frames=29).tcn_receptive_field == 29  # 1 + 2 * 2 * (1 + 2 + 4)
    with pytest.raises(ValueError) as error:
        M2DFConfig(num_frames=32)
    message = str(error.value)
    for part in ("num_frames (32)", "29 frames", "tcn_kernel_size=3", "tcn_num_levels=3", "tcn_num_levels >= 4"):
        assert part in message
    assert M2DFConfig(num_frames=32, tcn_num_levels=4).tcn_receptive_field == 61
    assert M2DFConfig(num_frames=32, tcn_kernel_size=4).tcn_receptive_field == 43
    with pytest.raises(ValueError, match=r"tcn_num_levels >= 2"):
        M2DFConfig(num_frames=6, tcn_num_levels=1, tcn_kernel_size=2)  # receptive field 3; two levels give 7
    with pytest.raises(ValueError, match=r"num_frames \(32\)"):
        M2DFConfig(num_frames=32, views="global")
    # without the global view there is no TCN, hence no limit
    assert M2DFConfig(num_frames=64, views="local").num_frames == 64
    assert M2DFConfig(num_frames=64, views="none").num_frames == 64


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
