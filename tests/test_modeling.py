"""Tests of modeling_m2df.py on a tiny random CLIP (hidden 32, D = 32), CPU only."""

from __future__ import annotations

import itertools

import pytest
import torch

from configuration_m2df import M2DFConfig
from modeling_m2df import M2DFModel

D = 32  # projection width of the tiny CLIP



def make_config(clip_config, preset="paper", **overrides):
    small = dict(num_frames=4, pps_top_k=2, mmfe_num_heads=4, mmfe_ffn_dim=64)
    small.update(overrides)
    return M2DFConfig.from_preset(preset, clip_config=clip_config, **small)


def _comparable(config):
    """The config as a dict without what loading legitimately adds (source path, resolved dtype)."""
    out = config.to_dict()
    out.pop("_name_or_path")
    out["clip_config"].pop("dtype")
    return out


def make_episode(num_classes, shots, queries_per_class, num_frames, seed=0, dim=D):
    g = torch.Generator().manual_seed(seed)
    support_labels = torch.arange(num_classes).repeat(shots)[torch.randperm(num_classes * shots, generator=g)]
    query_labels = torch.arange(num_classes).repeat(queries_per_class)[
        torch.randperm(num_classes * queries_per_class, generator=g)
    ]
    return dict(
        support_video_embeds=torch.randn(num_classes * shots, num_frames, dim, generator=g),
        support_labels=support_labels,
        query_video_embeds=torch.randn(num_classes * queries_per_class, num_frames, dim, generator=g),
        class_text_embeds=torch.randn(num_classes, dim, generator=g),
        query_labels=query_labels,
    )


@pytest.mark.parametrize("num_frames", [2, 4, 8, 16])
def test_output_shapes_from_features(clip_config, num_frames):
    model = M2DFModel(make_config(clip_config, num_frames=num_frames)).eval()
    for num_classes, shots in itertools.product([2, 5], [1, 3, 5]):
        episode = make_episode(num_classes, shots, 2, num_frames, seed=num_classes * 10 + shots)
        with torch.no_grad():
            out = model(**episode)
        nq = num_classes * 2
        assert out.logits.shape == (nq, num_classes)
        for name in ("distances", "local_distances", "global_distances", "query_prompt_probs"):
            assert out[name].shape == (nq, num_classes), name
        for name in ("query_prompt_ids", "local_reliable_mask", "global_reliable_mask"):
            assert out[name].shape == (nq,), name
        assert out.visual_reliability.shape == out.text_reliability.shape == (nq, 2)
        assert out.loss.shape == out.main_loss.shape == out.distillation_loss.shape == ()
        torch.testing.assert_close(out.logits, -(out.local_distances + out.global_distances))
        torch.testing.assert_close(out.query_prompt_probs.sum(-1), torch.ones(nq))
        assert list(out.keys())[:3] == ["loss", "logits", "distances"]  # field order, whatever is computed
        with torch.no_grad():
            as_tuple = model(**episode, return_dict=False)
        assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)


def test_pixels_and_token_ids_match_precomputed_features(clip_config):
    model = M2DFModel(make_config(clip_config)).eval()
    g = torch.Generator().manual_seed(0)
    support = torch.randn(4, 4, 3, 32, 32, generator=g)
    query = torch.randn(2, 4, 3, 32, 32, generator=g)
    input_ids = torch.randint(0, 512, (2, 7), generator=g)
    labels = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        from_pixels = model(
            support_pixel_values=support,
            support_labels=labels,
            query_pixel_values=query,
            class_input_ids=input_ids,
            class_attention_mask=torch.ones_like(input_ids),
        )
        support_embeds = model.get_video_features(support)
        query_embeds = model.get_video_features(query)
        text = model.get_text_features(input_ids, torch.ones_like(input_ids))
        from_features = model(
            support_video_embeds=support_embeds,
            support_labels=labels,
            query_video_embeds=query_embeds,
            class_text_embeds=text,
        )
    assert support_embeds.shape == (4, 4, D) and text.shape == (2, D)
    # frame embeddings are the projected CLIP image embeddings of each frame
    clip_frames = model.vision_tower(pixel_values=support[1]).image_embeds
    torch.testing.assert_close(support_embeds[1], clip_frames)
    torch.testing.assert_close(from_pixels.logits, from_features.logits)
    with torch.no_grad():  # any integer label dtype
        int32 = model(
            support_video_embeds=support_embeds,
            support_labels=labels.int(),
            query_video_embeds=query_embeds,
            class_text_embeds=text,
            query_labels=torch.tensor([0, 1], dtype=torch.int32),
        )
    torch.testing.assert_close(int32.logits, from_features.logits)


def test_save_load_round_trip_and_fresh_process_remote_code(clip_config, tmp_path):
    import subprocess
    import sys
    import textwrap

    model = M2DFModel(make_config(clip_config, preset="reference")).eval()
    episode = make_episode(3, 2, 1, 4)
    episode["query_prompt_ids"] = torch.tensor([2, 0, 1])  # the reference preset samples PPS at test
    with torch.no_grad():
        expected = model(**episode).logits
    model.save_pretrained(tmp_path / "model")
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert saved == ["config.json", "configuration_m2df.py", "model.safetensors", "modeling_m2df.py"]
    config_json = (tmp_path / "model" / "config.json").read_text()
    assert '"AutoModel": "modeling_m2df.M2DFModel"' in config_json
    assert '"AutoConfig": "configuration_m2df.M2DFConfig"' in config_json

    reloaded = M2DFModel.from_pretrained(tmp_path / "model").eval()
    assert _comparable(reloaded.config) == _comparable(model.config)
    assert not any(p.requires_grad for p in reloaded.text_tower.parameters())  # freezing survives loading
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**episode).logits, expected, rtol=0, atol=0)

    torch.save(episode, tmp_path / "episode.pt")
    child = textwrap.dedent(
        f"""
        import sys
        for name in ("m2df_hf", "configuration_m2df", "modeling_m2df"):
            sys.modules[name] = None  # the project must not be importable: only the saved files may be used
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        episode = torch.load({str(tmp_path / "episode.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(**episode).logits, {str(tmp_path / "logits.pt")!r})
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt", weights_only=True), expected, rtol=0, atol=0)


def test_from_clip_loads_the_clip_weights(clip_config, tmp_path):
    from transformers import CLIPModel

    clip = CLIPModel(clip_config).eval()
    clip.save_pretrained(tmp_path / "clip")
    model = M2DFModel.from_clip(
        str(tmp_path / "clip"), preset="reference", num_frames=4, pps_top_k=2, mmfe_num_heads=4, mmfe_ffn_dim=64
    ).eval()
    assert model.config.preset == "reference" and model.config.cosine_eps == 0.01
    pixels = torch.randn(2, 4, 3, 32, 32)
    input_ids = torch.randint(0, 512, (3, 5))
    with torch.no_grad():
        video = model.get_video_features(pixels)
        text = model.get_text_features(input_ids)
        torch.testing.assert_close(
            video.flatten(0, 1), clip.get_image_features(pixel_values=pixels.flatten(0, 1)).pooler_output
        )
        torch.testing.assert_close(text, clip.get_text_features(input_ids=input_ids).pooler_output)


# ---------------------------------------------------------------------------------------------------------------
# Independent literal implementations (METHOD.md section 2), float64, with explicit loops
# ---------------------------------------------------------------------------------------------------------------


def naive_otam(dist, lam):
    """METHOD.md 2.8, one direction, literally: padded columns, hard cumsum in row 0, exp-then-log soft-min."""
    import math

    rows, cols = len(dist), len(dist[0])
    padded = [[0.0] + [float(v) for v in row] + [0.0] for row in dist]
    acc = [[0.0] * (cols + 2) for _ in range(rows)]

    def softmin(*xs):
        return -lam * math.log(sum(math.exp(-x / lam) for x in xs))

    for m in range(1, cols + 2):
        acc[0][m] = padded[0][m] + acc[0][m - 1]
    for r in range(1, rows):
        acc[r][1] = padded[r][1] + softmin(acc[r - 1][0], acc[r - 1][1], acc[r][0])
        for m in range(2, cols + 1):
            acc[r][m] = padded[r][m] + softmin(acc[r - 1][m - 1], acc[r][m - 1])
        acc[r][cols + 1] = softmin(acc[r - 1][cols], acc[r - 1][cols + 1], acc[r][cols])
    return acc[rows - 1][cols + 1]


def naive_cos(a, b, eps):
    """The release's cos_sim (eps added to the norm product); eps = 0: the exact cosine."""
    return float(a @ b) / (float(a.norm() * b.norm()) + eps)


def naive_view_distance(query, protos, lam, eps, bidirectional):
    """[NQ, T, D], [N, T, D] -> [NQ, N] with loops over queries, classes and frame pairs."""
    out = torch.zeros(query.shape[0], protos.shape[0], dtype=torch.float64)
    for q in range(query.shape[0]):
        for c in range(protos.shape[0]):
            dist = [
                [1 - naive_cos(query[q, i], protos[c, j], eps) for j in range(protos.shape[1])]
                for i in range(query.shape[1])
            ]
            value = naive_otam(dist, lam)
            if bidirectional:
                value += naive_otam([list(col) for col in zip(*dist, strict=True)], lam)
            out[q, c] = value
    return out


def naive_ltce(frames, sd, prefix, relu_bn):
    """LTCE per video: Conv1d(k, padding k//2) twice, optionally ReLU + BatchNorm (eval statistics)."""
    out = []
    for video in frames:  # [T, D]
        x = video.T.unsqueeze(0)
        for i in (1, 2):
            w, b = sd[f"{prefix}.conv{i}.weight"], sd[f"{prefix}.conv{i}.bias"]
            x = torch.nn.functional.conv1d(x, w, b, padding=w.shape[-1] // 2)
            if relu_bn:
                x = torch.relu(x)
                mean, var = sd[f"{prefix}.norm{i}.running_mean"], sd[f"{prefix}.norm{i}.running_var"]
                x = (x - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5) * sd[f"{prefix}.norm{i}.weight"][:, None]
                x = x + sd[f"{prefix}.norm{i}.bias"][:, None]
        out.append(x[0].T)
    return torch.stack(out)


def naive_gtce(frames, sd, prefix, levels, kernel):
    """The release's TCN: weight = g v / |v|, conv padded p on both sides, chomp the last p, ReLU, residual;
    then the last step repeated over time plus the input."""
    out = []
    for video in frames:
        x = video.T.unsqueeze(0)  # [1, D, T]
        for level in range(levels):
            dilation, residual = 2**level, x
            pad = (kernel - 1) * dilation
            for conv in ("conv1", "conv2"):
                key = f"{prefix}.tcn.{level}.{conv}"
                g, v = sd[f"{key}.parametrizations.weight.original0"], sd[f"{key}.parametrizations.weight.original1"]
                weight = g * v / v.norm(dim=(1, 2), keepdim=True)
                x = torch.nn.functional.conv1d(x, weight, sd[f"{key}.bias"], padding=pad, dilation=dilation)
                x = torch.relu(x[:, :, :-pad])
            x = torch.relu(x + residual)
        last = x[0, :, -1]
        out.append(last.unsqueeze(0).repeat(video.shape[0], 1) + video)
    return torch.stack(out)


def naive_mmfe(prompts, context_frames, frames, sd, prefix, heads, use_pos):
    """Transformer_v1 (depth 1) per video with a loop over heads; eval mode (no dropout)."""
    import math

    out = []
    for p, ctx, f in zip(prompts, context_frames, frames, strict=True):
        q_in = torch.cat([p[None], ctx])
        kv_in = torch.cat([p[None], f])
        if use_pos:
            q_in = q_in + sd[f"{prefix}.position_embeddings"]
            kv_in = kv_in + sd[f"{prefix}.position_embeddings"]
        layer = f"{prefix}.layers.0"

        def norm(x, layer=layer):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{layer}.norm.weight"] + sd[f"{layer}.norm.bias"]

        a, b = norm(q_in), norm(kv_in)
        q, k, v = (
            a @ sd[f"{layer}.attention.q_proj.weight"].T,
            b @ sd[f"{layer}.attention.k_proj.weight"].T,
            b @ sd[f"{layer}.attention.v_proj.weight"].T,
        )
        dh = q.shape[-1] // heads
        merged = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            att = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dh), dim=-1)
            merged.append(att @ v[:, sl])
        x = torch.cat(merged, -1) @ sd[f"{layer}.attention.out_proj.weight"].T + sd[f"{layer}.attention.out_proj.bias"]
        x = x + q_in
        hidden = torch.nn.functional.gelu(x @ sd[f"{layer}.ffn.fc1.weight"].T + sd[f"{layer}.ffn.fc1.bias"])
        x = x + hidden @ sd[f"{layer}.ffn.fc2.weight"].T + sd[f"{layer}.ffn.fc2.bias"]
        out.append(x)
    return torch.stack(out)


def naive_head(model, episode, prompt_ids):
    """The whole head of METHOD.md sections 1-2 in float64 with loops, for the given PPS choices.

    Returns (logits [NQ, N], total loss, distillation loss, local mask, global mask)."""
    cfg = model.config
    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    eps, lam = cfg.cosine_eps, cfg.otam_lambda
    fs, fq = episode["support_video_embeds"].double(), episode["query_video_embeds"].double()
    text = episode["class_text_embeds"].double()
    sl, ql = episode["support_labels"].tolist(), episode["query_labels"].tolist()
    n, nq = text.shape[0], fq.shape[0]
    support_prompts = torch.stack([text[c] for c in sl])
    query_prompts = (
        torch.stack([text[c] for c in prompt_ids])
        if cfg.use_pps
        else torch.zeros(nq, text.shape[1], dtype=torch.float64)
    )
    distances, tokens = {}, {}
    token_index = 0 if cfg.reliability_token == "prompt" else 1
    for view in ("local", "global"):
        prefix = f"{view}_view"
        if view == "local":
            ctx_s = naive_ltce(fs, sd, f"{prefix}.temporal_context", cfg.ltce_activation == "relu_bn")
            ctx_q = naive_ltce(fq, sd, f"{prefix}.temporal_context", cfg.ltce_activation == "relu_bn")
        else:
            ctx_s = naive_gtce(fs, sd, f"{prefix}.temporal_context", cfg.tcn_num_levels, cfg.tcn_kernel_size)
            ctx_q = naive_gtce(fq, sd, f"{prefix}.temporal_context", cfg.tcn_num_levels, cfg.tcn_kernel_size)
        heads, pos = cfg.mmfe_num_heads, cfg.use_position_embeddings
        out_s = naive_mmfe(support_prompts, ctx_s, fs, sd, f"{prefix}.fusion_encoder", heads, pos)
        out_q = naive_mmfe(query_prompts, ctx_q, fq, sd, f"{prefix}.fusion_encoder", heads, pos)
        protos = torch.stack([torch.stack([out_s[i] for i in range(len(sl)) if sl[i] == c]).mean(0) for c in range(n)])
        distances[view] = naive_view_distance(out_q[:, 1:], protos[:, 1:], lam, eps, cfg.otam_bidirectional)
        tokens[view] = [
            [naive_cos(out_q[q, token_index], protos[c, token_index], eps) for c in range(n)] for q in range(nq)
        ]
    logits = -(distances["local"] + distances["global"])

    # Reliability and distillation, per query (METHOD.md 2.10).
    def softmax(xs):
        t = torch.tensor(xs, dtype=torch.float64)
        return torch.softmax(t, 0)

    pv = {v: [softmax((-distances[v][q]).tolist()) for q in range(nq)] for v in distances}
    pt = {v: [softmax(tokens[v][q]) for q in range(nq)] for v in tokens}
    up_set, down_set = [], []
    for q in range(nq):
        t_j = float(pt["local"][q].max()) >= float(pt["global"][q].max())
        v_j = float(pv["local"][q].max()) >= float(pv["global"][q].max())
        conds = (cfg.distillation_text_condition, cfg.distillation_visual_condition)
        if conds == (True, True):
            up, down = t_j and v_j, (not t_j) and (not v_j)
        elif conds == (True, False):
            up, down = t_j, not t_j
        elif conds == (False, True):
            up, down = v_j, not v_j
        else:
            up = down = True
        up_set.append(up)
        down_set.append(down)

    def kl(p, r):
        return float((p * (p.log() - r.log())).sum())

    def directed(teacher, student, members):
        if (
            not (cfg.distillation_text_condition or cfg.distillation_visual_condition)
            and cfg.unconditioned_distillation == "sum"
        ):
            return sum(kl(pv[teacher][q], pv[student][q]) for q in range(nq))
        num = den = 0.0
        for q in range(nq):
            if members[q]:
                w = float(pv[teacher][q].max()) + float(pt[teacher][q].max())
                num += w * kl(pv[teacher][q], pv[student][q])
                den += w
        return num / den if den > 0 else 0.0

    l_up = directed("local", "global", up_set)  # local teaches global (release: up_reliable_loss)
    l_down = directed("global", "local", down_set)  # global teaches local (release: down_reliable_loss)
    distill = {"both": l_up + l_down, "global": l_down, "local": l_up}[cfg.distillation_teacher]
    ce = [-float(torch.log_softmax(logits[q], 0)[ql[q]]) for q in range(nq)]
    main = sum(ce) if cfg.ce_reduction == "sum" else sum(ce) / nq
    return logits, main + cfg.distillation_weight * distill, distill, torch.tensor(up_set), torch.tensor(down_set)


def _randomise_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("reference", {}),  # the release's statistics script: t+v conditions, bid
        ("reference_run", {"otam_bidirectional": False}),  # the release's main script (t only, up2down), one-way OTAM
        ("reference", {"distillation_text_condition": False, "distillation_visual_condition": False}),  # unweighted sum
        ("paper", {}),
        ("paper", {"distillation_text_condition": False, "distillation_teacher": "local", "ce_reduction": "sum"}),
    ],
)
def test_head_equals_literal_float64_implementation(clip_config, preset, overrides):
    model = M2DFModel(make_config(clip_config, preset=preset, **overrides)).double().eval()
    _randomise_batchnorm(model)
    with torch.no_grad():
        for p in model.parameters():  # larger weights: distances and reliabilities differ clearly between views
            p.mul_(3.0)
    episode = {k: v.double() if v.is_floating_point() else v for k, v in make_episode(3, 2, 2, 4, seed=7).items()}
    prompt_ids = [2, 0, 1, 1, 0, 2]
    with torch.no_grad():
        out = model(**episode, query_prompt_ids=torch.tensor(prompt_ids))
    logits, loss, distill, up, down = naive_head(model, episode, prompt_ids)
    torch.testing.assert_close(out.logits, logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.distillation_loss, torch.tensor(distill, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.loss, torch.tensor(loss, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert out.local_reliable_mask.tolist() == up.tolist()
    assert out.global_reliable_mask.tolist() == down.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Components against hand-computed values
# ---------------------------------------------------------------------------------------------------------------


def test_otam_recursion_equals_naive_float64():
    from modeling_m2df import otam_cumulative_distance

    g = torch.Generator().manual_seed(0)
    for rows, cols in [(2, 2), (4, 4), (8, 8), (3, 6), (6, 3)]:
        cost = torch.rand(3, rows, cols, generator=g, dtype=torch.float64) * 2
        for lam in (0.5, 0.1):
            expected = torch.tensor([naive_otam(c.tolist(), lam) for c in cost], dtype=torch.float64)
            torch.testing.assert_close(otam_cumulative_distance(cost, lam), expected, rtol=1e-12, atol=1e-12)
    # values can be negative (soft-min offsets), as METHOD.md notes
    assert otam_cumulative_distance(torch.zeros(1, 4, 4, dtype=torch.float64), 0.5).item() < 0


@pytest.mark.parametrize("lam", [1e2, 1e4, 1e6, 1e9])
def test_otam_recursion_is_exact_for_large_lambda(lam):
    """OTAM values scale like -lam (L+M) log 3: terms the recursion leaves out must stay out for any lam."""
    from modeling_m2df import otam_cumulative_distance

    g = torch.Generator().manual_seed(2)
    for rows, cols in [(8, 8), (3, 6), (6, 3)]:
        cost = torch.rand(2, rows, cols, generator=g, dtype=torch.float64) * 2
        expected = torch.tensor([naive_otam(c.tolist(), lam) for c in cost], dtype=torch.float64)
        torch.testing.assert_close(otam_cumulative_distance(cost, lam), expected, rtol=1e-12, atol=0.0)


def test_otam_gradients_equal_finite_differences():
    from modeling_m2df import otam_cumulative_distance

    cost = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: otam_cumulative_distance(c, 0.5), (cost,))


@pytest.mark.parametrize("bidirectional,eps", [(True, 0.0), (True, 0.01), (False, 0.0), (False, 0.01)])
def test_otam_distance_equals_naive_in_both_presets_settings(bidirectional, eps):
    from modeling_m2df import otam_distance

    g = torch.Generator().manual_seed(1)
    query = torch.randn(3, 5, 6, generator=g, dtype=torch.float64) * 0.2  # small norms: eps matters
    protos = torch.randn(2, 5, 6, generator=g, dtype=torch.float64) * 0.2
    got = otam_distance(query, protos, 0.5, bidirectional, eps)
    torch.testing.assert_close(got, naive_view_distance(query, protos, 0.5, eps, bidirectional), rtol=1e-12, atol=1e-12)
    # several views batched in one call give each view's own distances
    stacked = otam_distance(torch.stack([query, query.flip(1)]), torch.stack([protos, protos]), 0.5, bidirectional, eps)
    torch.testing.assert_close(stacked[0], got)
    torch.testing.assert_close(stacked[1], naive_view_distance(query.flip(1), protos, 0.5, eps, bidirectional))


def test_otam_gradients_are_finite_in_float32():
    from modeling_m2df import otam_distance

    query = torch.randn(4, 16, 8, requires_grad=True)
    otam_distance(query, torch.randn(3, 16, 8), 0.5, True, 0.0).sum().backward()
    assert torch.isfinite(query.grad).all() and query.grad.abs().sum() > 0


def test_pairwise_cosine_eps_by_hand():
    from modeling_m2df import pairwise_cosine

    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0], [0.0, 0.0]])
    torch.testing.assert_close(pairwise_cosine(a, b), torch.tensor([[24 / 25, 0.0]]))
    torch.testing.assert_close(pairwise_cosine(a, b, 0.01), torch.tensor([[24 / 25.01, 0.0]]))


def test_prototypes_are_class_means_in_label_order():
    from modeling_m2df import class_prototypes

    outputs = torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 2, 3)
    labels = torch.tensor([1, 0, 1, 0])
    expected = torch.stack([(outputs[1] + outputs[3]) / 2, (outputs[0] + outputs[2]) / 2])
    torch.testing.assert_close(class_prototypes(outputs, labels, 2), expected)


def _capture_view_inputs(view):
    captured = []
    view.register_forward_pre_hook(lambda module, args: captured.append(args))
    return captured


def test_pps_probabilities_argmax_and_prompts_by_hand(clip_config):
    model = M2DFModel(make_config(clip_config, pps_scale=10.0)).eval()
    episode = make_episode(3, 1, 2, 4, seed=3)
    episode["query_video_embeds"][:, 0] *= 0.01  # a weak frame: the top-2 mean must skip it for some classes
    captured = _capture_view_inputs(model.local_view)
    with torch.no_grad():
        out = model(**episode)
    text, frames = episode["class_text_embeds"], episode["query_video_embeds"]
    expected = torch.zeros(6, 3)
    for q in range(6):
        for c in range(3):
            sims = sorted((naive_cos(text[c], frames[q, t], 0.0) for t in range(4)), reverse=True)
            expected[q, c] = sum(sims[:2]) / 2
    torch.testing.assert_close(out.query_prompt_probs, torch.softmax(10.0 * expected, -1))
    assert out.query_prompt_ids.tolist() == expected.argmax(-1).tolist()  # argmax at evaluation
    prompts = captured[0][1]  # [NS + NQ, D]
    torch.testing.assert_close(prompts[:3], text[episode["support_labels"]])
    torch.testing.assert_close(prompts[3:], text[out.query_prompt_ids])

    forced = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        out_forced = model(**episode, query_prompt_ids=forced)
    assert out_forced.query_prompt_ids.tolist() == forced.tolist()
    torch.testing.assert_close(captured[1][1][3:], text[forced])
    torch.testing.assert_close(out_forced.query_prompt_probs, out.query_prompt_probs)


@pytest.mark.parametrize("num_frames", [2, 3])
def test_pps_top_k_beyond_the_clip_length_averages_every_frame(clip_config, num_frames):
    """T = 2 or 3 with the default pps_top_k=4: PPS and the auxiliary text logits use all T frames."""
    config = make_config(clip_config, num_frames=num_frames, pps_top_k=4, pps_scale=10.0, text_loss_weight=0.5)
    model = M2DFModel(config).eval()
    episode = make_episode(3, 1, 2, num_frames, seed=6)
    split_text = torch.randn(5, D, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.text_logit_scale.fill_(2.0)
        out = model(
            **episode,
            split_text_embeds=split_text,
            support_class_ids=torch.tensor([4, 0, 2]),
            query_class_ids=torch.tensor([0, 0, 4, 4, 2, 2]),
        )
    text, frames = episode["class_text_embeds"], episode["query_video_embeds"]
    expected = torch.tensor(
        [[sum(naive_cos(text[c], frames[q, t], 0.0) for t in range(num_frames)) for c in range(3)] for q in range(6)]
    ) / num_frames
    torch.testing.assert_close(out.query_prompt_probs, torch.softmax(10.0 * expected, -1))
    videos = torch.cat([episode["support_video_embeds"], frames]).mean(dim=1)  # every frame pooled
    hand_logits = torch.tensor([[2.0 * naive_cos(v, split_text[c], 0.0) for c in range(5)] for v in videos])
    torch.testing.assert_close(out.text_logits, hand_logits)


def test_pps_off_gives_zero_query_prompts(clip_config):
    model = M2DFModel(make_config(clip_config, use_pps=False)).eval()
    assert model.prompt_selector is None
    episode = make_episode(3, 2, 1, 4)
    captured = _capture_view_inputs(model.global_view)
    with torch.no_grad():
        out = model(**episode)
    prompts = captured[0][1]
    assert torch.equal(prompts[6:], torch.zeros(3, D))
    torch.testing.assert_close(prompts[:6], episode["class_text_embeds"][episode["support_labels"]])
    assert out.query_prompt_probs is None and out.query_prompt_ids is None
    with pytest.raises(ValueError, match="use_pps=False"):
        model(**episode, query_prompt_ids=torch.zeros(3, dtype=torch.long))


def test_pps_sampling_follows_torch_seed_and_eval_mode(clip_config):
    episode = make_episode(4, 1, 8, 4, seed=5)  # 32 queries
    sampled = M2DFModel(make_config(clip_config, pps_scale=1e-3)).train()  # near-uniform PPS
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            draws.append(sampled(**episode).query_prompt_ids.tolist())
    assert draws[0] == draws[1] and draws[0] != draws[2]
    sampled.eval()  # paper: argmax at evaluation, whatever the seed
    with torch.no_grad():
        assert len({tuple(sampled(**episode).query_prompt_ids.tolist()) for _ in range(3)}) == 1
    sampled.config.pps_eval_mode = "sample"
    release_like = M2DFModel(make_config(clip_config, preset="reference", pps_scale=1e-3)).eval()
    with torch.no_grad():
        assert len({tuple(release_like(**episode).query_prompt_ids.tolist()) for _ in range(3)}) == 3


@pytest.mark.parametrize("views", ["local", "global", "none"])
def test_single_views_build_and_run_only_their_view(clip_config, views):
    both = M2DFModel(make_config(clip_config)).eval()
    single = M2DFModel(make_config(clip_config, views=views)).eval()
    present = {name.split(".")[0] for name, _ in single.named_parameters()}
    expected_view = {"local": "local_view", "global": "global_view", "none": "plain_view"}[views]
    assert present == {"vision_tower", "text_tower", expected_view}
    assert single.distillation is None
    episode = make_episode(3, 2, 2, 4)
    with torch.no_grad():
        out = single(**episode)
        reference = both(**episode)
    assert out.distillation_loss is None and out.local_reliable_mask is None
    torch.testing.assert_close(out.loss, out.main_loss)
    if views == "none":
        assert single.plain_view.temporal_context is None
        assert out.local_distances is None and out.global_distances is None
        captured = []
        single.plain_view.fusion_encoder.register_forward_pre_hook(lambda m, args: captured.append(args))
        with torch.no_grad():
            single(**episode)
        prompts, context_frames, frames = captured[0]
        assert torch.equal(context_frames, frames)  # NTCE: the query stream is the raw frames
    else:
        # the single view computes exactly the same distances as that view inside the two-view model
        single_view = getattr(single, f"{views}_view")
        single_view.load_state_dict(getattr(both, f"{views}_view").state_dict())
        with torch.no_grad():
            out = single(**episode)
        distances = getattr(out, f"{views}_distances")
        torch.testing.assert_close(distances, getattr(reference, f"{views}_distances"))
        torch.testing.assert_close(out.logits, -distances)
        other = "global" if views == "local" else "local"
        assert getattr(out, f"{other}_distances") is None


def test_switches_that_create_or_remove_modules(clip_config):
    paper = M2DFModel(make_config(clip_config))
    reference = M2DFModel(make_config(clip_config, preset="reference"))
    paper_keys, reference_keys = set(paper.state_dict()), set(reference.state_dict())
    # the paper's LTCE has BatchNorms and its MMFE positional embeddings; the release has neither
    assert paper_keys - reference_keys == {
        *(
            f"local_view.temporal_context.norm{i}.{p}"
            for i in (1, 2)
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
        "local_view.fusion_encoder.position_embeddings",
        "global_view.fusion_encoder.position_embeddings",
    }
    assert reference_keys <= paper_keys
    assert paper.local_view.fusion_encoder.position_embeddings.shape == (5, D)  # T + 1 positions
    assert "text_logit_scale" not in paper_keys
    with_text = M2DFModel(make_config(clip_config, text_loss_weight=0.5))
    assert with_text.text_logit_scale.item() == 1.0
    deeper = M2DFModel(make_config(clip_config, mmfe_num_layers=2, tcn_num_levels=2))
    assert len(deeper.local_view.fusion_encoder.layers) == 2 and len(deeper.global_view.temporal_context.tcn) == 2


@pytest.mark.parametrize("levels,kernel", [(1, 2), (2, 3), (3, 3), (2, 4)])
def test_global_view_sees_exactly_its_receptive_field(clip_config, levels, kernel):
    """The config's receptive field is the TCN's real one: its last step depends on exactly the last
    `tcn_receptive_field` frames, and `num_frames` beyond that is refused."""
    from modeling_m2df import M2DFGlobalTemporalContext

    field = 1 + 2 * (kernel - 1) * (2**levels - 1)
    config = M2DFConfig(clip_config=clip_config, num_frames=field, tcn_num_levels=levels, tcn_kernel_size=kernel)
    assert config.tcn_receptive_field == field
    torch.manual_seed(0)
    gtce = M2DFGlobalTemporalContext(config).double().eval()
    length = field + 6  # the module itself does not check T: probe it with a longer clip
    frames = torch.randn(2, length, D, dtype=torch.float64, requires_grad=True)
    (gtce(frames) - frames)[:, 0].sum().backward()  # the repeated last TCN step, without the +F residual
    seen = (frames.grad.abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
    assert seen == list(range(length - field, length))
    with pytest.raises(ValueError, match="num_frames"):
        M2DFConfig(clip_config=clip_config, num_frames=field + 1, tcn_num_levels=levels, tcn_kernel_size=kernel)


def test_tcn_weight_norm_layout_is_the_release_g_v_pair(clip_config):
    model = M2DFModel(make_config(clip_config))
    conv = model.global_view.temporal_context.tcn[1].conv2
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    assert g.shape == (D, 1, 1) and v.shape == (D, D, 3) and conv.dilation == (2,)
    torch.testing.assert_close(conv.weight, g * v / v.norm(dim=(1, 2), keepdim=True))
    torch.testing.assert_close(g, v.norm(dim=(1, 2), keepdim=True))  # initialised like the release (default init)


# ---------------------------------------------------------------------------------------------------------------
# Reliability and mutual distillation on hand-built cases
# ---------------------------------------------------------------------------------------------------------------

# columns (local, global). Text judgement "local >= global": T F F T T(tie); visual: T F T F T(tie).
HAND_VISUAL = torch.tensor([[0.9, 0.5], [0.5, 0.9], [0.9, 0.5], [0.5, 0.9], [0.7, 0.7]])
HAND_TEXT = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.6, 0.4], [0.5, 0.5]])


@pytest.mark.parametrize(
    "text,visual,local_set,global_set",
    [
        (True, True, [1, 0, 0, 0, 1], [0, 1, 0, 0, 0]),  # both modes must agree; disagreeing queries are dropped
        (True, False, [1, 0, 0, 1, 1], [0, 1, 1, 0, 0]),
        (False, True, [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]),
        (False, False, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),  # unconditioned: everyone, both directions
    ],
)
def test_conditions_select_the_reliable_sets(clip_config, text, visual, local_set, global_set):
    from modeling_m2df import M2DFMutualDistillation

    config = make_config(clip_config, distillation_text_condition=text, distillation_visual_condition=visual)
    local_mask, global_mask = M2DFMutualDistillation(config).reliable_sets(HAND_VISUAL, HAND_TEXT)
    assert local_mask.int().tolist() == local_set and global_mask.int().tolist() == global_set


def _hand_kl(p, r):
    return sum(p[c] * (torch.log(p[c]) - torch.log(r[c])) for c in range(len(p)))


def _distillation_case():
    g = torch.Generator().manual_seed(11)
    local_d = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    global_d = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    tokens = [
        (torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64))
        for _ in range(2)
    ]
    return local_d, global_d, tokens


@pytest.mark.parametrize("teacher", ["both", "global", "local"])
@pytest.mark.parametrize("conditions", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("unconditioned", ["weighted_mean", "sum"])
def test_teacher_setting_keeps_exactly_its_kl_terms(clip_config, teacher, conditions, unconditioned):
    from modeling_m2df import M2DFMutualDistillation

    config = make_config(
        clip_config,
        distillation_teacher=teacher,
        distillation_text_condition=conditions[0],
        distillation_visual_condition=conditions[1],
        unconditioned_distillation=unconditioned,
    )
    local_d, global_d, tokens = _distillation_case()
    loss, local_mask, global_mask, visual, text = M2DFMutualDistillation(config)(local_d, global_d, *tokens)

    p_local, p_global = torch.softmax(-local_d, -1), torch.softmax(-global_d, -1)
    for view, (q_tok, p_tok) in enumerate(tokens):  # eqs. 11-13 by hand
        for q in range(5):
            cos = torch.tensor(
                [float(q_tok[q] @ p_tok[c]) / float(q_tok[q].norm() * p_tok[c].norm()) for c in range(3)],
                dtype=torch.float64,
            )
            assert abs(float(torch.softmax(cos, 0).max()) - float(text[q, view])) < 1e-12
    torch.testing.assert_close(visual, torch.stack([p_local.max(-1).values, p_global.max(-1).values], -1))

    def directed(p_teacher, p_student, weight, members):
        if conditions == (False, False) and unconditioned == "sum":
            return sum(_hand_kl(p_teacher[q], p_student[q]) for q in range(5))
        num = sum(weight[q] * _hand_kl(p_teacher[q], p_student[q]) for q in range(5) if members[q])
        den = sum(weight[q] for q in range(5) if members[q])
        return num / den if den > 0 else 0.0

    global_teaches = directed(p_global, p_local, visual[:, 1] + text[:, 1], global_mask.tolist())
    local_teaches = directed(p_local, p_global, visual[:, 0] + text[:, 0], local_mask.tolist())
    expected = {"both": global_teaches + local_teaches, "global": global_teaches, "local": local_teaches}[teacher]
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=torch.float64))
    assert float(global_teaches) != float(local_teaches)


@pytest.mark.parametrize("detach", [True, False])
def test_detached_teacher_gets_no_distillation_gradient(clip_config, detach):
    from modeling_m2df import M2DFMutualDistillation

    config = make_config(
        clip_config,
        distillation_teacher="global",
        distillation_detach_teacher=detach,
        distillation_text_condition=False,
        distillation_visual_condition=False,
    )
    local_d, global_d, tokens = _distillation_case()
    local_d.requires_grad_(True)
    global_d.requires_grad_(True)
    M2DFMutualDistillation(config)(local_d, global_d, *tokens)[0].backward()
    assert local_d.grad.abs().sum() > 0  # the student always learns
    teacher_learns = global_d.grad is not None and bool(global_d.grad.abs().sum() > 0)
    assert teacher_learns == (not detach)  # the release lets gradients into the teacher


def test_empty_reliable_set_gives_zero_loss(clip_config):
    from modeling_m2df import M2DFMutualDistillation

    module = M2DFMutualDistillation(make_config(clip_config, distillation_teacher="local"))
    local_d = torch.tensor([[5.0, 5.0, 5.0]])  # uniform: the local view is never more confident
    global_d = torch.tensor([[0.0, 3.0, 3.0]])
    tokens = (torch.ones(1, 4), torch.ones(3, 4))
    loss, local_mask, global_mask, _, _ = module(local_d, global_d, tokens, (torch.eye(4)[:1], torch.eye(4)[:3]))
    assert not local_mask.any() and global_mask.all() and loss.item() == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Loss (eq. 15), auxiliary text loss
# ---------------------------------------------------------------------------------------------------------------


def test_loss_equals_its_components_by_hand(clip_config):
    model = M2DFModel(make_config(clip_config, distillation_weight=0.5, text_loss_weight=0.3)).eval()
    episode = make_episode(3, 2, 1, 4, seed=2)
    g = torch.Generator().manual_seed(4)
    split_text = torch.randn(7, D, generator=g)
    support_class_ids, query_class_ids = torch.tensor([4, 1, 6, 4, 1, 6]), torch.tensor([1, 6, 4])
    with pytest.raises(ValueError, match="split_text_embeds"):
        model(**episode)
    with torch.no_grad():
        model.text_logit_scale.fill_(2.5)
        out = model(
            **episode,
            split_text_embeds=split_text,
            support_class_ids=support_class_ids,
            query_class_ids=query_class_ids,
        )
    labels = episode["query_labels"]
    main = -sum(torch.log_softmax(out.logits[q], 0)[labels[q]] for q in range(3)) / 3
    torch.testing.assert_close(out.main_loss, main)

    # auxiliary text logits by hand: top-2 frames per video, chosen by its prompt (queries: PPS argmax class)
    text, fs, fq = episode["class_text_embeds"], episode["support_video_embeds"], episode["query_video_embeds"]
    rows = []
    for i in range(6):
        prompt = text[episode["support_labels"][i]]
        best = sorted(range(4), key=lambda t: -naive_cos(prompt, fs[i, t], 0.0))[:2]
        rows.append(fs[i, best].mean(0))
    for q in range(3):
        per_class = [sorted((naive_cos(text[c], fq[q, t], 0.0) for t in range(4)), reverse=True) for c in range(3)]
        a_q = max(range(3), key=lambda c: sum(per_class[c][:2]))
        best = sorted(range(4), key=lambda t: -naive_cos(text[a_q], fq[q, t], 0.0))[:2]
        rows.append(fq[q, best].mean(0))
    hand_logits = torch.tensor([[2.5 * naive_cos(r, split_text[c], 0.0) for c in range(7)] for r in rows])
    torch.testing.assert_close(out.text_logits, hand_logits)
    targets = torch.cat([support_class_ids, query_class_ids])
    text_loss = -sum(torch.log_softmax(hand_logits[i], 0)[targets[i]] for i in range(9)) / 9
    torch.testing.assert_close(out.text_loss, text_loss)
    torch.testing.assert_close(out.loss, main + 0.5 * out.distillation_loss + 0.3 * text_loss)

    summed = M2DFModel(make_config(clip_config, ce_reduction="sum"))
    summed.load_state_dict({k: v for k, v in model.state_dict().items() if k != "text_logit_scale"})
    with torch.no_grad():
        out_sum = summed.eval()(**episode)
    torch.testing.assert_close(out_sum.main_loss, 3 * main)


# ---------------------------------------------------------------------------------------------------------------
# Invariances, gradients, determinism
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_permutations(clip_config, preset):
    model = M2DFModel(make_config(clip_config, preset=preset)).eval()
    episode = make_episode(4, 3, 2, 4, seed=9)
    prompt_ids = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    with torch.no_grad():
        base = model(**episode, query_prompt_ids=prompt_ids).logits
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
        permuted_queries = dict(
            episode, query_video_embeds=episode["query_video_embeds"][perm], query_labels=episode["query_labels"][perm]
        )
        torch.testing.assert_close(model(**permuted_queries, query_prompt_ids=prompt_ids[perm]).logits, base[perm])
        sperm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
        permuted_support = dict(
            episode,
            support_video_embeds=episode["support_video_embeds"][sperm],
            support_labels=episode["support_labels"][sperm],
        )
        torch.testing.assert_close(
            model(**permuted_support, query_prompt_ids=prompt_ids).logits, base, rtol=1e-5, atol=1e-5
        )
        # renaming the classes (labels and prompt rows together) permutes the logit columns
        cperm = torch.tensor([2, 0, 3, 1])  # old label c becomes cperm[c]
        renamed = dict(
            episode,
            support_labels=cperm[episode["support_labels"]],
            query_labels=cperm[episode["query_labels"]],
            class_text_embeds=episode["class_text_embeds"][torch.argsort(cperm)],
        )
        torch.testing.assert_close(
            model(**renamed, query_prompt_ids=cperm[prompt_ids]).logits[:, cperm], base, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("paper", {}),
        ("reference", {}),
        ("paper", {"views": "none", "freeze_text_encoder": False}),
        ("paper", {"views": "global", "text_loss_weight": 1.0, "trainable_vision_layers": 1}),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(clip_config, preset, overrides):
    model = M2DFModel(make_config(clip_config, preset=preset, **overrides)).train()
    g = torch.Generator().manual_seed(0)
    kwargs = dict(
        support_pixel_values=torch.randn(4, 4, 3, 32, 32, generator=g),
        support_labels=torch.tensor([0, 1, 1, 0]),
        query_pixel_values=torch.randn(4, 4, 3, 32, 32, generator=g),
        class_input_ids=torch.cat(
            [torch.randint(0, 512, (2, 5), generator=g), torch.full((2, 1), 513)], 1
        ),  # ends in EOS
        query_labels=torch.tensor([1, 0, 0, 1]),
    )
    if model.config.text_loss_weight > 0:
        kwargs.update(
            split_text_embeds=torch.randn(5, D, generator=g),
            support_class_ids=torch.tensor([0, 3, 3, 0]),
            query_class_ids=torch.tensor([3, 0, 0, 3]),
        )
    model(**kwargs).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    if overrides.get("freeze_text_encoder") is False:
        assert any(n.startswith("text_tower") for n in trainable)


def test_freezing_options(clip_config):
    def trainable_prefixes(**overrides):
        model = M2DFModel(make_config(clip_config, **overrides))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    default = trainable_prefixes()
    assert not any(n.startswith("text_tower") for n in default)
    assert all(p in {n.split(".")[0] for n in default} for p in ("vision_tower", "local_view", "global_view"))
    frozen = trainable_prefixes(freeze_vision_encoder=True)
    assert not any(n.startswith("vision_tower") for n in frozen)
    last = trainable_prefixes(trainable_vision_layers=1)
    vision = {n for n in last if n.startswith("vision_tower")}
    assert vision and all(
        n.startswith(
            (
                "vision_tower.vision_model.encoder.layers.1.",
                "vision_tower.vision_model.post_layernorm",
                "vision_tower.visual_projection",
            )
        )
        for n in vision
    )
    assert any(n.startswith("text_tower") for n in trainable_prefixes(freeze_text_encoder=False))


def test_same_seed_same_outputs_in_training(clip_config):
    episode = make_episode(3, 2, 2, 4, seed=1)

    def run(seed):
        torch.manual_seed(seed)
        model = M2DFModel(make_config(clip_config)).train()
        out = model(**episode)
        out.loss.backward()
        return out, model.local_view.fusion_encoder.layers[0].attention.q_proj.weight.grad

    (a, grad_a), (b, grad_b), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss) and torch.equal(grad_a, grad_b)
    assert torch.equal(a.query_prompt_ids, b.query_prompt_ids)
    assert not torch.equal(a.logits, c.logits)


def test_activation_checkpointing_gives_the_same_gradients(clip_config):
    config = make_config(clip_config, tcn_dropout=0.0, mmfe_dropout=0.0, mmfe_ffn_dropout=0.0, ltce_activation="linear")
    torch.manual_seed(0)
    model = M2DFModel(config).train()
    episode = make_episode(2, 2, 2, 4, seed=3)
    episode["query_prompt_ids"] = torch.tensor([0, 1, 1, 0])

    def grads():
        model.zero_grad()
        model(**episode).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert model.local_view.fusion_encoder.layers[0].gradient_checkpointing
    assert model.global_view.temporal_context.tcn[0].gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_bfloat16_and_eager_attention(clip_config):
    model = M2DFModel(make_config(clip_config)).eval()
    episode = make_episode(3, 1, 1, 4, seed=8)
    with torch.no_grad():
        reference = model(**episode).logits
        eager = M2DFModel._from_config(model.config, attn_implementation="eager").eval()
        eager.load_state_dict(model.state_dict())
        assert eager.local_view.fusion_encoder.layers[0].attention.config._attn_implementation == "eager"
        torch.testing.assert_close(eager(**episode).logits, reference)
        half = model.to(torch.bfloat16)
        episode_bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in episode.items()}
        logits = half(**episode_bf16).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference, rtol=0.05, atol=0.05)
    half.train()
    half(**episode_bf16).loss.backward()
    assert half.local_view.temporal_context.conv1.weight.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda e: e.update(support_labels=torch.tensor([0, 1, 3, 0, 1, 3])), r"cover 0\.\.3.*\[2\]"),
        (
            lambda e: e.update(support_labels=torch.tensor([0, 1, 2, 0, 1, 9])),
            r"cover 0\.\.9, but 6 support videos cannot cover 10 labels; got \[0, 1, 2, 0, 1, 9\]",
        ),
        (
            lambda e: e.update(support_labels=torch.tensor([0, 1, 2, 0, 1, 1])),
            r"same number of shots; support videos per label: \[2, 3, 1\]",
        ),
        (
            lambda e: e.update(support_labels=torch.tensor([0, 1, 2, 0, -1, 1])),
            r"negative labels in \[0, 1, 2, 0, -1, 1\]",
        ),
        (lambda e: e.update(support_labels=torch.tensor([0, 0, 0, 0, 0, 0])), "Got 3 class prompts for N=1"),
        (lambda e: e.update(support_labels=torch.tensor([1, 1, 2, 2, 3, 3])), r"cover 0\.\.3; labels \[0\] have no"),
        (lambda e: e.update(support_labels=torch.tensor([0, 1, 2, 0, 1])), r"support_labels must have shape \[6\]"),
        (lambda e: e.update(support_labels=e["support_labels"].float()), "integer"),
        (lambda e: e.update(query_video_embeds=e["query_video_embeds"][:, :3]), "same T"),
        (
            lambda e: e.update(
                support_video_embeds=e["support_video_embeds"][:, :1], query_video_embeds=e["query_video_embeds"][:, :1]
            ),
            "T=1",
        ),
        (
            lambda e: e.update(query_video_embeds=e["query_video_embeds"][0]),
            r"query_video_embeds must have shape \[B, T, 32\]",
        ),
        (lambda e: e.update(support_video_embeds=torch.zeros(6, 4, 16)), r"support_video_embeds must have shape"),
        (lambda e: e.update(class_text_embeds=e["class_text_embeds"][:2]), "2 class prompts for N=3"),
        (lambda e: e.update(class_text_embeds=torch.zeros(3, 8)), "class_text_embeds must have shape"),
        (lambda e: e.update(class_input_ids=torch.zeros(3, 5, dtype=torch.long)), "exactly one of class_input_ids"),
        (lambda e: e.pop("class_text_embeds"), "neither given"),
        (lambda e: e.update(support_pixel_values=torch.zeros(6, 4, 3, 32, 32)), "both given"),
        (lambda e: e.pop("query_video_embeds"), "query_pixel_values"),
        (
            lambda e: e.update(query_prompt_ids=torch.tensor([0, 1, 3])),
            r"query_prompt_ids must lie in 0\.\.2, got \[3\]",
        ),
        (lambda e: e.update(query_prompt_ids=torch.tensor([0, 1])), r"query_prompt_ids must have shape \[3\]"),
        (lambda e: e.update(query_labels=torch.tensor([0, -1, 2])), r"query_labels must lie in 0\.\.2, got \[-1\]"),
        (lambda e: e.update(query_labels=torch.tensor([5, 1, -2])), r"query_labels must lie in 0\.\.2, got \[5, -2\]"),
        (lambda e: e.update(query_labels=torch.tensor([0.0, 1.0, 2.0])), "query_labels must hold integer episode"),
    ],
)
def test_bad_input_raises_value_error(clip_config, change, message):
    model = M2DFModel(make_config(clip_config))
    episode = make_episode(3, 2, 1, 4)
    change(episode)
    with pytest.raises(ValueError, match=message):
        model(**episode)


def test_bad_pixels_and_token_ids(clip_config):
    model = M2DFModel(make_config(clip_config))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.get_video_features(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\[C, L\]"):
        model.get_text_features(torch.zeros(5, dtype=torch.long))


def test_bad_text_loss_ids(clip_config):
    model = M2DFModel(make_config(clip_config, text_loss_weight=0.5))
    episode = make_episode(3, 2, 1, 4)
    split = dict(
        split_text_embeds=torch.zeros(7, D),
        support_class_ids=torch.tensor([4, 1, 6, 4, 1, 6]),
        query_class_ids=torch.tensor([1, 6, 4]),
    )
    for name, ids, message in [
        ("support_class_ids", torch.tensor([4, 1, 7, 4, -1, 6]), r"support_class_ids must lie in 0\.\.6, got \[7, -1"),
        ("query_class_ids", torch.tensor([1, 9, 4]), r"query_class_ids must lie in 0\.\.6, got \[9\]"),
        ("query_class_ids", torch.tensor([1, 4]), r"query_class_ids must have shape \[3\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(**episode, **dict(split, **{name: ids}))


def test_valid_episode_reads_back_from_the_device_once(clip_config, monkeypatch):
    """Validation packs every label check into one tensor and reads it back once (`tolist`); nothing else in the
    forward converts a tensor to a Python value. (On a GPU each read-back is a blocking sync.)"""
    model = M2DFModel(make_config(clip_config, text_loss_weight=0.5)).train()
    episode = make_episode(5, 3, 2, 4)
    extra = dict(
        query_prompt_ids=episode["query_labels"].flip(0),
        split_text_embeds=torch.randn(9, D),
        support_class_ids=episode["support_labels"] + 4,
        query_class_ids=episode["query_labels"] + 4,
    )
    read_backs = []
    for method in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            read_backs.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    out = model(**episode, **extra)
    assert read_backs == ["tolist"]
    monkeypatch.undo()
    assert torch.isfinite(out.loss) and out.text_loss is not None


class _LabelSpy(torch.Tensor):
    """Records every torch call made on a label tensor until it is moved with `.to` (the moved copy is plain)."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        name = getattr(func, "__name__", repr(func))
        if name == "to":
            target = (kwargs or {}).get("device")
            for arg in args[1:]:
                if isinstance(arg, (torch.device, str)):
                    target = arg
            cls.calls.append(("to", torch.device(target) if target is not None else None))
            return out.as_subclass(torch.Tensor)
        cls.calls.append((name, None))
        return out


def test_labels_move_to_the_model_device_before_any_computation(clip_config):
    """Labels and ids made on another device (e.g. CPU labels for a CUDA model) are moved to `model.device` first:
    before the move only metadata (shape, dtype, dim) is read, and the tensor is never used again after it."""
    model = M2DFModel(make_config(clip_config, text_loss_weight=0.5)).eval()
    episode = make_episode(3, 2, 1, 4)
    inputs = dict(
        episode,
        query_prompt_ids=torch.tensor([2, 0, 1]),
        split_text_embeds=torch.randn(5, D),
        support_class_ids=torch.tensor([0, 1, 2, 0, 1, 2]),
        query_class_ids=torch.tensor([4, 3, 2]),
    )
    reference = model(**inputs)
    for name in ("support_labels", "query_labels", "query_prompt_ids", "support_class_ids", "query_class_ids"):
        _LabelSpy.calls = []
        spied = dict(inputs, **{name: inputs[name].clone().as_subclass(_LabelSpy)})
        out = model(**spied)
        names = [call for call, _ in _LabelSpy.calls]
        assert "__get__" in names and set(names[:-1]) <= {"__get__", "dim"}, (name, names)  # metadata only
        assert _LabelSpy.calls[-1] == ("to", model.device), (name, _LabelSpy.calls)
        torch.testing.assert_close(out.loss, reference.loss)
