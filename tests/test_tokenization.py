"""The offline tiny CLIP tokenizer: byte-level symbols, CLIP's special tokens, round trip."""

from transformers import AutoTokenizer, CLIPModel

from m2df_hf.tokenization import TINY_BOS_ID, TINY_EOS_ID, TINY_VOCAB_SIZE


def test_byte_symbols_and_special_tokens(tiny_tokenizer):
    ids = tiny_tokenizer("ab c")["input_ids"]
    # "ab" -> 'a', 'b</w>'; "c" -> 'c</w>'; printable ASCII keeps its byte value.
    assert ids == [TINY_BOS_ID, ord("a"), 256 + ord("b"), 256 + ord("c"), TINY_EOS_ID]
    assert len(tiny_tokenizer) == TINY_VOCAB_SIZE


def test_round_trip_through_save_and_auto_load(tiny_tokenizer, tmp_path):
    text = "a photo of pouring something into something"
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = reloaded(text)["input_ids"]
    assert ids == tiny_tokenizer(text)["input_ids"]
    assert reloaded.decode(ids, skip_special_tokens=True) == text
    # CLIP's pre-tokenizer splits brackets off as words of their own, as the real CLIP tokenizer does.
    assert reloaded("[x]")["input_ids"][1:-1] == [256 + ord("["), 256 + ord("x"), 256 + ord("]")]


def test_text_tower_pools_at_first_eos(tiny_tokenizer, clip_config):
    model = CLIPModel(clip_config).eval()
    batch = tiny_tokenizer(["a red square", "a red square moving left"], padding=True, return_tensors="pt")
    pooled = model.get_text_features(**batch).pooler_output
    single = model.get_text_features(**tiny_tokenizer(["a red square"], return_tensors="pt")).pooler_output
    # Padding with EOS must not change the pooled embedding of the shorter prompt.
    assert (pooled[0] - single[0]).abs().max() < 1e-5
    assert (pooled[0] - pooled[1]).abs().max() > 1e-3
