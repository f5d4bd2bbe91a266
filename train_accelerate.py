"""Episodic training of CLIP-M2DF with Accelerate: one CPU, one GPU, or many GPUs and nodes.

    python train_accelerate.py                                    # the demo (configs/demo.yaml), ~minutes on CPU
    python train_accelerate.py --config configs/ssv2_small_1shot_vitb16.yaml --set data.path=hf/ssv2_small
    accelerate launch --multi_gpu --num_processes 8 train_accelerate.py --config configs/ucf101_5shot_vitb16.yaml
    python train_accelerate.py --config ... --resume              # continue from the latest checkpoint, exactly

Flow: data (synthetic set made if absent, or a dataset built by ``m2df_hf.data``) -> processor -> model
(random-init small CLIP, or ``M2DFModel.from_clip``) -> [optional test before training] -> updates of
``train.episodes_per_update`` episodes, val every ``eval.val_every`` updates, best-on-val model saved with
``save_pretrained`` -> the test split, once, on the best model -> ``results.json`` and the model card.

Reproducibility: training episode ``g`` (global index) is a pure function of ``(seed, g)``, including its
augmentation and the torch RNG used by dropout / PPS sampling, which is re-seeded from ``(seed, g)`` before
each episode. Update ``u`` consumes episodes ``u*E .. u*E+E-1`` (E episodes per update) whatever the number
of processes, so 1 process with E accumulation steps and P processes with E/P each train on the same
episodes, and a resumed run repeats exactly what the uninterrupted run does. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

import torch

from m2df_hf.hub import save_hub_folder, write_model_card
from m2df_hf.run_config import dump_config, load_config

logger = logging.getLogger("train_accelerate")

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_CONFIG = os.path.join(HERE, "configs", "demo.yaml")


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite for too many updates in a row."""


# ------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------


def episode_seed(seed: int, global_episode: int) -> int:
    """Torch seed for training episode ``global_episode`` (dropout, PPS sampling): same on 1 or N processes."""
    return (seed * 1_000_003 + global_episode * 7_919 + 17) % (2**63 - 1)


def update_episodes(update: int, episodes_per_update: int, rank: int, world: int) -> list[int]:
    """Global episode indices that ``rank`` processes in ``update``, in micro-step order.

    Update ``u`` covers ``u*E .. u*E+E-1``; micro-step ``m`` of rank ``r`` takes ``u*E + m*P + r``.
    """
    return [update * episodes_per_update + m * world + rank for m in range(episodes_per_update // world)]


def load_data(cfg: dict, accelerator):
    """The ``DatasetDict`` named by ``cfg['data']``; the synthetic set is generated (main process) if absent."""
    from m2df_hf.evaluation import open_dataset

    data = cfg["data"]
    if data["source"] == "synthetic":
        from m2df_hf.synthetic import build_synthetic_dataset_dict, make_synthetic_dataset

        root = data["path"]
        if not os.path.isfile(os.path.join(root, "classes.json")):
            if accelerator.is_main_process:
                logger.info("making the synthetic set under %s", root)
                make_synthetic_dataset(root, progress=accelerator.is_local_main_process, **data["synthetic"])
            accelerator.wait_for_everyone()
        elif data["synthetic"]:
            with open(os.path.join(root, "synthetic.json")) as f:
                made = json.load(f)
            differ = {k: (made.get(k), v) for k, v in data["synthetic"].items() if made.get(k) != v}
            if differ:
                raise ValueError(f"the synthetic set at {root} was made with other settings {differ} "
                                 f"(existing, requested); delete it or point data.path elsewhere")
        return build_synthetic_dataset_dict(root)
    return open_dataset(data["path"], data["source"])


def build_processor(cfg: dict):
    from m2df_hf.processing_m2df import M2DFVideoProcessor

    p = cfg["processor"]
    overrides = {k: p[k] for k in ("num_frames", "resize_short_side", "crop_size", "sampler", "do_normalize",
                                   "image_mean", "image_std") if p.get(k) is not None}
    overrides["do_flip"] = bool(p["flip"])
    # the reference presets read videos as the release does (linspace sampling, no normalisation)
    preset = "reference" if cfg["model"]["preset"].startswith("reference") else "paper"
    return M2DFVideoProcessor.from_preset(preset, **overrides)


def model_overrides(cfg: dict) -> dict:
    """``M2DFConfig`` fields from ``model.config``; ``num_frames`` defaults to the processor's."""
    overrides = dict(cfg["model"]["config"])
    overrides.setdefault("num_frames", cfg["processor"]["num_frames"])
    return overrides


def check_model_overrides(cfg: dict) -> None:
    """``model.config`` keys must be ``M2DFConfig`` fields (a config would silently keep a misspelt one)."""
    from configuration_m2df import M2DFConfig

    fields = M2DFConfig.field_names()
    unknown = sorted(set(cfg["model"]["config"]) - fields)
    if unknown:
        raise ValueError(f"model.config has unknown M2DFConfig field(s) {unknown}; known: {', '.join(sorted(fields))}")


def _placeholder_clip_config(cfg: dict):
    """A CLIP config to validate ``model.config`` against, without weights.

    The base model's ``config.json`` when it can be read (cached, local, or online); otherwise a tiny config
    sized so that the two CLIP-dependent checks (``mmfe_num_heads`` divides the width,
    ``trainable_vision_layers`` fits the encoder) pass: model building checks those against the real CLIP.
    """
    from m2df_hf.tokenization import tiny_clip_config

    m = cfg["model"]
    if not m["base_model"]:
        try:
            return tiny_clip_config(**m["clip_config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"model.clip_config: {err}") from None
    from transformers import CLIPConfig

    try:
        return CLIPConfig.from_pretrained(m["base_model"])
    except OSError:  # not downloaded yet, or offline
        heads, layers = m["config"].get("mmfe_num_heads"), m["config"].get("trainable_vision_layers")
        heads = heads if isinstance(heads, int) and heads > 0 else 1
        layers = layers if isinstance(layers, int) and layers > 0 else 2
        return tiny_clip_config(projection_dim=32 * heads, num_hidden_layers=layers)


def check_config(cfg: dict) -> None:
    """Reject bad ``model.config``, ``processor`` and ``train.lr_scheduler`` values before any data or weights
    load (``load_config`` checks the rest): the config, processor and scheduler are built once, cheaply."""
    from transformers import SchedulerType, get_scheduler

    from configuration_m2df import M2DFConfig
    from m2df_hf.processing_m2df import SAMPLERS

    check_model_overrides(cfg)
    overrides = model_overrides(cfg)
    clip_config = _placeholder_clip_config(cfg)
    try:
        M2DFConfig.from_preset(cfg["model"]["preset"], clip_config=clip_config, **overrides)
    except (TypeError, ValueError) as err:  # "M2DFConfig.views must be ..." -> "model.config.views must be ..."
        raise ValueError(f"model.config (preset {cfg['model']['preset']!r}): "
                         f"{str(err).replace('M2DFConfig.', 'model.config.')}") from None

    sampler = cfg["processor"]["sampler"]
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"processor.sampler must be one of {', '.join(SAMPLERS)} or null, got {sampler!r}")
    try:
        build_processor(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"processor: {err}") from None

    tr = cfg["train"]
    # reduce_lr_on_plateau steps on a metric; the loop steps the schedule once per update
    names = [s.value for s in SchedulerType if s.value != "reduce_lr_on_plateau"]
    if tr["lr_scheduler"] not in names:
        raise ValueError(f"train.lr_scheduler must be one of {', '.join(names)}; got {tr['lr_scheduler']!r}")
    if not isinstance(tr["warmup_updates"], int) or tr["warmup_updates"] < 0:
        raise ValueError(f"train.warmup_updates must be an integer >= 0, got {tr['warmup_updates']!r}")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:  # some schedules need more arguments (cosine_with_min_lr: min_lr) than the loop gives
        get_scheduler(tr["lr_scheduler"], optimizer, num_warmup_steps=tr["warmup_updates"],
                      num_training_steps=tr["num_updates"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"train.lr_scheduler={tr['lr_scheduler']!r} cannot be used here: {err}") from None


def build_model(cfg: dict):
    """``M2DFModel``: from a CLIP checkpoint (``model.base_model``) or a random-init CLIP from config."""
    from configuration_m2df import M2DFConfig
    from modeling_m2df import M2DFModel

    m = cfg["model"]
    overrides = model_overrides(cfg)
    if m["base_model"]:
        return M2DFModel.from_clip(m["base_model"], preset=m["preset"], **overrides)
    from m2df_hf.tokenization import tiny_clip_config

    config = M2DFConfig.from_preset(m["preset"], clip_config=tiny_clip_config(**m["clip_config"]), **overrides)
    return M2DFModel(config)


def build_tokenizer(cfg: dict, save_dir: str):
    m = cfg["model"]
    source = m["tokenizer"] or m["base_model"]
    if source:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    from m2df_hf.tokenization import build_tiny_clip_tokenizer

    return build_tiny_clip_tokenizer(save_dir)


def text_tower_trainable(model, tokenizer) -> bool:
    """True when gradients reach the text features (then prompts are encoded per episode, not tabled)."""
    tok = tokenizer(["a photo of x"], return_tensors="pt")
    device = next(model.parameters()).device
    with torch.enable_grad():
        out = model.get_text_features(input_ids=tok["input_ids"].to(device),
                                      attention_mask=tok["attention_mask"].to(device))
    return bool(out.requires_grad)  # get_text_features returns the [C, D] tensor (the model contract)


class EpisodeStream(torch.utils.data.Dataset):
    """This rank's training episodes from ``first_update`` on: item ``j`` is one decoded episode."""

    def __init__(self, episodes, first_update: int, num_updates: int, episodes_per_update: int, rank: int,
                 world: int):
        self.episodes = episodes
        self.indices = [g for u in range(first_update, num_updates)
                        for g in update_episodes(u, episodes_per_update, rank, world)]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        g = self.indices[j]
        item = self.episodes[g]
        item = dict(item)
        item["global_episode"] = g
        return item


def average_buffers(model, accelerator) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the processes after each update.

    DDP broadcasts rank 0's buffers at every forward, so without this the saved statistics would only have
    seen rank 0's episodes, and ranks would end with different buffers.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(accelerator.reduce(buffer.detach().clone(), reduction="mean"))


def save_model_folder(model, processor, tokenizer, out_dir: str, accelerator) -> None:
    """The Hub-ready folder, written by the same code as ``m2df export`` (``m2df_hf.hub.save_hub_folder``): weights,
    remote code, the pipeline (``custom_pipelines``), processor, tokenizer, ``handler.py``; the card comes last."""
    if accelerator.is_main_process:
        save_hub_folder(accelerator.unwrap_model(model), processor, tokenizer, out_dir)


def load_weights_from_folder(model, folder: str) -> None:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors") and f.startswith("model"))
    if not files:
        raise ValueError(f"no model*.safetensors in {folder}")
    state = {}
    for f in files:
        state.update(load_file(os.path.join(folder, f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"best model in {folder} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def flat_hparams(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------


def list_checkpoints(ckpt_root: str) -> list[str]:
    if not os.path.isdir(ckpt_root):
        return []
    done = [d for d in os.listdir(ckpt_root) if d.startswith("update_")
            and os.path.isfile(os.path.join(ckpt_root, d, "meta.json"))]
    return [os.path.join(ckpt_root, d) for d in sorted(done)]


def save_checkpoint(accelerator, ckpt_root: str, update: int, meta: dict, keep_last: int) -> str:
    """``save_state`` into a temporary folder, then rename: a run killed mid-save leaves no half checkpoint."""
    final = os.path.join(ckpt_root, f"update_{update:08d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(os.path.join(tmp, "meta.json"), meta)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------


def train(cfg: dict, resume: bool = False, stop_after_update: int | None = None) -> dict:
    """Run the whole flow for ``cfg``; returns the results dict (also written to ``results.json``).

    ``stop_after_update`` ends the run right after that update (and its checkpoint, if one is due), as a
    kill would; used by the resume tests. The returned dict (not the file) also holds this process's
    ``final_weights_fingerprint`` (weights after the last update, before the best model is reloaded).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
    from tqdm.auto import tqdm

    from m2df_hf.episodes import EpisodeDataset, EpisodeSampler, model_inputs
    from m2df_hf.evaluation import (FeatureCache, class_prompts, compute_text_table, evaluate_episodes, get_split,
                                    model_fingerprint, split_class_names)

    run, tr, ev, ep = cfg["run"], cfg["train"], cfg["eval"], cfg["episodes"]
    check_config(cfg)
    if run["torch_threads"]:
        torch.set_num_threads(int(run["torch_threads"]))
    out_dir = os.path.abspath(run["output_dir"])
    model_dir = os.path.join(out_dir, "model")
    ckpt_root = os.path.join(out_dir, "checkpoints")
    trackers = []
    if cfg["log"]["tensorboard"]:
        try:
            import tensorboard  # noqa: F401

            trackers = ["tensorboard"]
        except ImportError:
            logger.warning("tensorboard is not installed (pip install tensorboard): no event logs")
    E = tr["episodes_per_update"]
    world = PartialState().num_processes
    if E % world:
        raise ValueError(f"train.episodes_per_update={E} must be a multiple of the number of processes ({world})")
    accum = E // world  # accumulation steps per process: the update always averages E episodes
    accelerator = Accelerator(
        gradient_accumulation_steps=accum,
        mixed_precision=tr["mixed_precision"],
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=bool(tr["find_unused_parameters"]))],
    )
    rank = accelerator.process_index
    main = accelerator.is_main_process
    if main:
        os.makedirs(out_dir, exist_ok=True)
        if not resume and list_checkpoints(ckpt_root):
            raise ValueError(f"{out_dir} already holds checkpoints: pass --resume to continue that run, or choose "
                             f"another run.output_dir")
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(dump_config(cfg))

    # ---- data, processor, model, tokenizer -------------------------------------------------------------
    dsd = load_data(cfg, accelerator)
    splits = {name: get_split(dsd, cfg["data"][f"{name}_split"]) for name in ("train", "val", "test")}
    for name in ("val", "test"):  # too few classes: ValueError now, not after training
        EpisodeSampler(splits[name]["label"], ep["way"], ep["shot"], ep["test_query_per_class"])
    processor = build_processor(cfg)
    torch.manual_seed(run["seed"])  # model initialisation: identical on every rank
    model = build_model(cfg)
    tokenizer = build_tokenizer(cfg, tempfile.mkdtemp(prefix="m2df_tokenizer_"))  # saved with the model later
    if tr["activation_checkpointing"]:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.to(accelerator.device)
    text_trainable = text_tower_trainable(model, tokenizer)
    class_names = {name: split_class_names(split) for name, split in splits.items()}
    tables = {}
    if not text_trainable:  # frozen text tower: each split's prompts are encoded once (METHOD.md 2.1)
        for name, names in class_names.items():
            tables[name] = compute_text_table(model, tokenizer, names).to(accelerator.device)
    train_names = class_names["train"]
    text_loss = float(getattr(model.config, "text_loss_weight", 0.0)) > 0

    episodes = EpisodeDataset(splits["train"], processor, ep["way"], ep["shot"], ep["train_query_per_class"],
                              tr["num_updates"] * E, run["seed"], training=True, flip=cfg["processor"]["flip"],
                              rank=0, world_size=1)

    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if tr["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=float(tr["lr"]), betas=tuple(tr["betas"]), eps=float(tr["eps"]),
                        weight_decay=float(tr["weight_decay"]))
    from transformers import get_scheduler

    scheduler = get_scheduler(tr["lr_scheduler"], optimizer, num_warmup_steps=tr["warmup_updates"],
                              num_training_steps=tr["num_updates"])
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.init_trackers(cfg["log"]["project_name"], config=flat_hparams(cfg))

    def evaluate(split_name: str):
        """The protocol on ``val`` or ``test``: its episode count and seed from ``eval``, 1 query per class."""
        return evaluate_episodes(
            unwrapped, splits[split_name], processor, text_table=tables.get(split_name), tokenizer=tokenizer,
            way=ep["way"], shot=ep["shot"], query_per_class=ep["test_query_per_class"],
            num_episodes=ev[f"{split_name}_episodes"], seed=ev[f"{split_name}_seed"],
            video_batch_size=ev["video_batch_size"], num_workers=cfg["data"]["num_workers"],
            cache=FeatureCache(ev["cache_dir"]), accelerator=accelerator,
            desc=f"{split_name} episodes",
        )

    # ---- state: fresh or resumed ---------------------------------------------------------------------------
    state = {"update": 0, "episodes": 0, "best_val": None, "nonfinite_updates": 0, "consecutive_nonfinite": 0,
             "before_training": None, "val_history": [], "backbone_frame_encodings": 0, "decode_failures": 0}
    if resume:
        ckpts = list_checkpoints(ckpt_root)
        if not ckpts:
            raise ValueError(f"--resume: no checkpoint under {ckpt_root}")
        accelerator.load_state(ckpts[-1])
        with open(os.path.join(ckpts[-1], "meta.json")) as f:
            state = json.load(f)
        state.setdefault("decode_failures", 0)  # checkpoints written before the counter existed
        changed = config_differences(state.pop("config", cfg), cfg)
        if changed and main:
            logger.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(changed))
        if main:
            logger.info("resumed from %s (update %d)", ckpts[-1], state["update"])

    if ev["before_training"] and state["before_training"] is None:
        before = evaluate("test")
        state["before_training"] = {"accuracy": before.accuracy, "ci95": before.ci95,
                                    "num_episodes": before.num_episodes}
        state["backbone_frame_encodings"] += before.backbone_frame_encodings
        accelerator.log({"test/before_training_accuracy": before.accuracy}, step=0)

    # ---- the loop -----------------------------------------------------------------------------------------
    stream = EpisodeStream(episodes, state["update"], tr["num_updates"], E, rank, world)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, shuffle=False, num_workers=cfg["data"]["num_workers"])
    batches = iter(loader)
    bar = tqdm(total=tr["num_updates"], initial=state["update"], desc="updates", disable=not accelerator.is_local_main_process)
    model.train()
    while state["update"] < tr["num_updates"]:
        update = state["update"]
        t0 = time.time()
        # loss, main, distillation, text, non-finite episodes, videos replaced after a decode failure
        sums = torch.zeros(6, device=accelerator.device)
        for micro in range(accum):
            batch = next(batches)
            torch.manual_seed(episode_seed(run["seed"], batch["global_episode"]))
            inputs = {k: v.to(accelerator.device) for k, v in model_inputs(batch).items()}
            class_ids = torch.as_tensor(batch["class_ids"], dtype=torch.long, device=accelerator.device)
            if text_trainable:
                tok = tokenizer(class_prompts(model.config, [train_names[int(c)] for c in class_ids]),
                                padding=True, return_tensors="pt")
                inputs["class_input_ids"] = tok["input_ids"].to(accelerator.device)
                inputs["class_attention_mask"] = tok["attention_mask"].to(accelerator.device)
            else:
                inputs["class_text_embeds"] = tables["train"][class_ids]
            if text_loss:  # auxiliary text CE over all train classes (weight 0 in the paper and the release)
                inputs["split_text_embeds"] = tables["train"] if not text_trainable else compute_text_table(
                    unwrapped, tokenizer, train_names, grad=True)
                inputs["support_class_ids"] = class_ids[inputs["support_labels"]]
                inputs["query_class_ids"] = class_ids[inputs["query_labels"]]
            with accelerator.accumulate(model):
                out = model(**inputs)
                loss = out.loss
                finite = bool(torch.isfinite(loss.detach()))
                accelerator.backward(loss)  # also when non-finite: DDP ranks must stay in step; skipped below
                parts = [loss, getattr(out, "main_loss", None), getattr(out, "distillation_loss", None),
                         getattr(out, "text_loss", None)]
                for i, part in enumerate(parts):
                    if part is not None and finite:
                        sums[i] += part.detach().float()
                sums[4] += 0.0 if finite else 1.0
                sums[5] += float(batch["num_decode_failures"])
                if accelerator.sync_gradients:
                    totals = accelerator.reduce(sums, reduction="sum")
                    if totals[4] > 0:  # some episode of this update (on any rank) was non-finite: skip it
                        optimizer.zero_grad()
                    else:
                        if tr["max_grad_norm"]:
                            accelerator.clip_grad_norm_(model.parameters(), float(tr["max_grad_norm"]))
                        optimizer.step()
                        optimizer.zero_grad()
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation out of step: the update did not end on a sync step")
        if world > 1:
            average_buffers(unwrapped, accelerator)
        with warnings.catch_warnings():  # a skipped update still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            scheduler.step()
        state["update"] = update + 1
        state["episodes"] = state["update"] * E
        state["decode_failures"] += int(totals[5])
        skipped = bool(totals[4] > 0)
        if skipped:
            state["nonfinite_updates"] += 1
            state["consecutive_nonfinite"] += 1
            if main:
                logger.warning("update %d: non-finite loss in %d episode(s); update skipped (%d so far)",
                               state["update"], int(totals[4]), state["nonfinite_updates"])
            if state["consecutive_nonfinite"] >= tr["max_consecutive_nonfinite"]:
                raise NonFiniteLossError(
                    f"the loss was non-finite in {state['consecutive_nonfinite']} updates in a row (last: update "
                    f"{state['update']}); the run is diverging. Lower train.lr, set train.max_grad_norm, or use "
                    f"train.mixed_precision=bf16/no instead of fp16; resume from an earlier checkpoint with --resume."
                )
        else:
            state["consecutive_nonfinite"] = 0
        good = max(E - int(totals[4]), 1)
        eps_per_s = E / max(time.time() - t0, 1e-9)
        if state["update"] % tr["log_every"] == 0 or state["update"] == tr["num_updates"]:
            accelerator.log({"train/loss": float(totals[0]) / good, "train/main_loss": float(totals[1]) / good,
                             "train/distillation_loss": float(totals[2]) / good,
                             "train/text_loss": float(totals[3]) / good, "train/lr": scheduler.get_last_lr()[0],
                             "train/episodes_per_s": eps_per_s, "train/nonfinite_updates": state["nonfinite_updates"],
                             "train/decode_failures": state["decode_failures"]},
                            step=state["update"])
        bar.set_postfix(loss=f"{float(totals[0]) / good:.3f}", eps=f"{eps_per_s:.1f}")
        bar.update(1)

        # ---- val, best model, checkpoint -------------------------------------------------------------------
        last = state["update"] == tr["num_updates"]
        if state["update"] % ev["val_every"] == 0 or last:
            val = evaluate("val")
            model.train()
            state["backbone_frame_encodings"] += val.backbone_frame_encodings
            state["val_history"].append({"update": state["update"], "accuracy": val.accuracy, "ci95": val.ci95})
            accelerator.log({"val/accuracy": val.accuracy, "val/ci95": val.ci95,
                             "val/backbone_frame_encodings": val.backbone_frame_encodings}, step=state["update"])
            if state["best_val"] is None or val.accuracy > state["best_val"]["accuracy"]:
                state["best_val"] = {"accuracy": val.accuracy, "ci95": val.ci95, "num_episodes": val.num_episodes,
                                     "step": state["update"]}
                save_model_folder(model, processor, tokenizer, model_dir, accelerator)
                accelerator.wait_for_everyone()
            if main:
                bar.write(f"update {state['update']}: val {val.accuracy:.2f} +- {val.ci95:.2f} "
                          f"(best {state['best_val']['accuracy']:.2f} at update {state['best_val']['step']})")
        if state["update"] % cfg["checkpoint"]["every"] == 0 or last:
            save_checkpoint(accelerator, ckpt_root, state["update"], {**state, "config": cfg},
                            cfg["checkpoint"]["keep_last"])
        if stop_after_update is not None and state["update"] >= stop_after_update and not last:
            bar.close()
            accelerator.end_training()
            return {"stopped_at_update": state["update"]}
    bar.close()
    if state["decode_failures"] and main:
        logger.warning("%d training video(s) failed to decode and were replaced by same-class videos (each file is "
                       "named in the warnings above); check or rebuild the dataset", state["decode_failures"])
    final_fingerprint = model_fingerprint(unwrapped)

    # ---- the test split, once, on the best-on-val model --------------------------------------------------------
    load_weights_from_folder(unwrapped, model_dir)
    test = evaluate("test")
    state["backbone_frame_encodings"] += test.backbone_frame_encodings
    accelerator.log({"test/accuracy": test.accuracy, "test/ci95": test.ci95}, step=state["update"])
    results = {
        "task": {"dataset": cfg["data"]["name"], "dataset_id": cfg["data"]["dataset_id"], "way": ep["way"],
                 "shot": ep["shot"], "query_per_class": ep["test_query_per_class"]},
        "model": {"preset": cfg["model"]["preset"], "base_model": cfg["model"]["base_model"],
                  "num_frames": unwrapped.config.num_frames},
        "test": {"accuracy": test.accuracy, "ci95": test.ci95, "num_episodes": test.num_episodes,
                 "split": cfg["data"]["test_split"], "seed": ev["test_seed"]},
        "val_best": {k: state["best_val"][k] for k in ("accuracy", "ci95", "num_episodes", "step")},
        "backbone_frame_encodings": state["backbone_frame_encodings"],
        "test_backbone_frame_encodings": test.backbone_frame_encodings,
        "synthetic": cfg["data"]["source"] == "synthetic",
        "training": {"updates": state["update"], "episodes": state["episodes"], "episodes_per_update": E,
                     "num_processes": world, "nonfinite_updates": state["nonfinite_updates"],
                     "decode_failures": state["decode_failures"], "val_history": state["val_history"]},
        "config": cfg,
    }
    if state["before_training"] is not None:
        results["before_training"] = state["before_training"]
    if main:
        write_json(os.path.join(out_dir, "results.json"), results)
        write_json(os.path.join(model_dir, "results.json"), results)
        write_model_card(model_dir, results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**results, "final_weights_fingerprint": final_fingerprint}


# ------------------------------------------------------------------------------------------------------------
# The demo's extra steps and report
# ------------------------------------------------------------------------------------------------------------


def demo_reload_and_classify(cfg: dict, results: dict) -> dict:
    """Reload the saved folder through the Auto classes (remote code) and classify one test query."""
    from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

    from m2df_hf.episodes import EpisodeSampler
    from m2df_hf.evaluation import class_prompts, get_split, open_dataset, split_class_names

    model_dir = os.path.join(os.path.abspath(cfg["run"]["output_dir"]), "model")
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)  # folder has auto_map: no prompt
    split = get_split(open_dataset(cfg["data"]["path"], cfg["data"]["source"]), cfg["data"]["test_split"])
    names = split_class_names(split)
    ep = cfg["episodes"]
    episode = EpisodeSampler(split["label"], way=ep["way"], shot=ep["shot"], query_per_class=1,
                             seed=cfg["eval"]["test_seed"]).episode(0)
    support = [split[int(i)]["video"] for i in episode.support_indices]
    query_index = int(episode.query_indices[0])
    class_names = [names[int(c)] for c in episode.class_ids]
    prompts = tokenizer(class_prompts(model.config, class_names), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(support_pixel_values=processor(support)["pixel_values"],
                    support_labels=torch.as_tensor(episode.support_labels, dtype=torch.long),
                    query_pixel_values=processor([split[query_index]["video"]])["pixel_values"],
                    class_input_ids=prompts["input_ids"], class_attention_mask=prompts["attention_mask"])
    probs = out.logits.softmax(-1)[0]
    best = int(probs.argmax())
    return {"query": split[query_index]["video_id"] if "video_id" in split.column_names else query_index,
            "true": names[int(split[query_index]["label"])], "predicted": class_names[best],
            "score": float(probs[best]), "candidates": class_names}


def print_report(cfg: dict, results: dict, demo: dict | None, seconds: float) -> None:
    out_dir = os.path.abspath(cfg["run"]["output_dir"])
    t = results["test"]
    rows = []
    if "before_training" in results:
        b = results["before_training"]
        rows.append(("test, before training", b["accuracy"], b["ci95"], b["num_episodes"]))
    v = results["val_best"]
    rows.append((f"val, best (update {v['step']})", v["accuracy"], v["ci95"], v["num_episodes"]))
    rows.append(("test, best-on-val model", t["accuracy"], t["ci95"], t["num_episodes"]))
    task = results["task"]
    print(f"\n{task['way']}-way {task['shot']}-shot on {task['dataset']} "
          f"({results['training']['episodes']} training episodes, {seconds:.0f} s)")
    print(f"{'':32s} {'accuracy %':>10s} {'CI95':>6s} {'episodes':>9s}")
    for name, acc, ci, n in rows:
        print(f"{name:32s} {acc:10.2f} {ci:6.2f} {n:9d}")
    if "before_training" in results:
        b = results["before_training"]
        gain = t["accuracy"] - b["accuracy"]
        verdict = "beyond" if gain > t["ci95"] + b["ci95"] else "NOT beyond"
        print(f"gain {gain:+.2f} points, {verdict} both CIs together ({t['ci95'] + b['ci95']:.2f})")
    print(f"backbone frame encodings (all evaluations): {results['backbone_frame_encodings']}")
    if demo is not None:
        print(f"reloaded with AutoModel(trust_remote_code=True); query {demo['query']!r} (true: {demo['true']!r}) "
              f"-> {demo['predicted']!r} (p={demo['score']:.2f})")
    print(f"outputs: model folder {os.path.join(out_dir, 'model')}, results {os.path.join(out_dir, 'results.json')}, "
          f"tensorboard {os.path.join(out_dir, 'logs')}, checkpoints {os.path.join(out_dir, 'checkpoints')}")


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train CLIP-M2DF episodically with Accelerate; with no arguments, run the demo "
                    "(configs/demo.yaml: synthetic videos, small random-init CLIP, CPU, a few minutes).",
        epilog="examples:\n"
               "  python train_accelerate.py                                   # the demo\n"
               "  python train_accelerate.py --config configs/hmdb51_5shot_vitb16.yaml --set data.path=hf/hmdb51\n"
               "  python train_accelerate.py --config configs/demo.yaml --set train.lr=2e-4 eval.val_every=5\n"
               "  python train_accelerate.py --config configs/demo.yaml --resume\n"
               "  accelerate launch --multi_gpu --num_processes 8 train_accelerate.py --config "
               "configs/ssv2_full_1shot_vitb16.yaml\n"
               "  python train_accelerate.py --config configs/demo.yaml --print-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML run config (default: configs/demo.yaml)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config fields, e.g. --set train.lr=2e-5 model.config.views=local "
                             "(values parsed as YAML)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config or DEMO_CONFIG, args.set)
        check_config(cfg)
    except ValueError as err:
        print(f"train_accelerate.py: config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg))
        return 0
    start = time.time()
    results = train(cfg, resume=args.resume)
    if "test" not in results:
        return 0
    is_main = int(os.environ.get("RANK", "0")) == 0
    demo = demo_reload_and_classify(cfg, results) if cfg["run"]["demo"] and is_main else None
    if is_main:
        print_report(cfg, results, demo, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
