"""A tiny random Llama with a BPE tokenizer and a ChatML chat template, built
offline (HF_HUB_OFFLINE=1), for tests of the transformers backend.

The model (2 layers, random weights) answers gibberish, but every token goes
through the real chat template, ``generate``, the streamer and the stopping
criteria. Run standalone to build one for other tests:

    python tiny_llama.py DIR      # prints DIR when done
"""

from __future__ import annotations

import os
import sys
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The sea is wide and deep and blue.",
    "Ships sail on the sea under the sun.",
    "A user asks and the assistant answers.",
    "Hello, how are you today? I am fine, thank you.",
    "Waves roll onto the sandy shore at night.",
] * 20
# Rotary positions: a long generation needs no learned position table.
MAX_POSITIONS = 32768


def build_tiny_llama(path: str) -> str:
    """Writes the model and tokenizer to `path` (a directory) and returns it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_llama.py DIR")
    print(build_tiny_llama(sys.argv[1]), flush=True)
