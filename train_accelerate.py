"""Episodic training of CLIP-M2DF with Accelerate (placeholder: smoke run until the training issue lands)."""

import time

import torch
from transformers import CLIPModel

from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config


def main() -> None:
    start = time.time()
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    tokenizer = build_tiny_clip_tokenizer()
    frames = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        video = model.get_image_features(pixel_values=frames).pooler_output
        text = model.get_text_features(**tokenizer(["a red square moving left"], return_tensors="pt")).pooler_output
    print(f"smoke run: encoded 8 frames -> {tuple(video.shape)}, 1 prompt -> {tuple(text.shape)} "
          f"with a tiny random CLIP in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
