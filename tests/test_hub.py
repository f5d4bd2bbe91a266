"""Model card, export, mocked push, offline Hub-id loading and the Inference Endpoints handler."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_helpers import RESULTS, exported_dir, support_set, tiny_model_dir, videos
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl, constants

from m2df_hf import hub

REAL_RUN = {
    "task": {
        "dataset": "ssv2_small", "dataset_id": "org/ssv2-small-fewshot", "way": 5, "shot": 1, "query_per_class": 1
    },
    "model": {"preset": "paper", "base_model": "openai/clip-vit-base-patch16", "num_frames": 8},
    "test": {"accuracy": 55.43, "ci95": 0.41, "num_episodes": 10000, "split": "test", "seed": 0},
    "val_best": {"accuracy": 53.9, "ci95": 0.9, "num_episodes": 1000, "step": 1200},
    "backbone_frame_encodings": 19200,
    "synthetic": False,
    "config": {"lr": 1e-05},
}
EXPORTED_FILES = {
    "README.md",
    "config.json",
    "configuration_m2df.py",
    "handler.py",
    "model.safetensors",
    "modeling_m2df.py",
    "pipeline_m2df.py",
    "preprocessor_config.json",
    "processing_m2df.py",
    "requirements.txt",
    "results.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ------------------------------------------------------------------------------------------------ model card


def test_card_metadata_and_model_index_hold_the_results(tmp_path):
    card_path = hub.write_model_card(tmp_path, REAL_RUN, repo_id="org/clip-m2df-ssv2")
    meta = front_matter(card_path)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "video-classification"
    assert meta["base_model"] == "openai/clip-vit-base-patch16"
    assert meta["datasets"] == ["org/ssv2-small-fewshot"]
    assert meta["license"] == "apache-2.0"
    assert meta["inference"] is False
    assert {"few-shot", "action-recognition", "video", "clip"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "video-classification"
    assert result["dataset"] == {
        "name": "SSv2-Small", "type": "org/ssv2-small-fewshot", "config": "5-way-1-shot", "split": "test"
    }
    (metric,) = result["metrics"]
    assert metric["type"] == "accuracy" and metric["value"] == 55.43
    assert metric["args"] == {"ci95": 0.41, "num_episodes": 10000}
    # huggingface_hub reads the same numbers back
    (evaluation,) = ModelCard.load(card_path).data.eval_results
    assert evaluation.metric_value == 55.43 and evaluation.dataset_name == "SSv2-Small"


def test_card_body_has_the_paper_layout_table_settings_and_honest_limits(tmp_path):
    text = hub.write_model_card(tmp_path, REAL_RUN, repo_id="org/clip-m2df-ssv2").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| backbone | SSv2-Small 5-way 1-shot |"
    assert "| CLIP-ViT-B/16 (this checkpoint) | 55.43 ± 0.41 (n=10,000) |" in table
    assert "| CLIP-ViT-B/16 (paper, reported) | 52.0 |" in table  # METHOD.md 8.3
    assert "| CLIP-RN50 (paper, reported) | 51.6 |" in table
    assert "| backbone frame encodings at test | 19,200 |" in table
    # training also writes the total over all evaluations; the card reports the test run's count
    both_counts = {**REAL_RUN, "backbone_frame_encodings": 25000, "test_backbone_frame_encodings": 19100}
    (tmp_path / "both").mkdir()
    both_card = hub.write_model_card(tmp_path / "both", both_counts).read_text()
    assert "| backbone frame encodings at test | 19,100 |" in both_card
    assert "does not run\ncustom-code models" in text or "does not run custom-code models" in text
    assert 'pipeline("video-classification", model="org/clip-m2df-ssv2", trust_remote_code=True)' in text
    assert "Synthetic demo" not in text
    assert "selected on the **val** split" in text


def test_synthetic_card_says_so_and_lists_every_run_column(tmp_path):
    runs = [RESULTS, {**RESULTS, "task": {**RESULTS["task"], "shot": 1}, "test": {**RESULTS["test"], "accuracy": 60.0}}]
    path = hub.write_model_card(tmp_path, runs)
    text = path.read_text()
    assert "trained on a **synthetic** action dataset" in text
    assert "small, randomly initialised CLIP" in text
    assert "| backbone | Synthetic actions 3-way 1-shot | Synthetic actions 3-way 2-shot |" in text
    assert "| tiny random-init CLIP (this checkpoint) | 60.00 ± 1.83 (n=400) | 71.25 ± 1.83 (n=400) |" in text
    assert "| tiny random-init CLIP (before training) | 34.00 ± 2.00 (n=400) | 34.00 ± 2.00 (n=400) |" in text
    assert "before training, the same test episodes gave 34.00 ± 2.00" in text
    meta = front_matter(path)
    assert "base_model" not in meta and "synthetic" in meta["tags"]
    values = [r["metrics"][0]["value"] for r in meta["model-index"][0]["results"]]
    assert values == [71.25, 60.0]


def test_card_from_a_results_file_and_bad_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(REAL_RUN))
    meta = front_matter(hub.write_model_card(tmp_path, tmp_path / "results.json"))
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 55.43
    with pytest.raises(ValueError, match="no 'test' section"):
        hub.write_model_card(tmp_path, {"task": {}, "model": {}})
    with pytest.raises(ValueError, match="has no 'ci95'"):
        hub.write_model_card(tmp_path, {**REAL_RUN, "test": {"accuracy": 1.0, "num_episodes": 3}})


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_exactly_the_hub_file_set():
    out = exported_dir()
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_m2df.M2DFConfig", "AutoModel": "modeling_m2df.M2DFModel"}
    assert config["custom_pipelines"] == {
        "video-classification": {"impl": "pipeline_m2df.M2DFFewShotVideoClassificationPipeline", "pt": ["AutoModel"]}
    }
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoFeatureExtractor": "processing_m2df.M2DFVideoProcessor"}
    assert json.loads((out / "results.json").read_text()) == RESULTS
    assert front_matter(out / "README.md")["model-index"][0]["results"][0]["metrics"][0]["value"] == 71.25
    assert (out / "pipeline_m2df.py").read_text() == (Path(hub.__file__).parent / "pipeline_m2df.py").read_text()


def test_export_restores_the_builtin_video_classification_task():
    from transformers.pipelines import PIPELINE_REGISTRY

    exported_dir()
    impl = PIPELINE_REGISTRY.supported_tasks["video-classification"]["impl"]
    assert "M2DF" not in str(getattr(impl, "__name__", impl))


def test_export_refuses_a_non_empty_folder_and_an_incomplete_model(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        hub.export_model(tiny_model_dir(), tmp_path / "out")
    (tmp_path / "incomplete").mkdir()
    shutil.copy(tiny_model_dir() / "config.json", tmp_path / "incomplete")
    with pytest.raises(ValueError, match="missing model.safetensors, preprocessor_config.json"):
        hub.export_model(tmp_path / "incomplete", tmp_path / "out2")


# ------------------------------------------------------------------------------------------------ push


class RecordingApi(HfApi):
    """The real ``HfApi.upload_folder`` logic with its network calls (create repo, validate the card's YAML,
    commit) replaced by recorders."""

    def __init__(self):
        super().__init__(token="hf_fake")
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def _validate_yaml(self, content, **kwargs):
        self.calls.append(("validate_yaml", yaml.safe_load(content.split("---\n")[1])["pipeline_tag"]))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}",
            commit_message=kwargs.get("commit_message"),
            commit_description="",
            oid="a" * 40,
        )


def test_push_uploads_exactly_the_exported_files(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)  # single-commit upload path
    folder = tmp_path / "hub"
    shutil.copytree(exported_dir(), folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"\0")
    api = RecordingApi()
    info = hub.push_folder(folder, "org/clip-m2df", api=api, private=True)
    assert info.oid == "a" * 40
    (create, validate, commit) = api.calls
    assert create == ("create_repo", "org/clip-m2df", {"repo_type": "model", "private": True, "exist_ok": True})
    assert validate == ("validate_yaml", "video-classification")
    assert commit[:2] == ("create_commit", "org/clip-m2df")
    assert set(commit[2]) == EXPORTED_FILES


def test_push_refuses_an_incomplete_folder_before_any_hub_call(tmp_path):
    api = RecordingApi()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="missing model.safetensors"):
        hub.push_folder(tmp_path, "org/x", api=api)
    with pytest.raises(ValueError, match="org/name"):
        hub.push_folder(exported_dir(), "no-namespace", api=api)
    assert api.calls == []


# ------------------------------------------------------------------------------------------------ offline Hub id


HUB_ID_SCRIPT = """
import json, sys
import torch
from transformers import AutoModel, pipeline

model = AutoModel.from_pretrained("org/clip-m2df", trust_remote_code=True).eval()
pixels = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    features = model.get_video_features(pixels)
pipe = pipeline("video-classification", model="org/clip-m2df", trust_remote_code=True)
query, support = json.loads(sys.argv[1])
print(json.dumps({
    "modules": [type(model).__module__, type(pipe).__module__, type(pipe.feature_extractor).__module__],
    "m2df_hf_imported": "m2df_hf" in sys.modules,
    "features": features.tolist(),
    "ranking": pipe(query, support_set=support),
}))
"""


def test_hub_id_loads_offline_from_the_cache(tmp_path):
    """A Hub id resolved from a cache snapshot, in a fresh process where this package is not imported, so that the
    remote code (not the locally registered classes) is what runs."""
    from transformers import pipeline

    from modeling_m2df import M2DFModel

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--org--clip-m2df"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(exported_dir(), repo / "snapshots" / sha, dirs_exist_ok=True)

    query, support = videos()["q0"], support_set()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=os.environ["HF_HOME"])
    done = subprocess.run(
        [sys.executable, "-c", HUB_ID_SCRIPT, json.dumps([query, support])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["m2df_hf_imported"]
    for module in out["modules"]:
        assert module.startswith("transformers_modules.org.clip_hyphen_m2df."), module

    local = M2DFModel.from_pretrained(tiny_model_dir()).eval()
    pixels = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out["features"]), local.get_video_features(pixels))
    expected = pipeline("video-classification", model=str(exported_dir()), trust_remote_code=True)(
        query, support_set=support
    )
    assert [r["label"] for r in out["ranking"]] == [r["label"] for r in expected]
    torch.testing.assert_close(
        torch.tensor([r["score"] for r in out["ranking"]]), torch.tensor([r["score"] for r in expected])
    )


# ------------------------------------------------------------------------------------------------ endpoint handler


def load_handler(folder: Path):
    spec = importlib.util.spec_from_file_location("m2df_test_handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(path=str(folder))


def b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_endpoint_handler_answers_base64_requests():
    from transformers import pipeline

    handler = load_handler(exported_dir())
    v, support = videos(), support_set()
    request = {
        "inputs": {
            "query": [b64(v["q0"]), "data:video/mp4;base64," + b64(v["q1"])],
            "support_set": {name: [b64(p) for p in paths] for name, paths in support.items()},
            "top_k": 2,
        }
    }
    response = handler(request)
    expected = pipeline("video-classification", model=str(exported_dir()), trust_remote_code=True)(
        [v["q0"], v["q1"]], support_set=support, top_k=2
    )
    assert response == expected
    json.dumps(response)  # the response is JSON-serialisable

    zero_shot = handler({"inputs": {"query": b64(v["q0"]), "candidate_labels": ["jumping", "running"]}})
    assert [r["mode"] for r in zero_shot] == ["zero-shot", "zero-shot"]

    with pytest.raises(ValueError, match="support video 0 of class 'running': not valid base64"):
        handler({"inputs": {"query": b64(v["q0"]), "support_set": {"jumping": [b64(v["a0"])], "running": ["@@"]}}})
