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


@pytest.mark.parametrize("num_frames", [4, 8, 16])
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
        torch.testing.assert_close(video.flatten(0, 1), clip.get_image_features(pixel_values=pixels.flatten(0, 1)).pooler_output)
        torch.testing.assert_close(text, clip.get_text_features(input_ids=input_ids).pooler_output)
