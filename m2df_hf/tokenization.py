"""A tiny, offline CLIP tokenizer and a matching tiny CLIP config.

Real runs use the tokenizer saved with ``openai/clip-vit-base-patch16``. Tests and the demo cannot download
it, so they use a byte-level CLIP BPE vocabulary without merges: every UTF-8 byte is one symbol, with a
word-final (``</w>``) variant, as in CLIP. It tokenises any text, just less compactly.
"""

from __future__ import annotations

import os
import tempfile

from transformers import CLIPConfig, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
TINY_VOCAB_SIZE = 514  # 256 byte symbols + 256 word-final symbols + BOS + EOS
TINY_BOS_ID = 512
TINY_EOS_ID = 513


def build_tiny_clip_tokenizer(save_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """Build the byte-level CLIP tokenizer; saved to ``save_dir`` (or a temporary folder)."""
    save_dir = str(save_dir) if save_dir is not None else tempfile.mkdtemp(prefix="m2df_tok_")
    os.makedirs(save_dir, exist_ok=True)
    table = bytes_to_unicode()  # CLIP's byte -> printable symbol map; its insertion order is not byte order
    symbols = [table[b] for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab[BOS_TOKEN] = TINY_BOS_ID
    vocab[EOS_TOKEN] = TINY_EOS_ID
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tokenizer.save_pretrained(save_dir)
    return tokenizer


def tiny_clip_config(
    hidden_size: int = 32,
    projection_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
) -> CLIPConfig:
    """A small random-init CLIP whose text tower matches :func:`build_tiny_clip_tokenizer`."""
    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
    )
    text = dict(
        common,
        vocab_size=TINY_VOCAB_SIZE,
        max_position_embeddings=77,
        bos_token_id=TINY_BOS_ID,
        eos_token_id=TINY_EOS_ID,
        pad_token_id=TINY_EOS_ID,
    )
    vision = dict(common, image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
