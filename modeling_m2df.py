"""CLIP-M2DF: few-shot action recognition by multi-view distillation over multi-modal fusion, on CLIP.

Guo et al. 2024, "Multi-view Distillation based on Multi-modal Fusion for Few-shot Action Recognition
(CLIP-M2DF)", KBS 304:112539, arXiv 2401.08345. Equation numbers below refer to that paper.

One forward pass is one few-shot episode: N classes, K support videos per class, NQ query videos, T frames each,
CLIP joint-embedding width D. This file is uploaded to the Hugging Face Hub as it is: it only imports torch,
transformers and its sibling ``configuration_m2df.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

try:
    from .configuration_m2df import M2DFConfig
except ImportError:  # imported as a top-level module from the pip install
    from configuration_m2df import M2DFConfig

@dataclass
class M2DFOutput(ModelOutput):
    r"""Outputs of [`M2DFModel`] for one episode (N classes, NS = N*K support videos, NQ queries).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `query_labels` is given):
            Eq. 15: `main_loss + distillation_weight * distillation_loss (+ text_loss_weight * text_loss)`.
        logits (`torch.FloatTensor` of shape `(NQ, N)`):
            Eqs. 9 and 16: minus the fused OTAM distance, `-(local_distances + global_distances)` (or minus the
            single view's distance); softmax over the last axis gives class probabilities.
        distances (`torch.FloatTensor` of shape `(NQ, N)`):
            The fused distance, `-logits`.
        local_distances (`torch.FloatTensor` of shape `(NQ, N)`, *optional*):
            OTAM distance of the local (LTCE) view; `None` when that view is not built.
        global_distances (`torch.FloatTensor` of shape `(NQ, N)`, *optional*):
            OTAM distance of the global (GTCE) view; `None` when that view is not built.
        main_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `query_labels` is given):
            Cross-entropy of `logits` against `query_labels` (mean or sum over queries, `config.ce_reduction`).
        distillation_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `views="both"`):
            Eq. 14, the mutual-distillation loss (before the weight lambda).
        text_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Auxiliary CLIP-FSAR text cross-entropy, returned when `text_loss_weight > 0` and labels are given.
        text_logits (`torch.FloatTensor` of shape `(NS + NQ, C)`, *optional*):
            Auxiliary text logits over the C classes of `split_text_embeds` (support rows first).
        query_prompt_probs (`torch.FloatTensor` of shape `(NQ, N)`, *optional*):
            Eq. 2, the PPS distribution over the episode's classes; `None` when PPS is off.
        query_prompt_ids (`torch.LongTensor` of shape `(NQ,)`, *optional*):
            The class whose prompt each query received (sampled, argmax or given); `None` when PPS is off.
        local_reliable_mask (`torch.BoolTensor` of shape `(NQ,)`, *optional*):
            Queries for which the local view is reliable (Omega_l; it teaches the global view). `views="both"` only.
        global_reliable_mask (`torch.BoolTensor` of shape `(NQ,)`, *optional*):
            Queries for which the global view is reliable (Omega_g; it teaches the local view).
        visual_reliability (`torch.FloatTensor` of shape `(NQ, 2)`, *optional*):
            Eq. 12, visual-mode discriminant scores, columns (local, global).
        text_reliability (`torch.FloatTensor` of shape `(NQ, 2)`, *optional*):
            Eq. 13, text-mode discriminant scores, columns (local, global).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    distances: torch.FloatTensor | None = None
    local_distances: torch.FloatTensor | None = None
    global_distances: torch.FloatTensor | None = None
    main_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    query_prompt_probs: torch.FloatTensor | None = None
    query_prompt_ids: torch.LongTensor | None = None
    local_reliable_mask: torch.BoolTensor | None = None
    global_reliable_mask: torch.BoolTensor | None = None
    visual_reliability: torch.FloatTensor | None = None
    text_reliability: torch.FloatTensor | None = None


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Similarities, soft-mins and losses run in float32 (or float64) even when the model runs in bf16/fp16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pairwise_cosine(x: torch.Tensor, y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cosine of every row pair: `[..., P, D] x [..., R, D] -> [..., P, R]`.

    `<x, y> / (|x| |y| + eps)`: `eps=0` is the exact cosine (norm product clamped at 1e-8 against zero vectors),
    `eps=0.01` is the official release's `cos_sim`.
    """
    dots = x @ y.transpose(-1, -2)
    norms = x.norm(dim=-1).unsqueeze(-1) * y.norm(dim=-1).unsqueeze(-2)
    if eps > 0:
        return dots / (norms + eps)
    return dots / norms.clamp_min(1e-8)


# ---------------------------------------------------------------------------------------------------------------
# PPS (eqs. 1-2)
# ---------------------------------------------------------------------------------------------------------------


def prompt_similarity(
    query_frames: torch.Tensor, class_text: torch.Tensor, top_k: int, cosine_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 at frame level: `frame_similarity [NQ, N, T]` = cos(prompt of class c, frame t of query q), and the
    class score `[NQ, N]` = mean of the `top_k` best frames (the release's summary of a video)."""
    frame_similarity = pairwise_cosine(
        _at_least_float32(class_text), _at_least_float32(query_frames), cosine_eps
    )  # [NQ, N, T]
    return frame_similarity, frame_similarity.topk(top_k, dim=-1).values.mean(dim=-1)


class M2DFPromptSelector(nn.Module):
    r"""Probability Prompt Selector, eqs. 1 and 2.

    `sim_c = cos(f_q, token_c)` (eq. 1) is computed per frame and summarised as the mean of the `pps_top_k`
    best-matching frames (all T frames when `pps_top_k >= T`); `prob_c = exp(sim_c / t) / sum_c' exp(sim_c' / t)`
    (eq. 2) with `1/t = pps_scale`. The query takes the prompt of one class drawn from `prob` (training, with torch's
    RNG; also at evaluation with `pps_eval_mode="sample"`) or of its argmax (evaluation). The choice is not
    differentiable.
    """

    def __init__(self, config):
        super().__init__()
        self.top_k = min(config.pps_top_k, config.num_frames)  # clips shorter than k: every frame counts
        self.scale = config.pps_scale
        self.eval_mode = config.pps_eval_mode
        self.cosine_eps = config.cosine_eps

    @torch.no_grad()
    def forward(
        self,
        query_frames: torch.Tensor,
        class_text: torch.Tensor,
        query_prompt_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`query_frames [NQ, T, D]`, `class_text [N, D]` -> (`probs [NQ, N]`, `prompt_ids [NQ]`)."""
        _, class_similarity = prompt_similarity(query_frames, class_text, self.top_k, self.cosine_eps)
        probs = torch.softmax(self.scale * class_similarity, dim=-1)
        if query_prompt_ids is None:
            if self.training or self.eval_mode == "sample":
                query_prompt_ids = torch.multinomial(probs, 1).squeeze(-1)
            else:
                query_prompt_ids = class_similarity.argmax(dim=-1)
        return probs, query_prompt_ids


# ---------------------------------------------------------------------------------------------------------------
# Temporal context extractors: LTCE (eq. 3), GTCE (eq. 4)
# ---------------------------------------------------------------------------------------------------------------


class M2DFLocalTemporalContext(nn.Module):
    r"""Local Temporal Context Extractor (LTCE), eq. 3.

    `F1 = F * W1, F2 = ReLU(F1), F3 = BN(F2), F4 = F3 * W2, F5 = ReLU(F4), F^l = BN(F5)`: two same-length temporal
    convolutions (kernel `ltce_kernel_size`). With `ltce_activation="linear"` (the release) the ReLUs and BNs are
    absent and LTCE is a linear temporal filter.
    """

    def __init__(self, config):
        super().__init__()
        dim, kernel = config.hidden_size, config.ltce_kernel_size
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.use_relu_bn = config.ltce_activation == "relu_bn"
        if self.use_relu_bn:
            self.norm1 = nn.BatchNorm1d(dim)
            self.norm2 = nn.BatchNorm1d(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`frames [B, T, D] -> [B, T, D]`."""
        hidden = frames.transpose(1, 2)  # [B, D, T]
        hidden = self.conv1(hidden)
        if self.use_relu_bn:
            hidden = self.norm1(F.relu(hidden))
        hidden = self.conv2(hidden)
        if self.use_relu_bn:
            hidden = self.norm2(F.relu(hidden))
        return hidden.transpose(1, 2)


class M2DFTemporalBlock(GradientCheckpointingLayer):
    """One TCN level: two weight-normalised causal dilated convolutions with ReLU and dropout, plus a residual."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        # Left padding makes the convolution causal (the release pads both sides, then chomps the right).
        self.causal_padding = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(dim, dim, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(dim, dim, kernel_size, dilation=dilation))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden [B, D, T] -> [B, D, T]`."""
        out = self.dropout(F.relu(self.conv1(F.pad(hidden, (self.causal_padding, 0)))))
        out = self.dropout(F.relu(self.conv2(F.pad(out, (self.causal_padding, 0)))))
        return F.relu(out + hidden)


class M2DFGlobalTemporalContext(nn.Module):
    r"""Global Temporal Context Extractor (GTCE), eq. 4: `F^g = Repeat(TCN(F)[-1]) + F`.

    A TCN of `tcn_num_levels` blocks with dilations 1, 2, 4, ...; its last time step sees the whole clip because
    the receptive field `1 + 2 (k-1) (2^levels - 1)` (29 frames for the defaults) covers T, which `M2DFConfig`
    enforces.
    """

    def __init__(self, config):
        super().__init__()
        self.tcn = nn.ModuleList(
            M2DFTemporalBlock(config.hidden_size, config.tcn_kernel_size, 2**level, config.tcn_dropout)
            for level in range(config.tcn_num_levels)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`frames [B, T, D] -> [B, T, D]`."""
        hidden = frames.transpose(1, 2)  # [B, D, T]
        for block in self.tcn:
            hidden = block(hidden)
        last = hidden[:, :, -1].unsqueeze(1)  # [B, 1, D]
        return last.expand_as(frames) + frames


# ---------------------------------------------------------------------------------------------------------------
# MMFE cross-transformer (eqs. 5-7)
# ---------------------------------------------------------------------------------------------------------------


class M2DFCrossAttention(nn.Module):
    """Multi-head attention of the MMFE: bias-free q/k/v projections, output projection with bias, then dropout."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.num_heads = config.mmfe_num_heads
        self.head_dim = dim // self.num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.mmfe_dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`queries [B, L, D]`, `context [B, S, D] -> [B, L, D]`."""
        batch, length, dim = queries.shape
        q = self.q_proj(queries).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, dh]
        k = self.k_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, S, dh]
        v = self.v_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if self.config._attn_implementation == "eager":
            weights = torch.softmax((q @ k.transpose(-1, -2)) * self.head_dim**-0.5, dim=-1)
            attended = weights @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        return self.dropout(self.out_proj(attended))


class M2DFFeedForward(nn.Module):
    """MMFE feed-forward network: Linear -> GELU -> Dropout -> Linear -> Dropout (no pre-norm)."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mmfe_ffn_dim)
        self.fc2 = nn.Linear(config.mmfe_ffn_dim, config.hidden_size)
        self.dropout = nn.Dropout(config.mmfe_ffn_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(hidden)))))


class M2DFFusionLayer(GradientCheckpointingLayer):
    """One cross-transformer layer: `x = q + Attn(LN(q), LN(kv), LN(kv))`, then `x = x + FFN(x)`.

    One LayerNorm is shared by the query and key/value streams; the residual adds the un-normalised query.
    """

    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = M2DFCrossAttention(config)
        self.ffn = M2DFFeedForward(config)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`hidden [B, T+1, D]`, `context [B, T+1, D] -> [B, T+1, D]`."""
        hidden = hidden + self.attention(self.norm(hidden), self.norm(context))
        return hidden + self.ffn(hidden)


class M2DFFusionEncoder(nn.Module):
    r"""Multi-modal Fusion Encoder (MMFE), eqs. 5-7.

    `F_hat = Concat(token, F)` (eq. 5), `F_hat^b = Concat(token, F^b)` (eq. 6) and
    `F_tilde^b = T(F_hat^b + f_pos, F_hat + f_pos, F_hat + f_pos)` (eq. 7): the view's temporal context (prefixed by
    the prompt) queries the raw CLIP frames (prefixed by the same prompt). Attention stays within one video. Layers
    after the first attend to their own output. `f_pos` exists only with `use_position_embeddings=True`.
    """

    def __init__(self, config):
        super().__init__()
        if config.use_position_embeddings:
            self.position_embeddings = nn.Parameter(torch.empty(config.num_frames + 1, config.hidden_size))
        else:
            self.position_embeddings = None
        self.layers = nn.ModuleList(M2DFFusionLayer(config) for _ in range(config.mmfe_num_layers))

    def forward(self, prompts: torch.Tensor, context_frames: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """`prompts [B, D]`, `context_frames [B, T, D]` (F^b), `frames [B, T, D]` (F) -> `[B, T+1, D]`."""
        prompts = prompts.unsqueeze(1).to(frames.dtype)
        hidden = torch.cat([prompts, context_frames], dim=1)  # eq. 6, [B, T+1, D]
        context = torch.cat([prompts, frames], dim=1)  # eq. 5, [B, T+1, D]
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings
            context = context + self.position_embeddings
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, context if index == 0 else hidden)
        return hidden


class M2DFTemporalView(nn.Module):
    """One view of the multi-view structure: a temporal context extractor (LTCE, GTCE, or none) and its MMFE."""

    def __init__(self, config, temporal_context: nn.Module | None):
        super().__init__()
        self.temporal_context = temporal_context
        self.fusion_encoder = M2DFFusionEncoder(config)

    def forward(self, frames: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """`frames [B, T, D]`, `prompts [B, D] -> [B, T+1, D]` (position 0 is the prompt slot)."""
        context = frames if self.temporal_context is None else self.temporal_context(frames)
        return self.fusion_encoder(prompts, context, frames)


# ---------------------------------------------------------------------------------------------------------------
# Prototypes (eq. 8), OTAM and fusion (eq. 9)
# ---------------------------------------------------------------------------------------------------------------


def class_prototypes(support_outputs: torch.Tensor, support_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Eq. 8, `U_c = 1/K sum_k F_tilde_{s_c^k}`: `support_outputs [NS, L, D]` -> `[N, L, D]` (row c = label c)."""
    one_hot = F.one_hot(support_labels, num_classes).to(support_outputs.dtype)  # [NS, N]
    weights = one_hot / one_hot.sum(dim=0, keepdim=True)
    return torch.einsum("sn,sld->nld", weights, support_outputs)


def otam_cumulative_distance(cost: torch.Tensor, lam: float) -> torch.Tensor:
    r"""One-direction OTAM alignment cost (the `dis` of eq. 9), exactly the release's recursion.

    `cost [..., L, M]` (rows: query frames, columns: support frames) is padded with a zero column on each side,
    `P [..., L, M+2]`. Row 0 is a hard cumulative sum; for rows l >= 1, with `softmin(x) = -lam log sum exp(-x/lam)`:
    `C[l,0] = 0`, `C[l,1] = P[l,1] + softmin(C[l-1,0], C[l-1,1], C[l,0])`,
    `C[l,m] = P[l,m] + softmin(C[l-1,m-1], C[l,m-1])` for 2 <= m <= M, and
    `C[l,M+1] = softmin(C[l-1,M], C[l-1,M+1], C[l,M])`. Returns `C[L-1, M+1]` of shape `[...]`.

    Computed over anti-diagonals (`L + M` vectorised steps) with a stable log-sum-exp, in float32 at least. Terms
    that the recursion leaves out of a soft-min enter the log-sum-exp as exact zeros (`-inf` exponents), so the result
    is the recursion's for any `lam > 0` (a finite "unreachable" stand-in would leak into the soft-min once `lam` is
    comparable to it).
    """
    lead, (rows, cols) = cost.shape[:-2], cost.shape[-2:]
    dtype = torch.promote_types(cost.dtype, torch.float32)
    padded = F.pad(cost.to(dtype), (1, 1))  # [..., L, W]
    width = cols + 2
    num_diagonals = rows + width - 1
    device = cost.device

    row_ids = torch.arange(rows, device=device)
    col_ids = torch.arange(num_diagonals, device=device).unsqueeze(1) - row_ids  # [ND, L]: column of cell (l, d - l)
    valid = (col_ids >= 0) & (col_ids < width)
    # Cost of every cell, arranged by anti-diagonal: skewed[..., d, l] = P[..., l, d - l].
    skewed = padded.gather(-1, col_ids.clamp(0, width - 1).T.expand(*lead, rows, num_diagonals)).transpose(-1, -2)
    # Cells known up front: row 0 (hard cumulative sum), column 0 (zero) and cells outside the matrix (never read by
    # a real cell: every neighbour of a cell in rows >= 1, columns 1..W-1 lies inside the matrix; zero as a filler).
    is_fixed = (row_ids == 0) | (col_ids == 0) | ~valid
    first_row = F.pad(padded[..., 0, :].cumsum(dim=-1), (0, num_diagonals - width))  # [..., ND]
    fixed = F.pad(first_row.unsqueeze(-1), (0, rows - 1))  # [..., ND, L]: row 0 is the cumsum, the rest zero
    # The cell above joins the soft-min only in the first and last real columns (see the docstring). The other two
    # terms are always finite (fillers included), so no log-sum-exp sees only -inf: no NaN in values or gradients.
    above_left_out = ~((col_ids == 1) | (col_ids == width - 1))  # [ND, L]

    def shift_down(diagonal: torch.Tensor) -> torch.Tensor:  # the value of (l - 1, .) at index l (row 0 is fixed)
        return F.pad(diagonal[..., :-1], (1, 0))

    previous, before_previous = fixed[..., 0, :], torch.zeros_like(fixed[..., 0, :])
    for d in range(1, num_diagonals):
        above = shift_down(previous).masked_fill(above_left_out[d], math.inf)  # +inf: a zero term of the soft-min
        exponents = torch.stack([shift_down(before_previous), above, previous]) / -lam  # C[l-1,m-1], C[l-1,m], C[l,m-1]
        current = skewed[..., d, :] - lam * torch.logsumexp(exponents, dim=0)
        previous, before_previous = torch.where(is_fixed[d], fixed[..., d, :], current), previous
    return previous[..., rows - 1]


def otam_distance(
    query_frames: torch.Tensor,
    prototype_frames: torch.Tensor,
    lam: float,
    bidirectional: bool,
    cosine_eps: float,
) -> torch.Tensor:
    r"""OTAM distance between every query and every prototype (the `dis(F_tilde_q, U_c)` of eq. 9).

    Frame cost `1 - cos(query frame, prototype frame)`, then `A(cost) + A(cost^T)` (bidirectional) or `A(cost)`.
    `query_frames [..., NQ, T, D]`, `prototype_frames [..., N, T, D]` -> `[..., NQ, N]` (leading axes: views).
    """
    cost = 1 - pairwise_cosine(
        _at_least_float32(query_frames.unsqueeze(-3)), _at_least_float32(prototype_frames.unsqueeze(-4)), cosine_eps
    )
    if bidirectional:  # both directions in one batched recursion
        return otam_cumulative_distance(torch.stack([cost, cost.transpose(-1, -2)]), lam).sum(dim=0)
    return otam_cumulative_distance(cost, lam)


# ---------------------------------------------------------------------------------------------------------------
# Reliability (eqs. 10-13), mutual distillation (eq. 14)
# ---------------------------------------------------------------------------------------------------------------


class M2DFMutualDistillation(nn.Module):
    r"""Multiple-view Mutual Distillation (MVMD), eqs. 10-14.

    Per view b: `P^b(y_visual = c) = softmax_c(-dis_b)` (eq. 10), `P^b(y_text = c) = softmax_c(cos(token^b_q,
    Token^b_c))` (eq. 11), discriminant scores `c_hat^b = max_c P^b_visual` (eq. 12), `c_tilde^b = max_c P^b_text`
    (eq. 13). The local view is reliable for a query (Omega_l) when its scores are at least the global view's in
    every enabled mode, the global view (Omega_g) when they are lower in every enabled mode (ties favour local;
    queries on which the modes disagree are in neither set). Eq. 14:
    `L_g->l = sum_{q in Omega_g} w^g_q KL(P^g_q || P^l_q) / sum_{q in Omega_g} w^g_q` with
    `w^b_q = c_hat^b_q + c_tilde^b_q`,
    and symmetrically `L_l->g`. With both conditions off, every query is in both sets, and
    `unconditioned_distillation="sum"` replaces the weighted mean by the release's unweighted sum over queries.
    `distillation_teacher` keeps `L_g->l + L_l->g` ("both"), `L_g->l` ("global") or `L_l->g` ("local").
    """

    def __init__(self, config):
        super().__init__()
        self.text_condition = config.distillation_text_condition
        self.visual_condition = config.distillation_visual_condition
        self.teacher = config.distillation_teacher
        self.detach_teacher = config.distillation_detach_teacher
        # the release's (0, 0) branch: unweighted sum over queries instead of the weighted mean
        self.unconditioned_sum = config.unconditioned_distillation == "sum" and not (
            self.text_condition or self.visual_condition
        )
        self.cosine_eps = config.cosine_eps

    def reliability(
        self,
        local_distances: torch.Tensor,
        global_distances: torch.Tensor,
        local_tokens: tuple[torch.Tensor, torch.Tensor],
        global_tokens: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 10-13. Distances `[NQ, N]`; tokens `(query [NQ, D], prototype [N, D])`. Returns
        `visual_scores [NQ, 2]` and `text_scores [NQ, 2]`, columns (local, global)."""
        visual = torch.stack([local_distances, global_distances], dim=-1).neg().softmax(dim=-2).amax(dim=-2)
        text = torch.stack(
            [
                pairwise_cosine(_at_least_float32(q), _at_least_float32(p), self.cosine_eps)
                for q, p in (local_tokens, global_tokens)
            ],
            dim=-1,
        )
        return visual, text.softmax(dim=-2).amax(dim=-2)

    def reliable_sets(
        self, visual_scores: torch.Tensor, text_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Omega_l and Omega_g as boolean masks `[NQ]`."""
        judgements = []
        if self.text_condition:
            judgements.append(text_scores[:, 0] >= text_scores[:, 1])
        if self.visual_condition:
            judgements.append(visual_scores[:, 0] >= visual_scores[:, 1])
        if not judgements:  # unconditioned: every query, both directions
            everyone = torch.ones(visual_scores.shape[0], dtype=torch.bool, device=visual_scores.device)
            return everyone, everyone
        judged = torch.stack(judgements)  # [conditions, NQ]: local view judged more reliable
        return judged.all(dim=0), (~judged).all(dim=0)

    def directed_loss(
        self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Weighted mean over `mask` of `KL(softmax(teacher) || softmax(student))` (0 for an empty set)."""
        teacher_log_probs = teacher_logits.log_softmax(dim=-1)
        if self.detach_teacher:
            teacher_log_probs, weights = teacher_log_probs.detach(), weights.detach()
        kl = (teacher_log_probs.exp() * (teacher_log_probs - student_logits.log_softmax(dim=-1))).sum(dim=-1)  # [NQ]
        if self.unconditioned_sum:
            return kl.sum()
        weights = weights * mask
        total = weights.sum()
        return torch.where(total > 0, (weights * kl).sum() / total.clamp_min(1e-12), torch.zeros_like(total))

    def forward(
        self,
        local_distances: torch.Tensor,
        global_distances: torch.Tensor,
        local_tokens: tuple[torch.Tensor, torch.Tensor],
        global_tokens: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns `(loss, local_reliable_mask [NQ], global_reliable_mask [NQ], visual_scores [NQ, 2],
        text_scores [NQ, 2])`."""
        local_distances, global_distances = _at_least_float32(local_distances), _at_least_float32(global_distances)
        visual_scores, text_scores = self.reliability(local_distances, global_distances, local_tokens, global_tokens)
        local_mask, global_mask = self.reliable_sets(visual_scores, text_scores)
        weights = visual_scores + text_scores  # [NQ, 2]
        loss = local_distances.new_zeros(())
        if self.teacher in ("both", "global"):  # L_g->l: the global view teaches the local view
            loss = loss + self.directed_loss(-global_distances, -local_distances, weights[:, 1], global_mask)
        if self.teacher in ("both", "local"):  # L_l->g
            loss = loss + self.directed_loss(-local_distances, -global_distances, weights[:, 0], local_mask)
        return loss, local_mask, global_mask, visual_scores, text_scores


# ---------------------------------------------------------------------------------------------------------------
# Auxiliary CLIP-FSAR text logits (weight 0 in the paper and the release)
# ---------------------------------------------------------------------------------------------------------------


def auxiliary_text_logits(
    support_frames: torch.Tensor,
    support_prompts: torch.Tensor,
    query_frames: torch.Tensor,
    class_text: torch.Tensor,
    split_text: torch.Tensor,
    scale: torch.Tensor,
    top_k: int,
    cosine_eps: float,
) -> torch.Tensor:
    """The release's auxiliary CLIP-FSAR text logits. Each video is the mean of its `top_k` frames that best match a
    prompt (its own class for support videos, the PPS argmax class for queries), scored by `scale * cos` against
    every class of the split. `[NS, T, D]`, `[NS, D]`, `[NQ, T, D]`, `[N, D]`, `[C, D]` -> `[NS + NQ, C]`."""
    support_scores = pairwise_cosine(
        _at_least_float32(support_prompts.unsqueeze(1)), _at_least_float32(support_frames), cosine_eps
    )[:, 0]
    frame_similarity, class_similarity = prompt_similarity(query_frames, class_text, top_k, cosine_eps)
    best_class = class_similarity.argmax(dim=-1)  # [NQ]
    query_scores = frame_similarity[torch.arange(best_class.shape[0], device=best_class.device), best_class]  # [NQ, T]
    scores = torch.cat([support_scores, query_scores], dim=0)  # [NS + NQ, T]
    frames = torch.cat([support_frames, query_frames], dim=0)
    top = scores.topk(top_k, dim=-1).indices  # [NS + NQ, k]
    pooled = frames.gather(1, top.unsqueeze(-1).expand(-1, -1, frames.shape[-1])).mean(dim=1)  # [NS + NQ, D]
    return pairwise_cosine(_at_least_float32(pooled), _at_least_float32(split_text), cosine_eps) * scale


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


class M2DFPreTrainedModel(PreTrainedModel):
    config: M2DFConfig
    config_class = M2DFConfig
    base_model_prefix = "m2df"
    main_input_name = "query_pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        """PyTorch's default initialisation for the head (as in the release), re-done with transformers' guarded
        init functions so that `from_pretrained` (which builds on the meta device) only fills missing tensors.
        The CLIP towers are initialised by their own `_init_weights`."""
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            if parametrize.is_parametrized(module, "weight"):  # weight norm: weight = g * v / |v|
                direction = module.parametrizations.weight.original1
                init.kaiming_uniform_(direction, a=math.sqrt(5))
                init.copy_(module.parametrizations.weight.original0, direction.norm(dim=(1, 2), keepdim=True))
            else:
                direction = module.weight
                init.kaiming_uniform_(direction, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(direction[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, M2DFFusionEncoder) and module.position_embeddings is not None:
            init.normal_(module.position_embeddings, std=self.config.initializer_range)
        elif isinstance(module, M2DFModel) and module.text_logit_scale is not None:
            init.ones_(module.text_logit_scale)


class M2DFModel(M2DFPreTrainedModel):
    r"""CLIP-M2DF: the CLIP vision and text towers (with projections) and the few-shot head.

    Head, per episode: PPS (eqs. 1-2) gives each query a class prompt; each view (local: LTCE eq. 3, global: GTCE
    eq. 4) fuses prompt and frames with its MMFE (eqs. 5-7); support outputs are averaged into prototypes (eq. 8);
    OTAM distances of the views are summed (eq. 9) into `logits = -distance` (eq. 16); the views distil each other
    (eqs. 10-14) and the loss is eq. 15.
    """

    def __init__(self, config: M2DFConfig):
        super().__init__(config)
        clip_config = config.clip_config
        self.vision_tower = CLIPVisionModelWithProjection(clip_config.vision_config)
        self.text_tower = CLIPTextModelWithProjection(clip_config.text_config)

        self.prompt_selector = M2DFPromptSelector(config) if config.use_pps else None
        self.local_view = (
            M2DFTemporalView(config, M2DFLocalTemporalContext(config)) if config.views in ("both", "local") else None
        )
        self.global_view = (
            M2DFTemporalView(config, M2DFGlobalTemporalContext(config)) if config.views in ("both", "global") else None
        )
        # The paper's NTCE baseline (Table 3): an MMFE without temporal context extractor.
        self.plain_view = M2DFTemporalView(config, None) if config.views == "none" else None
        self.distillation = M2DFMutualDistillation(config) if config.views == "both" else None
        self.text_logit_scale = nn.Parameter(torch.ones(1)) if config.text_loss_weight > 0 else None

        self._apply_freezing()
        self.post_init()

    def _apply_freezing(self) -> None:
        config = self.config
        if config.freeze_text_encoder:
            self.text_tower.requires_grad_(False)
        if config.freeze_vision_encoder:
            self.vision_tower.requires_grad_(False)
        elif config.trainable_vision_layers is not None:
            self.vision_tower.requires_grad_(False)
            layers = self.vision_tower.vision_model.encoder.layers
            for layer in layers[len(layers) - config.trainable_vision_layers :]:
                layer.requires_grad_(True)
            self.vision_tower.vision_model.post_layernorm.requires_grad_(True)
            self.vision_tower.visual_projection.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the config's freezing (loading re-creates the parameters)."""
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, tuple):  # output_loading_info=True
            model[0]._apply_freezing()
        else:
            model._apply_freezing()
        return model

    @classmethod
    def from_clip(cls, name_or_path: str, preset: str = "paper", revision: str | None = None, **config_overrides):
        """Build a model whose towers carry the weights of a `CLIPModel` checkpoint (local folder or Hub id).

        The head is randomly initialised; `config_overrides` are `M2DFConfig` fields applied on top of `preset`.
        """
        clip = CLIPModel.from_pretrained(name_or_path, revision=revision)
        config = M2DFConfig.from_preset(preset, clip_config=clip.config.to_dict(), **config_overrides)
        model = cls(config)
        model.vision_tower.vision_model.load_state_dict(clip.vision_model.state_dict())
        model.vision_tower.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        model.text_tower.text_model.load_state_dict(clip.text_model.state_dict())
        model.text_tower.text_projection.load_state_dict(clip.text_projection.state_dict())
        model.config.name_or_path = str(name_or_path)
        return model

    # ------------------------------------------------------------------ encoders

    def get_video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image embeddings of every frame (not normalised): `[B, T, 3, H, W] -> [B, T, D]`."""
        if pixel_values.dim() != 5 or pixel_values.shape[2] != 3:
            raise ValueError(f"pixel_values must have shape [B, T, 3, H, W], got {tuple(pixel_values.shape)}.")
        batch, frames = pixel_values.shape[:2]
        embeds = self.vision_tower(pixel_values=pixel_values.flatten(0, 1).to(self.dtype)).image_embeds
        return embeds.view(batch, frames, -1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected CLIP text embeddings (EOT token, not normalised): `[C, L] -> [C, D]`."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [C, L], got {tuple(input_ids.shape)}.")
        return self.text_tower(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    # ------------------------------------------------------------------ input checks

    def _check_videos(self, name: str, pixels, embeds) -> None:
        if (pixels is None) == (embeds is None):
            raise ValueError(
                f"Give exactly one of {name}_pixel_values [B, T, 3, H, W] and {name}_video_embeds [B, T, D] "
                f"({'both' if pixels is not None else 'neither'} given)."
            )
        if pixels is not None and (pixels.dim() != 5 or pixels.shape[2] != 3):
            raise ValueError(f"{name}_pixel_values must have shape [B, T, 3, H, W], got {tuple(pixels.shape)}.")
        if embeds is not None and (embeds.dim() != 3 or embeds.shape[-1] != self.config.hidden_size):
            raise ValueError(
                f"{name}_video_embeds must have shape [B, T, {self.config.hidden_size}], got {tuple(embeds.shape)}."
            )

    def _check_episode(
        self,
        support_pixel_values,
        support_video_embeds,
        support_labels,
        query_pixel_values,
        query_video_embeds,
        class_input_ids,
        class_attention_mask,
        class_text_embeds,
        query_labels,
        query_prompt_ids,
        split_text_embeds,
        support_class_ids,
        query_class_ids,
    ) -> tuple[int, dict[str, torch.Tensor | None]]:
        """Validate one episode before any computation. Shapes and dtypes first, then the label values with a single
        host-device sync. Returns the number of classes N and the integer inputs (labels and ids) as int64 tensors on
        the model's device (`None` stays `None`); the text-loss ids are only checked when the text loss is computed.
        """
        self._check_videos("support", support_pixel_values, support_video_embeds)
        self._check_videos("query", query_pixel_values, query_video_embeds)
        support = support_pixel_values if support_pixel_values is not None else support_video_embeds
        query = query_pixel_values if query_pixel_values is not None else query_video_embeds
        num_support, num_query = support.shape[0], query.shape[0]
        if num_support == 0 or num_query == 0:
            raise ValueError(f"An episode needs support and query videos, got {num_support} and {num_query}.")
        if support.shape[1] != query.shape[1]:
            raise ValueError(
                f"Support and query videos must have the same T, got {support.shape[1]} and {query.shape[1]}."
            )
        if support.shape[1] != self.config.num_frames:
            raise ValueError(
                f"Videos have T={support.shape[1]} frames but config.num_frames={self.config.num_frames} "
                "(T must be >= 2 and equal num_frames)."
            )

        if support_labels is None:
            raise ValueError("support_labels [NS] (episode labels 0..N-1) is required.")
        self._check_ids("support_labels", support_labels, num_support)

        if (class_input_ids is None) == (class_text_embeds is None):
            raise ValueError(
                "Give exactly one of class_input_ids [N, L] (+ class_attention_mask) and class_text_embeds [N, D] "
                f"({'both' if class_input_ids is not None else 'neither'} given)."
            )
        if class_text_embeds is not None:
            if class_text_embeds.dim() != 2 or class_text_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"class_text_embeds must have shape [N, {self.config.hidden_size}], got "
                    f"{tuple(class_text_embeds.shape)}."
                )
            num_prompts = class_text_embeds.shape[0]
        else:
            if class_input_ids.dim() != 2:
                raise ValueError(f"class_input_ids must have shape [N, L], got {tuple(class_input_ids.shape)}.")
            if class_attention_mask is not None and class_attention_mask.shape != class_input_ids.shape:
                raise ValueError(
                    f"class_attention_mask {tuple(class_attention_mask.shape)} must match class_input_ids "
                    f"{tuple(class_input_ids.shape)}."
                )
            num_prompts = class_input_ids.shape[0]

        for name, ids in (("query_labels", query_labels), ("query_prompt_ids", query_prompt_ids)):
            if ids is not None:
                self._check_ids(name, ids, num_query)
        if query_prompt_ids is not None and self.prompt_selector is None:
            raise ValueError("query_prompt_ids was given but use_pps=False (the query prompt is a zero vector).")

        compute_text_loss = self.config.text_loss_weight > 0 and query_labels is not None
        if compute_text_loss:
            if split_text_embeds is None or support_class_ids is None or query_class_ids is None:
                raise ValueError(
                    f"text_loss_weight={self.config.text_loss_weight} > 0 needs split_text_embeds [C, D], "
                    "support_class_ids [NS] and query_class_ids [NQ] (indices into the split's class list)."
                )
            if split_text_embeds.dim() != 2 or split_text_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"split_text_embeds must have shape [C, {self.config.hidden_size}], "
                    f"got {tuple(split_text_embeds.shape)}."
                )
            self._check_ids("support_class_ids", support_class_ids, num_support)
            self._check_ids("query_class_ids", query_class_ids, num_query)
        else:
            support_class_ids = query_class_ids = None  # unused: neither checked nor moved

        # Labels and ids move to the model's device before anything else touches them (one_hot, indexing and
        # cross-entropy would otherwise mix devices deep in the forward).
        ids = {
            "support_labels": support_labels,
            "query_labels": query_labels,
            "query_prompt_ids": query_prompt_ids,
            "support_class_ids": support_class_ids,
            "query_class_ids": query_class_ids,
        }
        ids = {k: None if v is None else v.to(device=self.device, dtype=torch.long) for k, v in ids.items()}
        num_classes = self._check_label_values(
            ids, num_support, num_prompts, split_text_embeds.shape[0] if compute_text_loss else None
        )
        return num_classes, ids

    @staticmethod
    def _check_ids(name: str, ids: torch.Tensor, size: int) -> None:
        if ids.dim() != 1 or ids.shape[0] != size:
            raise ValueError(f"{name} must have shape [{size}], got {tuple(ids.shape)}.")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            kind = "class indices" if name.endswith("class_ids") else "episode labels"
            raise ValueError(f"{name} must hold integer {kind}, got dtype {ids.dtype}.")

    @staticmethod
    def _check_label_values(
        ids: dict[str, torch.Tensor | None], num_support: int, num_prompts: int, num_split_classes: int | None
    ) -> int:
        """Value checks of the (int64, same-device) labels and ids as tensor ops, read back in one host sync.

        `support_labels` must cover 0..N-1 with the same count K per label (so N*K = NS and every label < NS), with
        one class prompt per label; the query labels and prompt ids must lie in 0..N-1, the text-loss ids in 0..C-1.
        Returns N.
        """
        labels = ids["support_labels"]
        low, high = labels.min(), labels.max()
        # Counts of labels 0..NS (anything larger is clamped into bin NS: such a label is invalid anyway).
        counts = torch.zeros(num_support + 1, dtype=torch.long, device=labels.device)
        counts.scatter_add_(0, labels.clamp(0, num_support), torch.ones_like(labels))
        in_episode = torch.arange(num_support + 1, device=labels.device) <= high  # labels 0..N-1
        support_ok = (low >= 0) & (high < num_support) & ((counts == counts[0]) | ~in_episode).all()
        checks = {"support_labels": ~support_ok}
        for name, last in (
            ("query_labels", high),
            ("query_prompt_ids", high),
            ("support_class_ids", None if num_split_classes is None else num_split_classes - 1),
            ("query_class_ids", None if num_split_classes is None else num_split_classes - 1),
        ):
            if ids[name] is not None:
                checks[name] = ((ids[name] < 0) | (ids[name] > last)).any()
        flags = torch.stack([low, high, *(flag.long() for flag in checks.values())]).tolist()  # the one sync
        low, high, failed = flags[0], flags[1], dict(zip(checks, flags[2:], strict=True))

        # Error paths only: spell out the offending values.
        if failed.pop("support_labels"):
            if low < 0:
                raise ValueError(
                    f"support_labels must be episode labels 0..N-1, got negative labels in {labels.tolist()}."
                )
            if high >= num_support:  # NS videos cannot cover more than NS labels (and bincount would be huge)
                raise ValueError(
                    f"support_labels must cover 0..{high}, but {num_support} support videos cannot cover {high + 1} "
                    f"labels; got {labels.tolist()}."
                )
            shots = torch.bincount(labels)
            if (shots == 0).any():
                missing = (shots == 0).nonzero().flatten().tolist()
                raise ValueError(f"support_labels must cover 0..{high}; labels {missing} have no support video.")
            raise ValueError(
                f"Every class needs the same number of shots; support videos per label: {shots.tolist()}."
            )
        num_classes = high + 1
        if num_prompts != num_classes:
            raise ValueError(f"Got {num_prompts} class prompts for N={num_classes} classes (support labels).")
        for name, flag in failed.items():
            if flag:
                size = num_split_classes if name.endswith("class_ids") else num_classes
                bad = ids[name][(ids[name] < 0) | (ids[name] >= size)].tolist()
                raise ValueError(f"{name} must lie in 0..{size - 1}, got {bad}.")
        return num_classes

    # ------------------------------------------------------------------ forward

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_at_least_float32(logits), labels, reduction=self.config.ce_reduction)

    def forward(
        self,
        support_pixel_values: torch.FloatTensor | None = None,
        support_video_embeds: torch.FloatTensor | None = None,
        support_labels: torch.LongTensor | None = None,
        query_pixel_values: torch.FloatTensor | None = None,
        query_video_embeds: torch.FloatTensor | None = None,
        class_input_ids: torch.LongTensor | None = None,
        class_attention_mask: torch.LongTensor | None = None,
        class_text_embeds: torch.FloatTensor | None = None,
        query_labels: torch.LongTensor | None = None,
        query_prompt_ids: torch.LongTensor | None = None,
        split_text_embeds: torch.FloatTensor | None = None,
        support_class_ids: torch.LongTensor | None = None,
        query_class_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> M2DFOutput | tuple:
        r"""Run one few-shot episode.

        Args:
            support_pixel_values (`[NS, T, 3, H, W]`) or support_video_embeds (`[NS, T, D]`): the support videos,
                as pixels or as precomputed `get_video_features` output (exactly one of the two).
            support_labels (`[NS]`): episode labels 0..N-1, any order, the same number K of videos per label.
            query_pixel_values (`[NQ, T, 3, H, W]`) or query_video_embeds (`[NQ, T, D]`): the query videos.
            class_input_ids, class_attention_mask (`[N, L]`) or class_text_embeds (`[N, D]`): the class prompts;
                row i is episode label i.
            query_labels (`[NQ]`, *optional*): episode labels of the queries; gives `loss`.
            query_prompt_ids (`[NQ]`, *optional*): overrides PPS's choice of prompt class per query.
            split_text_embeds (`[C, D]`), support_class_ids (`[NS]`), query_class_ids (`[NQ]`), *optional*: the
                split's text table and each video's index in it; required for training when `text_loss_weight > 0`.
            return_dict (`bool`, *optional*): return an `M2DFOutput` (default) or a tuple.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        num_classes, ids = self._check_episode(
            support_pixel_values,
            support_video_embeds,
            support_labels,
            query_pixel_values,
            query_video_embeds,
            class_input_ids,
            class_attention_mask,
            class_text_embeds,
            query_labels,
            query_prompt_ids,
            split_text_embeds,
            support_class_ids,
            query_class_ids,
        )
        # int64 on the model's device from here on
        support_labels, query_labels = ids["support_labels"], ids["query_labels"]
        query_prompt_ids = ids["query_prompt_ids"]
        num_support = support_labels.shape[0]
        compute_text_loss = config.text_loss_weight > 0 and query_labels is not None

        # 1. CLIP features: one backbone call for all pixel inputs.
        if support_pixel_values is not None and query_pixel_values is not None:
            frames = self.get_video_features(torch.cat([support_pixel_values, query_pixel_values], dim=0))
            support_frames, query_frames = frames[:num_support], frames[num_support:]
        else:
            support_frames = (
                self.get_video_features(support_pixel_values)
                if support_pixel_values is not None
                else support_video_embeds
            )
            query_frames = (
                self.get_video_features(query_pixel_values) if query_pixel_values is not None else query_video_embeds
            )
        support_frames, query_frames = support_frames.to(self.dtype), query_frames.to(self.dtype)  # [NS|NQ, T, D]
        if class_text_embeds is None:
            class_text_embeds = self.get_text_features(class_input_ids, class_attention_mask)
        class_text = class_text_embeds.to(self.dtype)  # [N, D]

        # 2. Prompts: support videos get their class's prompt, queries PPS's choice (eqs. 1-2) or zeros.
        support_prompts = class_text[support_labels]  # [NS, D]
        prompt_probs = None
        if self.prompt_selector is not None:
            prompt_probs, query_prompt_ids = self.prompt_selector(query_frames, class_text, query_prompt_ids)
            query_prompts = class_text[query_prompt_ids]  # [NQ, D]
        else:
            query_prompts = torch.zeros_like(query_frames[:, 0])

        # 3. Views (eqs. 3-7) on support and query together, prototypes (eq. 8), OTAM distances (eq. 9).
        all_frames = torch.cat([support_frames, query_frames], dim=0)  # [NS + NQ, T, D]
        all_prompts = torch.cat([support_prompts, query_prompts], dim=0)
        views = [view for view in (self.local_view, self.global_view, self.plain_view) if view is not None]
        prototypes, query_outputs = [], []
        for view in views:  # at most two views
            outputs = view(all_frames, all_prompts)  # [NS + NQ, T+1, D]
            prototypes.append(class_prototypes(outputs[:num_support], support_labels, num_classes))  # [N, T+1, D]
            query_outputs.append(outputs[num_support:])  # [NQ, T+1, D]
        view_distances = otam_distance(
            torch.stack(query_outputs)[:, :, 1:],
            torch.stack(prototypes)[:, :, 1:],
            config.otam_lambda,
            config.otam_bidirectional,
            config.cosine_eps,
        )  # [V, NQ, N]
        distances = view_distances.sum(dim=0)
        logits = -distances  # eqs. 9 and 16

        local_distances = view_distances[0] if self.local_view is not None else None
        global_distances = view_distances[-1] if self.global_view is not None else None

        # 4. Reliability and mutual distillation (eqs. 10-14).
        distillation_loss = local_mask = global_mask = visual_reliability = text_reliability = None
        if self.distillation is not None:
            token = 0 if config.reliability_token == "prompt" else 1
            tokens = [(q[:, token], p[:, token]) for q, p in zip(query_outputs, prototypes, strict=True)]
            distillation_loss, local_mask, global_mask, visual_reliability, text_reliability = self.distillation(
                local_distances, global_distances, tokens[0], tokens[1]
            )

        # 5. Loss (eq. 15).
        loss = main_loss = text_loss = text_logits = None
        if query_labels is not None:
            main_loss = self._ce(logits, query_labels)
            loss = main_loss
            if distillation_loss is not None:
                loss = loss + config.distillation_weight * distillation_loss
            if compute_text_loss:
                text_logits = auxiliary_text_logits(
                    support_frames,
                    support_prompts,
                    query_frames,
                    class_text,
                    split_text_embeds.to(self.dtype),
                    self.text_logit_scale,
                    min(config.pps_top_k, config.num_frames),
                    config.cosine_eps,
                )
                text_targets = torch.cat([ids["support_class_ids"], ids["query_class_ids"]])
                text_loss = self._ce(text_logits, text_targets)
                loss = loss + config.text_loss_weight * text_loss

        output = M2DFOutput(
            loss=loss,
            logits=logits,
            distances=distances,
            local_distances=local_distances,
            global_distances=global_distances,
            main_loss=main_loss,
            distillation_loss=distillation_loss,
            text_loss=text_loss,
            text_logits=text_logits,
            query_prompt_probs=prompt_probs,
            query_prompt_ids=query_prompt_ids if self.prompt_selector is not None else None,
            local_reliable_mask=local_mask,
            global_reliable_mask=global_mask,
            visual_reliability=visual_reliability,
            text_reliability=text_reliability,
        )
        return output if return_dict else output.to_tuple()


M2DFModel.register_for_auto_class("AutoModel")
