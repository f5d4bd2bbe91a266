"""One rank of the 2-process CPU DDP test (tests/test_training.py), started by torchrun in fresh processes.

    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py CFG.json MODEL_DIR OUT

Evaluates a fixed saved model with the protocol sharded over the ranks, then trains with ``cfg``; each rank
writes what it computed to OUT (predictions, encodings, final-weights fingerprint, world size).
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(cfg_path, model_dir, report_dir):
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from transformers import AutoModel, AutoTokenizer

    from m2df_hf.evaluation import evaluate_episodes
    from m2df_hf.processing_m2df import M2DFVideoProcessor
    from m2df_hf.synthetic import build_synthetic_dataset_dict

    spec = importlib.util.spec_from_file_location("train_accelerate", ROOT / "train_accelerate.py")
    ta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ta)
    with open(cfg_path) as f:
        cfg = json.load(f)

    accelerator = Accelerator()
    rank = accelerator.process_index
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    split = build_synthetic_dataset_dict(cfg["data"]["path"])["test"]
    result = evaluate_episodes(model, split, M2DFVideoProcessor.from_pretrained(model_dir),
                               tokenizer=AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True), way=3,
                               shot=1, num_episodes=9, seed=7, video_batch_size=3, accelerator=accelerator,
                               progress=False)
    np.save(os.path.join(report_dir, f"eval_rank{rank}.npy"), result.predictions)
    with open(os.path.join(report_dir, f"eval_rank{rank}.json"), "w") as f:
        json.dump({"world": accelerator.num_processes, "encodings": result.backbone_frame_encodings}, f)

    results = ta.train(cfg)
    with open(os.path.join(report_dir, f"train_rank{rank}.json"), "w") as f:
        json.dump({"fingerprint": results["final_weights_fingerprint"],
                   "processes": results["training"]["num_processes"]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
