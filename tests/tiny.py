"""A tiny random causal LM with a real byte-level BPE tokenizer, built offline in a second.

Random weights are enough to test logic (batching, caching, truncation, formats); the real SmolLM2
tests prove the numbers mean something.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Give three tips for staying healthy.", "Eat a balanced diet and exercise regularly.",
    "Translate the sentence into French.", "Repeat exactly: the quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.", "Write a haiku about autumn leaves.",
    "Summarize the following paragraph in one sentence.", "hello world, hello there, helpful hello.",
    "### Instruction:\n### Input:\n### Response:\n", "Below is an instruction that describes a task.",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 400, bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    kwargs = dict(eos_token="</s>", pad_token="<pad>")
    if bos:
        kwargs["bos_token"] = "<s>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(folder: Path, bos: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(bos=bos)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
