"""The few-shot video-classification pipeline, loaded the way users load it (remote code from an exported folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import NUM_FRAMES, exported_dir, support_set, videos
from transformers import CLIPTokenizer, pipeline

from m2df_hf.processing_m2df import M2DFVideoProcessor


@pytest.fixture(scope="module")
def pipe():
    pipe = pipeline("video-classification", model=str(exported_dir()), trust_remote_code=True)
    yield pipe
    pipe.clear_cache()


@pytest.fixture(scope="module")
def direct():
    """Processor and tokenizer loaded independently of the pipeline, to compute expected scores by hand."""
    return M2DFVideoProcessor.from_pretrained(exported_dir()), CLIPTokenizer.from_pretrained(exported_dir())


def direct_few_shot_probs(model, direct, support, queries) -> tuple[list[str], torch.Tensor]:
    processor, tokenizer = direct
    labels = list(support)
    support_videos = [v for name in labels for v in support[name]]
    shots = len(support[labels[0]])
    prompts = tokenizer([model.config.prompt_template.format(c) for c in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(
            support_pixel_values=processor(support_videos)["pixel_values"],
            support_labels=torch.arange(len(labels)).repeat_interleave(shots),
            query_pixel_values=processor(queries)["pixel_values"],
            class_input_ids=prompts["input_ids"],
            class_attention_mask=prompts["attention_mask"],
        ).logits
    return labels, logits.double().softmax(-1)


def as_matrix(rankings, labels) -> torch.Tensor:
    """Pipeline rankings -> [NQ, N] scores in ``labels`` order."""
    return torch.tensor([[{r["label"]: r["score"] for r in ranking}[c] for c in labels] for ranking in rankings])


def test_loads_the_custom_pipeline_from_remote_code(pipe):
    assert type(pipe).__name__ == "M2DFFewShotVideoClassificationPipeline"
    assert type(pipe).__module__.startswith("transformers_modules.")  # the Hub file, not this package's module
    assert pipe.model.config.num_frames == NUM_FRAMES


def test_few_shot_scores_equal_softmax_of_model_logits(pipe, direct):
    v, support = videos(), support_set()
    queries = [v["q0"], v["q1"], v["a0"]]
    labels, expected = direct_few_shot_probs(pipe.model, direct, support, queries)
    rankings = pipe(queries, support_set=support, top_k=10)
    assert [len(r) for r in rankings] == [3, 3, 3]  # top_k is capped at the number of classes
    for ranking in rankings:
        assert {r["mode"] for r in ranking} == {"few-shot"}
        scores = [r["score"] for r in ranking]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(as_matrix(rankings, labels), expected.float(), atol=1e-5, rtol=1e-4)


def test_top_k_and_single_query_shape(pipe):
    v = videos()
    full = pipe(v["q0"], support_set=support_set(), top_k=3)
    top2 = pipe(v["q0"], support_set=support_set(), top_k=2)
    assert isinstance(full, list) and isinstance(full[0], dict)  # one query -> one ranking
    assert top2 == full[:2]


def test_batch_equals_one_by_one(pipe):
    v, support = videos(), support_set()
    queries = [v["q0"], v["q1"], v["q2"]]
    batched = pipe(queries, support_set=support)
    single = [pipe(q, support_set=support) for q in queries]
    labels = list(support)
    torch.testing.assert_close(as_matrix(batched, labels), as_matrix(single, labels), atol=1e-5, rtol=1e-4)
    assert [r[0]["label"] for r in batched] == [r[0]["label"] for r in single]


def test_support_embeddings_are_computed_once_and_keyed_by_content(pipe, monkeypatch, tmp_path):
    v, support = videos(), support_set()
    pipe.clear_cache()
    batch_sizes = []
    encode = pipe.model.get_video_features

    def counting(pixel_values):
        batch_sizes.append(pixel_values.shape[0])
        return encode(pixel_values)

    monkeypatch.setattr(pipe.model, "get_video_features", counting)
    pipe([v["q0"], v["q1"]], support_set=support)
    pipe(v["q2"], support_set=support)
    # the same videos as bytes: same content, so the cache hits
    as_bytes = {name: [Path(p).read_bytes() for p in paths] for name, paths in support.items()}
    pipe(v["q2"], support_set=as_bytes)
    assert batch_sizes == [2, 6, 1, 1]  # queries, support (3 classes x 2 shots) once, then the queries only

    # a changed video is a different support set
    changed = tmp_path / "changed.mp4"
    changed.write_bytes(Path(v["q2"]).read_bytes())
    pipe(v["q0"], support_set={**support, "waving": [v["c0"], str(changed)]})
    assert batch_sizes[-2:] == [1, 6]

    # videos go through the backbone at most `batch_size` at a time, with the same scores
    batch_sizes.clear()
    pipe.clear_cache()
    whole = pipe([v["q0"], v["q1"], v["q2"]], support_set=support)
    monkeypatch.setattr(pipe, "_batch_size", 4)
    pipe.clear_cache()
    chunked = pipe([v["q0"], v["q1"], v["q2"]], support_set=support)
    assert batch_sizes == [3, 6, 3, 4, 2]
    torch.testing.assert_close(as_matrix(chunked, list(support)), as_matrix(whole, list(support)), atol=1e-5, rtol=1e-4)


def test_bytes_and_array_inputs(pipe, direct):
    v, support = videos(), support_set()
    by_path = pipe(v["q1"], support_set=support)
    by_bytes = pipe(Path(v["q1"]).read_bytes(), support_set=support)
    assert by_bytes == by_path
    frames = np.random.default_rng(7).integers(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)
    labels, expected = direct_few_shot_probs(pipe.model, direct, support, [frames])
    torch.testing.assert_close(
        as_matrix([pipe(frames, support_set=support)], labels), expected.float(), atol=1e-5, rtol=1e-4
    )


def test_zero_shot_is_clip_text_video_similarity(pipe, direct):
    processor, tokenizer = direct
    v = videos()
    labels = ["jumping", "running", "waving", "swimming"]
    rankings = pipe([v["q0"], v["q1"]], candidate_labels=labels)
    model = pipe.model
    prompts = tokenizer([f"a photo of {c}" for c in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        video = model.get_video_features(processor([v["q0"], v["q1"]])["pixel_values"]).double().mean(1)
        text = model.get_text_features(**prompts).double()
    cos = (video / video.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    expected = (100.0 * cos).softmax(-1)  # CLIP's trained logit scale
    for ranking in rankings:
        assert {r["mode"] for r in ranking} == {"zero-shot"}
    torch.testing.assert_close(as_matrix(rankings, labels), expected.float(), atol=1e-5, rtol=1e-4)
    # a comma-separated string is the same as the list
    from_string = pipe(v["q0"], candidate_labels=",".join(labels))
    assert [r["label"] for r in from_string] == [r["label"] for r in rankings[0]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, v, s: p(12345, support_set=s), "unknown video type int"),
        (lambda p, v, s: p(v["q0"], support_set={}), "support_set is empty"),
        (lambda p, v, s: p(v["q0"], support_set={**s, "empty class": []}), "class 'empty class' has no videos"),
        (lambda p, v, s: p(v["q0"], support_set={**s, "extra": [v["q1"]]}), "same number of videos"),
        (lambda p, v, s: p(v["q0"]), "give support_set"),
        (lambda p, v, s: p(v["q0"], support_set=s, candidate_labels=["a"]), "not both"),
        (lambda p, v, s: p(v["q0"], support_set={"a": ["/no/such/video.mp4"]}), "/no/such/video.mp4"),
        (lambda p, v, s: p(np.zeros((4, 8, 8, 3), dtype=np.float32), support_set=s), "must be uint8"),
        (lambda p, v, s: p(v["q0"], candidate_labels=["a", "a"]), "duplicates"),
    ],
)
def test_bad_input_raises_a_clear_value_error(pipe, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(pipe, videos(), support_set())


def test_undecodable_query_is_named(pipe, tmp_path):
    broken = tmp_path / "broken_query.mp4"
    broken.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match=r"query 1 .*broken_query\.mp4.*could not decode"):
        pipe([videos()["q0"], str(broken)], support_set=support_set())



@pytest.fixture(scope="module")
def reference_pipe():
    """A `reference`-preset model (the prompt selector samples at evaluation, as the official release did)."""
    from configuration_m2df import M2DFConfig
    from m2df_hf.pipeline_m2df import M2DFFewShotVideoClassificationPipeline
    from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config
    from modeling_m2df import M2DFModel

    torch.manual_seed(0)
    # pps_scale 1 (not 200): with random weights the draw is then far from one-hot, so seeds really differ
    config = M2DFConfig.from_preset("reference", clip_config=tiny_clip_config(), num_frames=NUM_FRAMES, pps_scale=1.0)
    assert config.pps_eval_mode == "sample"
    model = M2DFModel(config).eval()
    processor = M2DFVideoProcessor.from_pretrained(exported_dir())
    return M2DFFewShotVideoClassificationPipeline(
        model=model, feature_extractor=processor, tokenizer=build_tiny_clip_tokenizer(), device="cpu"
    )


def test_sampled_prompt_selector_is_seeded_per_call(reference_pipe, direct):
    """Same inputs and seed -> same scores (default seed 0), equal to the model run under that seed; the caller's
    global RNG is untouched; different seeds really draw different prompts (else the first check proves nothing)."""
    v, support = videos(), support_set()
    queries = [v["q0"], v["q1"], v["q2"], v["a0"], v["b1"]]
    labels = list(support)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    first = as_matrix(reference_pipe(queries, support_set=support), labels)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for _ in range(3):
        torch.rand(7)  # the global stream moves on between calls; the pipeline must not depend on it
        assert torch.equal(as_matrix(reference_pipe(queries, support_set=support), labels), first)
    by_seed = {s: as_matrix(reference_pipe(queries, support_set=support, seed=s), labels) for s in range(6)}
    assert torch.equal(by_seed[0], first)
    assert len({tuple(m.flatten().tolist()) for m in by_seed.values()}) > 1
    for s in (0, 3):
        torch.manual_seed(s)
        _, expected = direct_few_shot_probs(reference_pipe.model, direct, support, queries)
        torch.testing.assert_close(by_seed[s], expected.float(), rtol=1e-5, atol=1e-6)
