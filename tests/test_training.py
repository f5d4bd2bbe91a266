"""train_accelerate.py: end to end, gradient accumulation, kill-and-resume, 2-process DDP, non-finite losses,
and the run config (inheritance, overrides, presets)."""

import importlib.util
import io
import json
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m2df_hf.episodes import model_inputs
from m2df_hf.run_config import load_config
from m2df_hf.synthetic import build_synthetic_dataset_dict, make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def _import_script():
    if "train_accelerate" in sys.modules:
        return sys.modules["train_accelerate"]
    spec = importlib.util.spec_from_file_location("train_accelerate", ROOT / "train_accelerate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_accelerate"] = module
    spec.loader.exec_module(module)
    return module


ta = _import_script()



def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_train")
    # 25 classes -> 16 / 3 / 6 train / val / test classes
    make_synthetic_dataset(root, num_classes=25, videos_per_class=4, num_frames=8, height=32, width=32, seed=1,
                           progress=False)
    return str(root)


def tiny_cfg(out_dir, data_root, *extra):
    overrides = [
        f"run.output_dir={out_dir}", "run.torch_threads=1", "data.source=synthetic", f"data.path={data_root}",
        "processor.num_frames=4", "processor.resize_short_side=32", "processor.crop_size=32", "processor.flip=false",
        "episodes.way=3", "episodes.shot=1", "episodes.train_query_per_class=1",
        "train.num_updates=4", "train.episodes_per_update=2", "train.lr=1e-3", "train.log_every=1",
        "eval.val_every=2", "eval.val_episodes=6", "eval.test_episodes=8", "eval.before_training=true",
        "eval.video_batch_size=8", "checkpoint.every=2", "checkpoint.keep_last=2",
    ]
    return load_config(None, overrides + list(extra))


def run_train(cfg, **kwargs):
    _reset_accelerate()
    return ta.train(cfg, **kwargs)


def checkpoint_weights(out_dir, update):
    return load_file(os.path.join(out_dir, "checkpoints", f"update_{update:08d}", "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    cfg = tiny_cfg(out, data_root)
    return cfg, run_train(cfg), str(out)


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_presets_inherit_and_override():
    cfg = load_config(ROOT / "configs" / "ssv2_small_5shot_vitb16.yaml", ["train.lr=2e-5", "model.config.views=local"])
    assert cfg["episodes"]["shot"] == 5 and cfg["data"]["name"] == "ssv2_small"
    assert cfg["processor"]["flip"] is False  # SSv2: no flip
    assert cfg["train"]["lr"] == 2e-5 and isinstance(cfg["train"]["lr"], float)  # "2e-5" is a str in YAML 1.1
    assert cfg["model"]["config"] == {"views": "local"}
    paper = load_config(ROOT / "configs" / "ucf101_1shot_vitb16.yaml")
    assert (paper["train"]["lr"], paper["train"]["episodes_per_update"], paper["processor"]["num_frames"]) == (1e-5, 16, 8)
    assert (paper["episodes"]["train_query_per_class"], paper["episodes"]["test_query_per_class"]) == (5, 1)
    assert paper["eval"]["test_episodes"] == 10_000 and paper["processor"]["flip"] is True
    for dataset in ("ucf101", "hmdb51", "kinetics100", "ssv2_small", "ssv2_full"):
        for shot in (1, 3, 5):
            cfg = load_config(ROOT / "configs" / f"{dataset}_{shot}shot_vitb16.yaml")
            assert cfg["episodes"]["shot"] == shot and cfg["data"]["name"] == dataset
            assert cfg["model"]["base_model"] == "openai/clip-vit-base-patch16"
            assert cfg["processor"]["flip"] is (not dataset.startswith("ssv2"))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="train.lrate"):
        load_config(None, ["train.lrate=1e-4"])
    with pytest.raises(ValueError, match="episodes.shot"):
        load_config(None, ["episodes.shot=0"])
    with pytest.raises(ValueError, match="KEY=VALUE|section.key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(ValueError, match="otam_bidirection"):  # a misspelt M2DFConfig field
        ta.check_model_overrides(load_config(None, ["model.config.otam_bidirection=false"]))
    ta.check_model_overrides(load_config(None, ["model.config.otam_bidirectional=false"]))


# ---------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------


def test_end_to_end_run_selects_on_val_and_tests_the_best_model(full_run, data_root, tmp_path, capsys):
    cfg, returned, out = full_run
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["config"] == cfg and results["synthetic"] is True
    assert results["task"] == {"dataset": "synthetic", "dataset_id": None, "way": 3, "shot": 1, "query_per_class": 1}
    assert results["model"] == {"preset": "paper", "base_model": None, "num_frames": 4}
    assert set(results["test"]) == {"accuracy", "ci95", "num_episodes", "split", "seed"}
    assert results["test"]["num_episodes"] == 8 and results["before_training"]["num_episodes"] == 8
    history = results["training"]["val_history"]
    assert [h["update"] for h in history] == [2, 4]
    best = max(history, key=lambda h: h["accuracy"])  # first maximum wins (strict improvement)
    assert results["val_best"]["step"] == best["update"] and results["val_best"]["accuracy"] == best["accuracy"]

    # the saved folder is the best-on-val model: the checkpoint of that update, bit for bit
    model_dir = os.path.join(out, "model")
    for name in ("config.json", "model.safetensors", "configuration_m2df.py", "modeling_m2df.py",
                 "preprocessor_config.json", "processing_m2df.py", "tokenizer_config.json", "results.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert "auto_map" in json.load(open(os.path.join(model_dir, "config.json")))
    saved = load_file(os.path.join(model_dir, "model.safetensors"))
    at_best = checkpoint_weights(out, best["update"])
    assert saved.keys() == at_best.keys() and all(torch.equal(saved[k], at_best[k]) for k in saved)

    # `m2df evaluate` on the saved folder (AutoModel + remote code) reproduces the test number exactly
    from m2df_hf.evaluation import add_cli

    ds_dir = tmp_path / "dataset"
    build_synthetic_dataset_dict(data_root).save_to_disk(str(ds_dir))
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--model", model_dir, "--dataset", str(ds_dir), "--episodes", "8",
                              "--way", "3", "--shot", "1", "--seed", "0", "--json"])
    _reset_accelerate()
    capsys.readouterr()
    assert args.func(args) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli["accuracy"] == results["test"]["accuracy"] and cli["ci95"] == results["test"]["ci95"]
    assert cli["backbone_frame_encodings"] == results["test_backbone_frame_encodings"]


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
pipe = pipeline("video-classification", model=sys.argv[1], trust_remote_code=True)
support = json.loads(sys.argv[2])
ranking = pipe(sys.argv[3], support_set=support, top_k=len(support))
print(json.dumps({"pipeline": type(pipe).__name__, "ranking": ranking}))
"""


def test_saved_model_folder_loads_with_the_standard_pipeline_call(full_run, data_root, tmp_path):
    """The folder training saves is Hub-ready: `pipeline(...)` in a fresh process gives the model's own scores."""
    import subprocess

    from m2df_hf.hub import load_components

    _, _, out = full_run
    model_dir = os.path.join(out, "model")
    for name in ("pipeline_m2df.py", "handler.py", "requirements.txt", "README.md"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    test = build_synthetic_dataset_dict(data_root)["test"]
    by_class = {}
    for row in test:
        by_class.setdefault(row["class_name"], []).append(row["video"]["path"])
    names = sorted(by_class)[:3]
    support = {name: [by_class[name][0]] for name in names}
    query = by_class[names[1]][1]
    proc = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, model_dir, json.dumps(support), query],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # cwd: no repo on sys.path
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["pipeline"] == "M2DFFewShotVideoClassificationPipeline"

    # the same scores straight from the model (paper preset: deterministic at eval)
    model, processor, tokenizer = load_components(model_dir)
    with torch.no_grad():
        pixels = torch.cat([torch.as_tensor(processor(v)["pixel_values"]) for v in [*sum(support.values(), []), query]])
        embeds = model.get_video_features(pixels)
        text = tokenizer([model.config.prompt_template.format(n) for n in names], padding=True, return_tensors="pt")
        logits = model(support_video_embeds=embeds[:3], support_labels=torch.arange(3), query_video_embeds=embeds[3:],
                       class_text_embeds=model.get_text_features(**text)).logits
    probs = logits.softmax(-1)[0]
    expected = {names[i]: float(probs[i]) for i in range(3)}
    assert [r["label"] for r in got["ranking"]] == sorted(expected, key=expected.get, reverse=True)
    assert {r["label"]: r["score"] for r in got["ranking"]} == pytest.approx(expected, abs=1e-5)


def test_gradient_accumulation_updates_every_k_episodes(data_root, tmp_path):
    """3 episodes per update == a hand-written loop: mean of 3 episode losses, one Adam step per 3 episodes."""
    from m2df_hf.episodes import EpisodeDataset
    from m2df_hf.evaluation import compute_text_table, split_class_names

    cfg = tiny_cfg(tmp_path / "run", data_root, "train.num_updates=2", "train.episodes_per_update=3",
                   "eval.before_training=false", "eval.test_episodes=2")
    run_train(cfg)
    trained = checkpoint_weights(cfg["run"]["output_dir"], 2)
    optimizer_state = torch.load(os.path.join(cfg["run"]["output_dir"], "checkpoints", "update_00000002",
                                              "optimizer.bin"), weights_only=True)
    steps = {int(s["step"]) for s in optimizer_state["state"].values()}
    assert steps == {2}  # 6 episodes, 2 optimizer steps

    torch.manual_seed(cfg["run"]["seed"])
    model = ta.build_model(cfg)
    tokenizer = ta.build_tokenizer(cfg, str(tmp_path / "tok"))
    train_split = build_synthetic_dataset_dict(data_root)["train"]
    table = compute_text_table(model, tokenizer, split_class_names(train_split))
    episodes = EpisodeDataset(train_split, ta.build_processor(cfg), 3, 1, 1, 6, cfg["run"]["seed"], training=True,
                              flip=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for update in range(2):
        for g in range(3 * update, 3 * update + 3):
            batch = episodes[g]
            torch.manual_seed(ta.episode_seed(cfg["run"]["seed"], g))
            out = model(**model_inputs(batch), class_text_embeds=table[batch["class_ids"]])
            (out.loss / 3).backward()
        optimizer.step()
        optimizer.zero_grad()
    reference = model.state_dict()
    for name, value in trained.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_killed_and_resumed_run_ends_with_identical_weights(full_run, data_root, tmp_path):
    cfg_a, results_a, out_a = full_run
    out_b = tmp_path / "run_b"
    cfg_b = tiny_cfg(out_b, data_root)
    assert run_train(cfg_b, stop_after_update=3) == {"stopped_at_update": 3}  # killed after update 3
    assert sorted(os.listdir(out_b / "checkpoints")) == ["update_00000002"]  # update 3 is lost
    with pytest.raises(ValueError, match="--resume"):
        run_train(cfg_b)  # a fresh start would mix two runs in one folder
    results_b = run_train(cfg_b, resume=True)
    final_a, final_b = checkpoint_weights(out_a, 4), checkpoint_weights(out_b, 4)
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)  # bitwise
    assert results_b["final_weights_fingerprint"] == results_a["final_weights_fingerprint"]
    assert results_b["training"]["val_history"] == results_a["training"]["val_history"]
    assert results_b["test"] == results_a["test"]


def test_nonfinite_loss_skips_the_update_then_aborts(data_root, tmp_path, monkeypatch):
    import modeling_m2df

    original = modeling_m2df.M2DFModel.forward
    poisoned = {"calls": 0, "until": 2}  # the first update's 2 episodes give NaN

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if out.loss is not None:
            poisoned["calls"] += 1
            if poisoned["calls"] <= poisoned["until"]:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(modeling_m2df.M2DFModel, "forward", forward)
    cfg = tiny_cfg(tmp_path / "one", data_root, "train.num_updates=2", "eval.before_training=false", "checkpoint.every=1",
                   "eval.val_every=1", "eval.test_episodes=2")
    results = run_train(cfg)
    assert results["training"]["nonfinite_updates"] == 1
    # update 1 was skipped: the weights after it are the initial ones
    # (parameters; BatchNorm running statistics do move in the forward pass)
    torch.manual_seed(cfg["run"]["seed"])
    initial = dict(ta.build_model(cfg).named_parameters())
    after_first = checkpoint_weights(cfg["run"]["output_dir"], 1)
    after_second = checkpoint_weights(cfg["run"]["output_dir"], 2)
    assert all(torch.equal(after_first[k], initial[k]) for k in initial)
    assert not all(torch.equal(after_second[k], initial[k]) for k in initial)

    poisoned.update(calls=0, until=10**9)
    cfg = tiny_cfg(tmp_path / "two", data_root, "train.max_consecutive_nonfinite=3", "eval.before_training=false")
    with pytest.raises(ta.NonFiniteLossError, match="non-finite in 3 updates in a row"):
        run_train(cfg)


# ---------------------------------------------------------------------------------------------------------------
# 2-process DDP on CPU
# ---------------------------------------------------------------------------------------------------------------


def test_two_process_ddp_matches_one_process(full_run, data_root, tmp_path):
    """Fresh processes (torchrun), not debug_launcher's fork: forking a pytest process that other tests left
    with live threads (a Gradio server, tokenizer pools) can deadlock the children."""
    import socket
    import subprocess

    from m2df_hf.evaluation import evaluate_episodes
    from m2df_hf.processing_m2df import M2DFVideoProcessor

    cfg_1, results_1, out_1 = full_run  # 1 process, 2 episodes per update (2 accumulation steps)
    cfg_2 = tiny_cfg(tmp_path / "ddp", data_root)  # 2 processes x 1 episode per update
    report = tmp_path / "report"
    report.mkdir()
    model_dir = os.path.join(out_1, "model")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg_2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(ROOT / "tests" / "ddp_worker.py"), str(cfg_path), model_dir,
               str(report)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    # both ranks hold identical parameters, and ran as 2 processes
    ranks = [json.load(open(report / f"train_rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["processes"] == ranks[1]["processes"] == 2
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    # ... equal to one process with the same episodes per update, within float tolerance
    # (parameters; BatchNorm running statistics are averaged over ranks, which only approximates 1 process)
    w1, w2 = checkpoint_weights(out_1, 4), checkpoint_weights(str(tmp_path / "ddp"), 4)
    assert w1.keys() == w2.keys()
    parameters = [name for name, _ in ta.build_model(cfg_1).named_parameters()]
    for name in parameters:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(w1[k], checkpoint_weights(out_1, 2)[k]) for k in parameters)  # training moved them

    # distributed evaluation == one process: same predictions, same number of backbone encodings
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    single = evaluate_episodes(model, build_synthetic_dataset_dict(data_root)["test"],
                               M2DFVideoProcessor.from_pretrained(model_dir),
                               tokenizer=AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True), way=3,
                               shot=1, num_episodes=9, seed=7, video_batch_size=3, progress=False)
    for r in (0, 1):
        assert json.load(open(report / f"eval_rank{r}.json")) == {"world": 2,
                                                                   "encodings": single.backbone_frame_encodings}
        np.testing.assert_array_equal(np.load(report / f"eval_rank{r}.npy"), single.predictions)


def test_help_has_examples():
    stdout = io.StringIO()
    with redirect_stdout(stdout), pytest.raises(SystemExit):
        ta.parse_args(["--help"])
    text = stdout.getvalue()
    assert "examples:" in text and "--set train.lr=" in text and "accelerate launch" in text


def test_too_few_classes_fail_before_training(data_root, tmp_path):
    cfg = tiny_cfg(tmp_path / "run", data_root, "episodes.way=5")  # val has 3 classes
    with pytest.raises(ValueError, match="class"):
        run_train(cfg)
    assert not os.path.isdir(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------------------------------------------------------
# Decode failures during training
# ---------------------------------------------------------------------------------------------------------------


def test_decode_failures_are_counted_in_results_and_survive_resume(data_root, tmp_path, caplog):
    """Two broken train videos (zero-byte, truncated): the run completes, and results.json counts exactly the
    drawn slots that hit them (computed here from the sampler's episodes), across a kill and --resume."""
    import logging
    import shutil

    from m2df_hf.episodes import EpisodeSampler

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    train = build_synthetic_dataset_dict(root)["train"]
    labels = np.asarray(train["label"])
    cfg = tiny_cfg(tmp_path / "run", str(root), "eval.before_training=false", "eval.test_episodes=2")
    E, updates = cfg["train"]["episodes_per_update"], cfg["train"]["num_updates"]
    sampler = EpisodeSampler(labels, 3, 1, 1, seed=cfg["run"]["seed"])
    drawn = [np.concatenate([sampler.episode(g).support_indices, sampler.episode(g).query_indices])
             for g in range(updates * E)]
    # the two most drawn rows of two different classes (each class keeps 3 good videos to replace them)
    counts = np.bincount(np.concatenate(drawn), minlength=len(labels))
    order = np.argsort(-counts, kind="stable")
    first = int(order[0])
    second = int(next(r for r in order if labels[r] != labels[first]))
    broken = {first, second}
    Path(train[first]["video"]["path"]).write_bytes(b"")
    path = Path(train[second]["video"]["path"])
    path.write_bytes(path.read_bytes()[:200])
    per_episode = [len(set(d.tolist()) & broken) for d in drawn]
    assert sum(per_episode) >= 2

    assert run_train(cfg, stop_after_update=3) == {"stopped_at_update": 3}
    meta = json.load(open(tmp_path / "run" / "checkpoints" / "update_00000002" / "meta.json"))
    assert meta["decode_failures"] == sum(per_episode[: 2 * E])
    with caplog.at_level(logging.WARNING, logger="train_accelerate"):
        results = run_train(cfg, resume=True)
    assert results["training"]["decode_failures"] == sum(per_episode)
    saved = json.load(open(tmp_path / "run" / "results.json"))
    assert saved["training"]["decode_failures"] == sum(per_episode)
    assert f"{sum(per_episode)} training video(s) failed to decode" in caplog.text
    # tensorboard: the running total, logged every update (the resumed run's event file holds updates 3 and 4)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = {}
    for event_file in (tmp_path / "run" / "logs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if "train/decode_failures" in acc.Tags()["scalars"]:
            logged.update({e.step: e.value for e in acc.Scalars("train/decode_failures")})
    assert logged == {u: sum(per_episode[: u * E]) for u in range(1, updates + 1)}


# ---------------------------------------------------------------------------------------------------------------
# Config values checked before any data or weights load
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("model.config.views=bogus", r"model\.config\.views must be one of"),
    ("model.config.otam_lambda=0", r"model\.config\.otam_lambda"),
    ("model.config.mmfe_num_heads=5", r"model\.config\.mmfe_num_heads \(5\) must divide"),  # tiny CLIP width 32
    ("processor.sampler=bogus", r"processor\.sampler must be one of tsn, linspace_jitter"),
    ("train.lr_scheduler=bogus", r"train\.lr_scheduler must be one of .*cosine"),
    ("train.lr_scheduler=reduce_lr_on_plateau", r"train\.lr_scheduler must be one of"),
    ("train.lr_scheduler=cosine_with_min_lr", r"train\.lr_scheduler='cosine_with_min_lr' cannot be used"),
])
def test_print_config_and_train_reject_bad_values_before_loading_anything(override, message, tmp_path, capsys,
                                                                          monkeypatch):
    assert ta.main(["--set", override, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and re.search(message, err), err
    # train() refuses too, before data (here a path that does not exist) or a model is touched
    monkeypatch.setattr(ta, "load_data", lambda *a: pytest.fail("data loaded before the config was checked"))
    cfg = load_config(None, [f"run.output_dir={tmp_path / 'run'}", "data.path=/nonexistent", override])
    with pytest.raises(ValueError, match=message):
        run_train(cfg)
    assert not (tmp_path / "run").exists()


def test_good_values_and_every_shipped_config_pass_the_early_checks():
    for override in ("model.config.views=local", "processor.sampler=linspace_jitter", "train.lr_scheduler=cosine",
                     "model.config.mmfe_num_heads=4"):
        ta.check_config(load_config(None, [override]))
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        ta.check_config(load_config(path))  # base_model unreachable offline: a placeholder CLIP config is used


def test_text_tower_trainable_follows_freeze_text_encoder(tmp_path):
    """Frozen (the paper): prompts are tabled once; unfrozen: gradients reach the text features."""
    for freeze in (True, False):
        cfg = load_config(None, [f"model.config.freeze_text_encoder={str(freeze).lower()}"])
        model = ta.build_model(cfg)
        assert ta.text_tower_trainable(model, ta.build_tokenizer(cfg, str(tmp_path / "tok"))) is (not freeze)
