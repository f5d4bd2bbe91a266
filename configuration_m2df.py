"""Configuration of CLIP-M2DF (Guo et al. 2024, "Multi-view Distillation based on Multi-modal Fusion for Few-shot
Action Recognition").

This file is uploaded to the Hugging Face Hub next to ``modeling_m2df.py`` and must stay self-contained
(torch / transformers only).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from transformers import CLIPConfig, PretrainedConfig

VIEWS = ("both", "local", "global", "none")
PPS_EVAL_MODES = ("argmax", "sample")
LTCE_ACTIVATIONS = ("relu_bn", "linear")
RELIABILITY_TOKENS = ("prompt", "first_frame")
DISTILLATION_TEACHERS = ("both", "local", "global")
UNCONDITIONED_REDUCTIONS = ("weighted_mean", "sum")
CE_REDUCTIONS = ("mean", "sum")

# Every field that changes numbers, with the paper's choice (the class defaults) and the official release's
# behaviour. The release's distillation defaults differ between its two driver scripts: "reference" follows
# `run_clip_fsar_decison_now_statics.py` (t+v conditions, both teachers: the paper's best row of Table 5),
# "reference_run" follows `run_clip_fsar_decison_now.py` (t condition only, global view teaches).
# "reference" lists every release value explicitly (METHOD.md sections 2, 4, 5 and 8.1), so that changing a paper
# default can never change it. Not listed: `clip_config` (the backbone is chosen separately) and
# `initializer_range` (it only initialises positional embeddings, which the release does not have).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "reference": {
        "num_frames": 8,  # seq_len; the release's GTCE hard-codes 8
        "prompt_template": "a photo of {}",
        "views": "both",
        "use_pps": True,  # is_pps
        "pps_top_k": 4,
        "pps_scale": 200.0,
        "pps_eval_mode": "sample",  # random.choices also at test time
        "ltce_activation": "linear",  # Conv1d -> Conv1d, no ReLU / BatchNorm
        "ltce_kernel_size": 3,
        "tcn_num_levels": 3,
        "tcn_kernel_size": 3,
        "tcn_dropout": 0.1,
        "use_position_embeddings": False,
        "mmfe_num_layers": 1,  # TRAIN.TRANSFORMER_DEPTH is never set
        "mmfe_num_heads": 8,
        "mmfe_ffn_dim": 2048,
        "mmfe_dropout": 0.2,
        "mmfe_ffn_dropout": 0.05,
        "layer_norm_eps": 1e-5,
        "reliability_token": "first_frame",  # the first frame's output, not the prompt slot
        "distillation_text_condition": True,  # dist_condition [1, 1]
        "distillation_visual_condition": True,
        "distillation_teacher": "both",  # 'bid'
        "distillation_weight": 1.0,  # lambda_2
        "distillation_detach_teacher": False,
        "unconditioned_distillation": "sum",
        "text_loss_weight": 0.0,  # lambda_0
        "otam_lambda": 0.5,
        "otam_bidirectional": True,  # SINGLE_DIRECT unset (only the K100 1-shot YAML sets it)
        "cosine_eps": 0.01,
        "ce_reduction": "sum",
        "freeze_text_encoder": True,  # text features are computed once under no_grad
        "freeze_vision_encoder": False,  # the whole visual encoder is fine-tuned
        "trainable_vision_layers": None,
    },
}
PRESETS["reference_run"] = dict(
    PRESETS["reference"],
    distillation_text_condition=True,
    distillation_visual_condition=False,
    distillation_teacher="global",
)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"M2DFConfig.{name} must be one of {list(choices)}, got {value!r}.")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"M2DFConfig.{name} must be a bool, got {value!r}.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"M2DFConfig.{name} must be an int >= {minimum}, got {value!r}.")


def _check_float(name: str, value: Any, minimum: float, maximum: float | None = None, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > minimum if strict else value >= minimum
        if maximum is not None:
            ok = ok and value < maximum
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and < {maximum}" if maximum is not None else "")
        raise ValueError(f"M2DFConfig.{name} must be a number {bound}, got {value!r}.")


class M2DFConfig(PretrainedConfig):
    r"""Configuration of [`M2DFModel`]: a CLIP backbone plus the CLIP-M2DF few-shot head.

    The defaults are the paper's method (`M2DFConfig.from_preset("paper")`); `from_preset("reference")` reproduces
    the head of the official release (see `docs/model.md` for the full table).

    Args:
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP model whose vision and text towers (with projections) are used. Its `projection_dim` is the
            feature width D of the head.
        num_frames (`int`, defaults to 8):
            Frames per video T, at least 2. Inputs must have exactly this many frames. With the global view
            (`views="both"` or `"global"`), T must not exceed the TCN's receptive field `1 + 2 (tcn_kernel_size - 1)
            (2**tcn_num_levels - 1)` (29 frames for the defaults; raise `tcn_num_levels` for longer clips), so that
            the global context sees every frame.
        prompt_template (`str`, defaults to `"a photo of {}"`):
            Text prompt; `{}` is replaced by the class name (used by processors and pipelines).
        views (`str`, defaults to `"both"`):
            `"both"`: local (LTCE) and global (GTCE) views, fused distances and mutual distillation (the paper's
            model); `"local"` / `"global"`: that single view; `"none"`: the NTCE baseline (MMFE without a temporal
            context extractor). Single views have no distillation (paper Table 3).
        use_pps (`bool`, defaults to `True`):
            Probability Prompt Selector (eqs. 1-2). When off, the query prompt is a zero vector: the release's "without
            PPS" ablation (the paper does not say how PPS is removed).
        pps_top_k (`int`, defaults to 4):
            PPS scores a class by the mean cosine of its `pps_top_k` best-matching query frames (all frames when
            `pps_top_k >= num_frames`, e.g. T = 2 or 3 with the default 4). The auxiliary text logits use the same k.
        pps_scale (`float`, defaults to 200.0):
            Inverse temperature 1/t of the PPS softmax (eq. 2).
        pps_eval_mode (`str`, defaults to `"argmax"`):
            PPS choice at evaluation: `"argmax"` (deterministic) or `"sample"` (the release). Training always samples
            (with torch's RNG).
        ltce_activation (`str`, defaults to `"relu_bn"`):
            LTCE (eq. 3) as Conv-ReLU-BN-Conv-ReLU-BN (`"relu_bn"`, the paper) or Conv-Conv (`"linear"`, the release).
        ltce_kernel_size (`int`, defaults to 3):
            Temporal kernel of the LTCE convolutions (odd).
        tcn_num_levels (`int`, defaults to 3):
            Temporal blocks of the GTCE TCN (dilation 2**i). Together with `tcn_kernel_size` it sets the receptive
            field, which must cover `num_frames` (see there).
        tcn_kernel_size (`int`, defaults to 3):
            Kernel of the TCN's causal convolutions.
        tcn_dropout (`float`, defaults to 0.1):
            Dropout inside the TCN blocks.
        use_position_embeddings (`bool`, defaults to `True`):
            Learned positional embeddings f_pos on the MMFE inputs (eq. 7; the release has none).
        mmfe_num_layers (`int`, defaults to 1):
            Cross-transformer layers per view.
        mmfe_num_heads (`int`, defaults to 8):
            Attention heads (head width D / heads).
        mmfe_ffn_dim (`int`, defaults to 2048):
            Hidden width of the MMFE feed-forward network.
        mmfe_dropout (`float`, defaults to 0.2):
            Dropout after the attention output projection.
        mmfe_ffn_dropout (`float`, defaults to 0.05):
            Dropout inside and after the feed-forward network.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the MMFE LayerNorm.
        reliability_token (`str`, defaults to `"prompt"`):
            Token of the text-mode reliability (eq. 11): the prompt slot's output (`"prompt"`, the paper) or the first
            frame's output (`"first_frame"`, the release).
        distillation_text_condition (`bool`, defaults to `True`):
            Use the text-mode comparison (eq. 13) to pick the reliable view.
        distillation_visual_condition (`bool`, defaults to `True`):
            Use the visual-mode comparison (eq. 12) to pick the reliable view. With both conditions off, every query
            is distilled in both directions ("unconditioned").
        distillation_teacher (`str`, defaults to `"both"`):
            Which distillation losses of eq. 14 are kept: `"both"` (L_g->l + L_l->g; release `bid`), `"global"`
            (L_g->l, the global view teaches; release `up2down`), `"local"` (L_l->g; release `down2up`).
        distillation_weight (`float`, defaults to 1.0):
            lambda of eq. 15.
        distillation_detach_teacher (`bool`, defaults to `True`):
            Stop gradients through the teacher distribution and the reliability weights (the release does not).
        unconditioned_distillation (`str`, defaults to `"weighted_mean"`):
            Reduction over queries when both conditions are off: eq. 14's weighted mean over all queries, or the
            release's unweighted `"sum"`.
        text_loss_weight (`float`, defaults to 0.0):
            Weight of the auxiliary CLIP-FSAR text loss (the release computes it with weight 0). When > 0 the model
            has a learnable `text_logit_scale` and the forward needs `split_text_embeds`, `support_class_ids` and
            `query_class_ids`.
        otam_lambda (`float`, defaults to 0.5):
            Soft-min smoothness of OTAM (eq. 9's distance).
        otam_bidirectional (`bool`, defaults to `True`):
            Query->support plus support->query OTAM (the release's default), or one-way.
        cosine_eps (`float`, defaults to 0.0):
            Cosine similarity as <a,b> / (|a||b| + eps). 0 gives the exact cosine (the paper); the release adds 0.01.
        ce_reduction (`str`, defaults to `"mean"`):
            Reduction of the cross-entropy losses over queries: `"mean"` or `"sum"` (the release).
        freeze_text_encoder (`bool`, defaults to `True`):
            Freeze the CLIP text tower (the paper never trains it).
        freeze_vision_encoder (`bool`, defaults to `False`):
            Freeze the CLIP vision tower (the paper fine-tunes it).
        trainable_vision_layers (`int`, *optional*):
            If set, only the last n vision encoder layers, the post-LayerNorm and the visual projection are trained.
        initializer_range (`float`, defaults to 0.02):
            Std of the positional-embedding initialisation.
        preset (`str`, defaults to `"paper"`):
            Name of the preset this config was built from (informational).
    """

    model_type = "clip_m2df"
    sub_configs_defaults = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config: CLIPConfig | dict | None = None,
        num_frames: int = 8,
        prompt_template: str = "a photo of {}",
        views: str = "both",
        use_pps: bool = True,
        pps_top_k: int = 4,
        pps_scale: float = 200.0,
        pps_eval_mode: str = "argmax",
        ltce_activation: str = "relu_bn",
        ltce_kernel_size: int = 3,
        tcn_num_levels: int = 3,
        tcn_kernel_size: int = 3,
        tcn_dropout: float = 0.1,
        use_position_embeddings: bool = True,
        mmfe_num_layers: int = 1,
        mmfe_num_heads: int = 8,
        mmfe_ffn_dim: int = 2048,
        mmfe_dropout: float = 0.2,
        mmfe_ffn_dropout: float = 0.05,
        layer_norm_eps: float = 1e-5,
        reliability_token: str = "prompt",
        distillation_text_condition: bool = True,
        distillation_visual_condition: bool = True,
        distillation_teacher: str = "both",
        distillation_weight: float = 1.0,
        distillation_detach_teacher: bool = True,
        unconditioned_distillation: str = "weighted_mean",
        text_loss_weight: float = 0.0,
        otam_lambda: float = 0.5,
        otam_bidirectional: bool = True,
        cosine_eps: float = 0.0,
        ce_reduction: str = "mean",
        freeze_text_encoder: bool = True,
        freeze_vision_encoder: bool = False,
        trainable_vision_layers: int | None = None,
        initializer_range: float = 0.02,
        preset: str = "paper",
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        elif isinstance(clip_config, PretrainedConfig):
            clip_config = copy.deepcopy(clip_config)  # the projection widths are set below: not on the caller's
        else:
            raise ValueError(
                f"M2DFConfig.clip_config must be a CLIPConfig or a dict, got {type(clip_config).__name__}."
            )
        # The towers are built from the sub-configs: keep their projection width equal to the joint width D.
        clip_config.vision_config.projection_dim = clip_config.projection_dim
        clip_config.text_config.projection_dim = clip_config.projection_dim
        self.clip_config = clip_config
        self.num_frames = num_frames
        self.prompt_template = prompt_template
        self.views = views
        self.use_pps = use_pps
        self.pps_top_k = pps_top_k
        self.pps_scale = pps_scale
        self.pps_eval_mode = pps_eval_mode
        self.ltce_activation = ltce_activation
        self.ltce_kernel_size = ltce_kernel_size
        self.tcn_num_levels = tcn_num_levels
        self.tcn_kernel_size = tcn_kernel_size
        self.tcn_dropout = tcn_dropout
        self.use_position_embeddings = use_position_embeddings
        self.mmfe_num_layers = mmfe_num_layers
        self.mmfe_num_heads = mmfe_num_heads
        self.mmfe_ffn_dim = mmfe_ffn_dim
        self.mmfe_dropout = mmfe_dropout
        self.mmfe_ffn_dropout = mmfe_ffn_dropout
        self.layer_norm_eps = layer_norm_eps
        self.reliability_token = reliability_token
        self.distillation_text_condition = distillation_text_condition
        self.distillation_visual_condition = distillation_visual_condition
        self.distillation_teacher = distillation_teacher
        self.distillation_weight = distillation_weight
        self.distillation_detach_teacher = distillation_detach_teacher
        self.unconditioned_distillation = unconditioned_distillation
        self.text_loss_weight = text_loss_weight
        self.otam_lambda = otam_lambda
        self.otam_bidirectional = otam_bidirectional
        self.cosine_eps = cosine_eps
        self.ce_reduction = ce_reduction
        self.freeze_text_encoder = freeze_text_encoder
        self.freeze_vision_encoder = freeze_vision_encoder
        self.trainable_vision_layers = trainable_vision_layers
        self.initializer_range = initializer_range
        self.preset = preset
        self.validate()
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Feature width D of the head (CLIP's joint embedding width)."""
        return self.clip_config.projection_dim

    @property
    def tcn_receptive_field(self) -> int:
        """Frames seen by the last step of the global view's TCN: `1 + 2 (k - 1) (2^levels - 1)` (two causal
        convolutions of kernel k per level, dilations 1, 2, 4, ...). Must be at least `num_frames`."""
        return self._receptive_field(self.tcn_kernel_size, self.tcn_num_levels)

    @staticmethod
    def _receptive_field(kernel_size: int, num_levels: int) -> int:
        return 1 + 2 * (kernel_size - 1) * (2**num_levels - 1)

    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid field."""
        _check_int("num_frames", self.num_frames, 2)
        if not isinstance(self.prompt_template, str) or "{}" not in self.prompt_template:
            raise ValueError(
                f"M2DFConfig.prompt_template must be a str containing '{{}}', got {self.prompt_template!r}."
            )
        _check_choice("views", self.views, VIEWS)
        _check_bool("use_pps", self.use_pps)
        _check_int("pps_top_k", self.pps_top_k, 1)  # may exceed num_frames: the model then averages all frames
        _check_float("pps_scale", self.pps_scale, 0.0, strict=True)
        _check_choice("pps_eval_mode", self.pps_eval_mode, PPS_EVAL_MODES)
        _check_choice("ltce_activation", self.ltce_activation, LTCE_ACTIVATIONS)
        _check_int("ltce_kernel_size", self.ltce_kernel_size, 1)
        if self.ltce_kernel_size % 2 == 0:
            raise ValueError(
                f"M2DFConfig.ltce_kernel_size must be odd (same-length conv), got {self.ltce_kernel_size}."
            )
        _check_int("tcn_num_levels", self.tcn_num_levels, 1)
        _check_int("tcn_kernel_size", self.tcn_kernel_size, 2)
        _check_float("tcn_dropout", self.tcn_dropout, 0.0, 1.0)
        if self.views in ("both", "global") and self.tcn_receptive_field < self.num_frames:
            kernel, levels = self.tcn_kernel_size, self.tcn_num_levels
            while self._receptive_field(kernel, levels) < self.num_frames:
                levels += 1
            raise ValueError(
                f"M2DFConfig.num_frames ({self.num_frames}) exceeds the receptive field of the global view's TCN, "
                f"1 + 2 * (tcn_kernel_size - 1) * (2**tcn_num_levels - 1) = {self.tcn_receptive_field} frames with "
                f"tcn_kernel_size={kernel} and tcn_num_levels={self.tcn_num_levels}: its last step would not see the "
                f"first frames, and the global view (eq. 4) would not be global. Set tcn_num_levels >= {levels} (or a "
                "larger tcn_kernel_size), or fewer num_frames."
            )
        _check_bool("use_position_embeddings", self.use_position_embeddings)
        _check_int("mmfe_num_layers", self.mmfe_num_layers, 1)
        _check_int("mmfe_num_heads", self.mmfe_num_heads, 1)
        if self.hidden_size % self.mmfe_num_heads != 0:
            raise ValueError(
                f"M2DFConfig.mmfe_num_heads ({self.mmfe_num_heads}) must divide the feature width "
                f"clip_config.projection_dim ({self.hidden_size})."
            )
        _check_int("mmfe_ffn_dim", self.mmfe_ffn_dim, 1)
        _check_float("mmfe_dropout", self.mmfe_dropout, 0.0, 1.0)
        _check_float("mmfe_ffn_dropout", self.mmfe_ffn_dropout, 0.0, 1.0)
        _check_float("layer_norm_eps", self.layer_norm_eps, 0.0, strict=True)
        _check_choice("reliability_token", self.reliability_token, RELIABILITY_TOKENS)
        _check_bool("distillation_text_condition", self.distillation_text_condition)
        _check_bool("distillation_visual_condition", self.distillation_visual_condition)
        _check_choice("distillation_teacher", self.distillation_teacher, DISTILLATION_TEACHERS)
        _check_float("distillation_weight", self.distillation_weight, 0.0)
        _check_bool("distillation_detach_teacher", self.distillation_detach_teacher)
        _check_choice("unconditioned_distillation", self.unconditioned_distillation, UNCONDITIONED_REDUCTIONS)
        _check_float("text_loss_weight", self.text_loss_weight, 0.0)
        _check_float("otam_lambda", self.otam_lambda, 0.0, strict=True)
        _check_bool("otam_bidirectional", self.otam_bidirectional)
        _check_float("cosine_eps", self.cosine_eps, 0.0)
        _check_choice("ce_reduction", self.ce_reduction, CE_REDUCTIONS)
        _check_bool("freeze_text_encoder", self.freeze_text_encoder)
        _check_bool("freeze_vision_encoder", self.freeze_vision_encoder)
        if self.trainable_vision_layers is not None:
            _check_int("trainable_vision_layers", self.trainable_vision_layers, 0)
            num_layers = self.clip_config.vision_config.num_hidden_layers
            if self.trainable_vision_layers > num_layers:
                raise ValueError(
                    f"M2DFConfig.trainable_vision_layers ({self.trainable_vision_layers}) exceeds the vision encoder's "
                    f"{num_layers} layers."
                )
            if self.freeze_vision_encoder:
                raise ValueError(
                    "M2DFConfig.trainable_vision_layers is set but freeze_vision_encoder=True: choose one of the two."
                )
        _check_float("initializer_range", self.initializer_range, 0.0)
        if not isinstance(self.preset, str):
            raise ValueError(f"M2DFConfig.preset must be a str, got {self.preset!r}.")

    @classmethod
    def field_names(cls) -> set[str]:
        """The behaviour fields a preset can override (`from_preset(**overrides)`), i.e. every constructor argument
        but `clip_config`. Callers use it to refuse misspelt fields, which `PretrainedConfig` would silently keep."""
        return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "clip_config", "preset"}

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> "M2DFConfig":
        """Build a config from a named preset, then apply `overrides` (any `M2DFConfig` field).

        - `"paper"`: the paper's method (the class defaults).
        - `"reference"`: the official release's head, with the distillation settings of its statistics script
          (t+v conditions, both teachers: the paper's best Table 5 row).
        - `"reference_run"`: the release's head with its main script's distillation (t condition, global teacher).
        """
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        kwargs = copy.deepcopy(PRESETS[preset])
        kwargs.update(overrides)
        kwargs["preset"] = preset
        return cls(**kwargs)


M2DFConfig.register_for_auto_class()
