"""Conversion of checkpoints trained with the official release (METHOD.md section 9) into M2DFModel weights.

Losslessness is checked against literal re-implementations written here from the release-format tensors (the
OpenAI ViT, the release's LTCE, TCN with old-style weight norm and chomp, Transformer_v1, OTAM), in float64.
"""

import argparse
import json
import math
import re

import pytest
import torch
from transformers import CLIPModel

from configuration_m2df import M2DFConfig
from m2df_hf.convert import add_cli, convert_official_state_dict, load_official_checkpoint
from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config
from modeling_m2df import M2DFModel

DIM = 32  # D: the tiny CLIP's projection width
WIDTH, PATCH, IMAGE, BLOCKS, VIT_HEADS = 32, 8, 32, 2, 4  # tiny OpenAI-layout ViT (matches tiny_clip_config)
FFN = 2048  # the release's MMFE hidden width
T = 8


def release_state_dict(dim=DIM, ffn=FFN, seed=0):
    """A state dict with exactly the keys and shapes of METHOD.md section 9 (ViT backbone), random values."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    sd = {"scale": torch.tensor([1.7])}
    for view in ("context2", "context_local"):
        p = f"{view}.layers.0."
        sd[p + "0.norm.weight"], sd[p + "0.norm.bias"] = 1 + rand(dim), rand(dim)
        for x in "qkv":
            sd[p + f"0.fn.to_{x}.weight"] = rand(dim, dim, std=dim**-0.5)
        sd[p + "0.fn.to_out.0.weight"], sd[p + "0.fn.to_out.0.bias"] = rand(dim, dim, std=dim**-0.5), rand(dim)
        sd[p + "1.net.0.weight"], sd[p + "1.net.0.bias"] = rand(ffn, dim, std=dim**-0.5), rand(ffn)
        sd[p + "1.net.3.weight"], sd[p + "1.net.3.bias"] = rand(dim, ffn, std=ffn**-0.5), rand(dim)
    for name in ("context_conv1", "context_conv2", "context_conv11", "context_conv22"):
        sd[name + ".weight"], sd[name + ".bias"] = rand(dim, dim, 3, std=(3 * dim) ** -0.5), rand(dim)
    for level in range(3):
        for conv, alias in (("conv1", "net.0"), ("conv2", "net.4")):
            tensors = {"bias": rand(dim), "weight_g": 0.5 + rand(dim, 1, 1).abs(), "weight_v": rand(dim, dim, 3)}
            for prefix in (f"tcn.network.{level}.{conv}", f"tcn.network.{level}.{alias}"):
                for name, tensor in tensors.items():  # the alias holds the very same tensors
                    sd[f"{prefix}.{name}"] = tensor
    grid = IMAGE // PATCH
    b = "backbone."
    sd[b + "conv1.weight"] = rand(WIDTH, 3, PATCH, PATCH, std=0.1)
    sd[b + "class_embedding"] = rand(WIDTH)
    sd[b + "positional_embedding"] = rand(grid * grid + 1, WIDTH)
    sd[b + "ln_pre.weight"], sd[b + "ln_pre.bias"] = 1 + rand(WIDTH), rand(WIDTH)
    for i in range(BLOCKS):
        p = f"{b}transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = rand(3 * WIDTH, WIDTH), rand(3 * WIDTH)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = rand(WIDTH, WIDTH), rand(WIDTH)
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = 1 + rand(WIDTH), rand(WIDTH)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = rand(4 * WIDTH, WIDTH), rand(4 * WIDTH)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = rand(WIDTH, 4 * WIDTH), rand(WIDTH)
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = 1 + rand(WIDTH), rand(WIDTH)
    sd[b + "ln_post.weight"], sd[b + "ln_post.bias"] = 1 + rand(WIDTH), rand(WIDTH)
    sd[b + "proj"] = rand(WIDTH, dim, std=WIDTH**-0.5)
    return sd


def tiny_clip(**overrides):
    return tiny_clip_config(
        hidden_size=WIDTH, projection_dim=DIM, image_size=IMAGE, patch_size=PATCH, num_hidden_layers=BLOCKS,
        num_attention_heads=VIT_HEADS, intermediate_size=4 * WIDTH, **overrides,
    )


def reference_config(clip_config=None, **overrides):
    clip_config = clip_config if clip_config is not None else tiny_clip().to_dict()
    return M2DFConfig.from_preset("reference", clip_config=clip_config, **overrides)


@pytest.fixture(scope="module")
def release():
    return release_state_dict()


@pytest.fixture(scope="module")
def release64(release):
    """The release tensors in float64, for the literal re-implementations."""
    return {k: v.double() for k, v in release.items()}


@pytest.fixture(scope="module")
def converted_model(release, tmp_path_factory):
    """The reference-preset model holding the weights converted from a torch.save'd release checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"iteration": 20020, "model_state_dict": release, "optimizer_state_dict": {"state": {}}}, path)
    converted = convert_official_state_dict(load_official_checkpoint(path), reference_config())
    model = M2DFModel(reference_config())
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == [] and all(k.startswith("text_tower.") for k in missing)
    return model.eval()


# ------------------------------------------------------------------ literal re-implementations (float64)


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def multi_head(q, k, v, heads):
    """softmax(Q K^T / sqrt(dh)) V per head; [B, L, W] inputs already projected."""
    b, length, width = q.shape
    dh = width // heads
    split = lambda x: x.reshape(b, x.shape[1], heads, dh).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh), dim=-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, length, width)


def openai_vit(sd, pixels):
    """CLIP's OpenAI VisionTransformer forward, written from its parameter layout (float64 tensors): `[B, 3, H, W] -> [B, D]`."""
    w = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    x = pixels
    batch, grid = x.shape[0], x.shape[-1] // PATCH
    patches = x.reshape(batch, 3, grid, PATCH, grid, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, -1)
    tokens = patches @ w["conv1.weight"].reshape(WIDTH, -1).T  # conv1: stride = kernel = patch, no bias
    tokens = torch.cat([w["class_embedding"].expand(batch, 1, WIDTH), tokens], dim=1) + w["positional_embedding"]
    tokens = layer_norm(tokens, w["ln_pre.weight"], w["ln_pre.bias"])
    for i in range(BLOCKS):
        p = f"transformer.resblocks.{i}."
        h = layer_norm(tokens, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]).split(WIDTH, dim=-1)
        tokens = tokens + multi_head(q, k, v, VIT_HEADS) @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = layer_norm(tokens, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        tokens = tokens + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    return layer_norm(tokens[:, 0], w["ln_post.weight"], w["ln_post.bias"]) @ w["proj"]


def conv_taps(x, weight, bias, pad_left, pad_right, dilation=1):
    """Conv1d along time as an explicit sum over kernel taps: `x [B, T, Din]`, `weight [Dout, Din, k]`."""
    zeros = lambda n: x.new_zeros(x.shape[0], n, x.shape[2])  # noqa: E731
    padded = torch.cat([zeros(pad_left), x, zeros(pad_right)], dim=1)
    kernel = weight.shape[-1]
    steps = padded.shape[1] - dilation * (kernel - 1)
    return torch.stack(
        [bias + sum(padded[:, t + j * dilation] @ weight[:, :, j].T for j in range(kernel)) for t in range(steps)],
        dim=1,
    )


def release_ltce(w, frames):
    hidden = conv_taps(frames, w["context_conv1.weight"], w["context_conv1.bias"], 1, 1)
    return conv_taps(hidden, w["context_conv2.weight"], w["context_conv2.bias"], 1, 1)


def old_weight_norm(g, v):
    return g * v / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()


def release_gtce(w, frames):
    """TemporalConvNet: per block conv(pad p both sides) -> Chomp1d(p) -> ReLU, twice, then ReLU(out + x);
    then repeat the last step T times and add F."""
    hidden = frames
    for level in range(3):
        d = 2**level
        p = 2 * d
        out = hidden
        for conv in ("conv1", "conv2"):
            key = f"tcn.network.{level}.{conv}."
            weight = old_weight_norm(w[key + "weight_g"], w[key + "weight_v"])
            out = torch.relu(conv_taps(out, weight, w[key + "bias"], p, p, dilation=d)[:, :-p])  # chomp
        hidden = torch.relu(out + hidden)
    return hidden[:, -1:].repeat(1, frames.shape[1], 1) + frames


def release_transformer(sd, module, queries, context, heads=8):
    """Transformer_v1, depth 1: PreNormattention with one LN for q, k, v, residual on un-normalised q; FFN."""
    w = {k[len(module) + len(".layers.0."):]: v for k, v in sd.items() if k.startswith(module + ".")}
    a = layer_norm(queries, w["0.norm.weight"], w["0.norm.bias"])
    b = layer_norm(context, w["0.norm.weight"], w["0.norm.bias"])
    attended = multi_head(a @ w["0.fn.to_q.weight"].T, b @ w["0.fn.to_k.weight"].T, b @ w["0.fn.to_v.weight"].T, heads)
    x = attended @ w["0.fn.to_out.0.weight"].T + w["0.fn.to_out.0.bias"] + queries
    h = x @ w["1.net.0.weight"].T + w["1.net.0.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ w["1.net.3.weight"].T + w["1.net.3.bias"]


def release_view(sd, view, frames, prompts):
    context = release_ltce(sd, frames) if view == "context2" else release_gtce(sd, frames)
    prompts = prompts.unsqueeze(1)
    return release_transformer(sd, view, torch.cat([prompts, context], 1), torch.cat([prompts, frames], 1))


def cos_eps(a, b, eps=0.01):
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None] + eps)


def otam_one_way(cost, lam=0.5):
    """METHOD.md 2.8, literally."""
    rows, cols = cost.shape
    padded = torch.zeros(rows, cols + 2, dtype=cost.dtype)
    padded[:, 1:-1] = cost
    acc = torch.zeros_like(padded)

    def softmin(*xs):
        return -lam * torch.log(sum(torch.exp(-x / lam) for x in xs))

    for m in range(1, cols + 2):
        acc[0, m] = padded[0, m] + acc[0, m - 1]
    for ell in range(1, rows):
        acc[ell, 1] = padded[ell, 1] + softmin(acc[ell - 1, 0], acc[ell - 1, 1], acc[ell, 0])
        for m in range(2, cols + 1):
            acc[ell, m] = padded[ell, m] + softmin(acc[ell - 1, m - 1], acc[ell, m - 1])
        acc[ell, cols + 1] = softmin(acc[ell - 1, cols], acc[ell - 1, cols + 1], acc[ell, cols])
    return acc[rows - 1, cols + 1]


def release_logits(sd, support, support_labels, query, class_text, prompt_ids):
    """The release head's dis_logits for given prompts: -(OTAM_up + OTAM_down), prototypes by class mean."""
    num_classes = class_text.shape[0]
    distances = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    for view in ("context2", "context_local"):
        support_out = release_view(sd, view, support, class_text[support_labels])[:, 1:]
        query_out = release_view(sd, view, query, class_text[prompt_ids])[:, 1:]
        for c in range(num_classes):
            prototype = support_out[support_labels == c].mean(dim=0)
            for q in range(query.shape[0]):
                cost = 1 - cos_eps(query_out[q], prototype)
                distances[q, c] += otam_one_way(cost) + otam_one_way(cost.T)
    return -distances


# ------------------------------------------------------------------ losslessness


def test_head_tensors_are_copied_unchanged(release, converted_model):
    """(a) Every head tensor equals its source; the TCN's effective weights equal g * v / |v|."""
    params = converted_model.state_dict()
    renames = [  # METHOD.md section 9 -> this project's names, applied in order
        ("context2.", "local_view.fusion_encoder."), ("context_local.", "global_view.fusion_encoder."),
        (".layers.0.0.norm.", ".layers.0.norm."), (".layers.0.0.fn.to_out.0.", ".layers.0.attention.out_proj."),
        (".layers.0.0.fn.to_q.", ".layers.0.attention.q_proj."), (".layers.0.0.fn.to_k.", ".layers.0.attention.k_proj."),
        (".layers.0.0.fn.to_v.", ".layers.0.attention.v_proj."), (".layers.0.1.net.0.", ".layers.0.ffn.fc1."),
        (".layers.0.1.net.3.", ".layers.0.ffn.fc2."), ("context_conv", "local_view.temporal_context.conv"),
        ("tcn.network.", "global_view.temporal_context.tcn."),
        ("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"),
    ]
    skipped = re.compile(r"backbone\.|context_conv(11|22)\.|tcn\.network\.\d\.net\.|scale$")  # not head parameters
    head_keys = [k for k in release if not skipped.match(k)]
    assert len(head_keys) == 2 * 11 + 2 * 2 + 3 * 2 * 3  # 2 transformers, 2 LTCE convs, 3 TCN levels x 2 convs
    for key in head_keys:
        target = key
        for old, new in renames:
            target = target.replace(old, new)
        assert torch.equal(params[target], release[key]), (key, target)
    assert len([k for k in params if k.startswith(("local_view.", "global_view."))]) == len(head_keys)
    tcn = converted_model.global_view.temporal_context.tcn
    for level in range(3):
        for n in (1, 2):
            key = f"tcn.network.{level}.conv{n}."
            expected = old_weight_norm(release[key + "weight_g"].double(), release[key + "weight_v"].double())
            effective = getattr(tcn[level], f"conv{n}").weight.double()
            torch.testing.assert_close(effective, expected, rtol=1e-6, atol=1e-7)
    # The unused convs and the text-logit scale (text_loss_weight = 0) are dropped, not parked somewhere.
    assert converted_model.text_logit_scale is None
    converted = convert_official_state_dict(release, reference_config())
    for unused in ("context_conv11.weight", "context_conv11.bias", "context_conv22.weight", "context_conv22.bias"):
        assert not any(torch.equal(v, release[unused]) for v in converted.values()), unused


def test_scale_kept_only_with_text_loss(release):
    assert "text_logit_scale" not in convert_official_state_dict(release, reference_config())
    converted = convert_official_state_dict(release, reference_config(text_loss_weight=0.5))
    assert torch.equal(converted["text_logit_scale"], release["scale"])


def test_vision_tower_matches_literal_openai_vit(release64, converted_model):
    """(b) The converted tower's image embedding equals OpenAI's ViT computed from the release tensors."""
    pixels = torch.rand(3, 1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    expected = openai_vit(release64, pixels[:, 0].double())
    model = M2DFModel(reference_config()).eval().double()
    model.load_state_dict(converted_model.state_dict())
    with torch.no_grad():
        embeds = model.get_video_features(pixels.double())[:, 0]
    torch.testing.assert_close(embeds, expected, rtol=1e-10, atol=1e-10)


def test_head_modules_match_literal_release(release64, converted_model):
    """(c) LTCE, TCN + repeat, and both cross-transformers equal the release's computations."""
    model = M2DFModel(reference_config()).eval().double()
    model.load_state_dict(converted_model.state_dict())
    gen = torch.Generator().manual_seed(2)
    frames = torch.randn(3, T, DIM, generator=gen, dtype=torch.float64)
    prompts = torch.randn(3, DIM, generator=gen, dtype=torch.float64)
    tight = dict(rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(model.local_view.temporal_context(frames), release_ltce(release64, frames), **tight)
        torch.testing.assert_close(model.global_view.temporal_context(frames), release_gtce(release64, frames), **tight)
        for view, module in ((model.local_view, "context2"), (model.global_view, "context_local")):
            expected = release_view(release64, module, frames, prompts)
            torch.testing.assert_close(view(frames, prompts), expected, **tight)


def test_reference_logits_match_literal_release_head(release64, converted_model):
    """(c) The whole reference head (given the same PPS draws) gives the release's dis_logits."""
    gen = torch.Generator().manual_seed(3)
    support_labels = torch.tensor([1, 0, 2, 1, 0, 2])
    support = torch.randn(6, T, DIM, generator=gen)
    query = torch.randn(4, T, DIM, generator=gen)
    class_text = torch.randn(3, DIM, generator=gen)
    prompt_ids = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        out = converted_model(
            support_video_embeds=support, support_labels=support_labels, query_video_embeds=query,
            class_text_embeds=class_text, query_prompt_ids=prompt_ids,
        )
    expected = release_logits(release64, support.double(), support_labels, query.double(), class_text.double(), prompt_ids)
    torch.testing.assert_close(out.logits.double(), expected, rtol=1e-5, atol=1e-4)
    assert out.logits.std() > 0.05  # not a degenerate case where every distance is equal


# ------------------------------------------------------------------ validation and safety


def test_data_parallel_prefixes_are_stripped(release):
    wrapped = {("module." + k).replace("module.backbone.", "module.backbone.module."): v for k, v in release.items()}
    plain = convert_official_state_dict(release, reference_config())
    stripped = convert_official_state_dict(wrapped, reference_config())
    assert plain.keys() == stripped.keys()
    assert all(torch.equal(plain[k], stripped[k]) for k in plain)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"mid_layer.weight": torch.zeros(2)}), r"unknown release keys.*mid_layer\.weight"),
        (lambda sd: sd.pop("context2.layers.0.0.norm.bias"), r"does not provide.*local_view\.fusion_encoder\.layers\.0\.norm\.bias"),
        (lambda sd: sd.update({"context_local.layers.0.1.net.0.bias": torch.zeros(64)}), r"shape mismatches.*ffn\.fc1\.bias: checkpoint \(64,\) vs model \(2048,\)"),
        (lambda sd: sd.update({"tcn.network.3.conv1.bias": torch.zeros(DIM)}), r"does not have.*tcn\.3\.conv1\.bias"),
        (lambda sd: sd.update({"tcn.network.1.net.4.weight_v": torch.zeros(DIM, DIM, 3)}), r"alias.*tcn\.network\.1\.net\.4\.weight_v"),
        (lambda sd: sd.update({"backbone.attnpool.c_proj.weight": torch.zeros(DIM, 8)}), r"RN50.*not supported: transformers has no CLIP RN50"),
    ],
    ids=["unknown", "missing", "shape", "extra-level", "alias", "rn50"],
)
def test_bad_state_dicts_raise(release, edit, message):
    sd = dict(release)
    edit(sd)
    with pytest.raises(ValueError, match=message):
        convert_official_state_dict(sd, reference_config())


def test_width_and_config_checks(release):
    narrow = M2DFConfig.from_preset("reference", clip_config=tiny_clip_config(projection_dim=16).to_dict())
    with pytest.raises(ValueError, match=r"feature width D=32 .*projection_dim=16"):
        convert_official_state_dict(release, narrow)
    paper = M2DFConfig.from_preset("paper", clip_config=tiny_clip().to_dict())
    with pytest.raises(ValueError, match=r"losslessly.*'ltce_activation': 'relu_bn'.*'use_position_embeddings': True"):
        convert_official_state_dict(release, paper)
    gelu_clip = tiny_clip()
    gelu_clip.vision_config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        convert_official_state_dict(release, reference_config(clip_config=gelu_clip.to_dict()))


class _Payload:
    """Unpickling this would create `marker` (any code could run instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickles_are_refused(release, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": release, "args": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match=r"(?s)Refusing to load .*weights_only=True.*Unsupported global"):
        load_official_checkpoint(path)
    assert not marker.exists()
    torch.save({"model_state_dict": release, "args": argparse.Namespace(lr=1e-5)}, path)  # what drivers often save
    with pytest.raises(ValueError, match="Refusing"):
        load_official_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_official_checkpoint(path)
    torch.save({"model_state_dict": release}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_official_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_official_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------------ end to end


def test_cli_converts_end_to_end(release, tmp_path):
    clip_dir = tmp_path / "clip"
    clip = CLIPModel(tiny_clip())
    clip.save_pretrained(clip_dir)
    build_tiny_clip_tokenizer(clip_dir)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in release.items()}}, checkpoint)

    parser = argparse.ArgumentParser(prog="m2df")
    add_cli(parser.add_subparsers(dest="command"))
    assert "m2df convert-official --checkpoint" in parser._subparsers._group_actions[0].choices["convert-official"].format_help()
    out = tmp_path / "converted"
    with pytest.raises(SystemExit):  # argparse rejects a --set without '='
        parser.parse_args(["convert-official", "--checkpoint", "c", "--clip", "d", "--out", "o", "--set", "argmax"])
    typo = parser.parse_args(
        ["convert-official", "--checkpoint", str(checkpoint), "--clip", str(clip_dir), "--out", str(out),
         "--set", "pps_eval_mod=argmax"]
    )
    with pytest.raises(ValueError, match=r"Unknown M2DFConfig fields \['pps_eval_mod'\]"):
        typo.func(typo)
    assert not out.exists()
    args = parser.parse_args(
        ["convert-official", "--checkpoint", str(checkpoint), "--clip", str(clip_dir), "--out", str(out),
         "--set", "pps_eval_mode=argmax", "--set", "cosine_eps=0.02"]
    )
    assert args.func(args) == 0

    for name in (
        "config.json", "model.safetensors", "configuration_m2df.py", "modeling_m2df.py", "tokenizer_config.json",
        "preprocessor_config.json", "processing_m2df.py",
    ):
        assert (out / name).is_file(), name
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["sampler"], processor["do_normalize"], processor["crop_size"], processor["num_frames"]) == (
        "linspace_jitter", False, IMAGE, T
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_m2df.M2DFModel"
    assert (saved["preset"], saved["pps_eval_mode"], saved["cosine_eps"]) == ("reference", "argmax", 0.02)
    model = M2DFModel.from_pretrained(out)
    params = model.state_dict()
    expected = convert_official_state_dict(release, reference_config())
    assert all(torch.equal(params[k], v) for k, v in expected.items())
    clip_text = clip.text_model.state_dict()
    assert all(torch.equal(params["text_tower.text_model." + k], v) for k, v in clip_text.items())
