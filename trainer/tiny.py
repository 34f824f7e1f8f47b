"""Tiny random chat models built locally, for tests, benchmarks and CPU smoke runs.

No hub download: the tokenizer is a byte-level BPE trained here with ``tokenizers`` on a small
built-in corpus, with a ChatML chat template, and the model is a freshly initialised Qwen3 or
Llama of a few hundred thousand parameters. The result is a plain ``save_pretrained`` folder
that transformers, TRL, vLLM and ``atlas`` (``hf:/path``) all load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

__all__ = ["CHATML_TEMPLATE", "build_tiny_model", "build_tiny_tokenizer"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a teacher. Give the student brief, concrete guidance for the task: the method to "
    "use and the mistakes to avoid. Do not give the final answer.",
    "Task: A shop sells 38 apples and then 90 more. How many apples did it sell?",
    "Add the two amounts first, then check the units before answering.",
    "Subtract the smaller number from the larger one. Write only the final number.",
    "Guidance from your teacher: read the question twice and compute step by step.",
    "The student answered: 32. What is wrong: does not match the reference.",
    "Multiply the price by the quantity, then add the tax. Answer with a number.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 40 50 60 70 80 90 100 + - * / = ( ) . , ? ! :",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """A ``PreTrainedTokenizerFast`` with ChatML specials and chat template, trained in ~50 ms."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    path: str | Path,
    *,
    arch: Literal["qwen3", "llama"] = "qwen3",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 1024,
) -> Path:
    """Write a random tiny causal LM plus its tokenizer to ``path``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config: Any  # a transformers PretrainedConfig
    if arch == "qwen3":
        from transformers import Qwen3Config

        config = Qwen3Config(head_dim=hidden_size // heads, **common)
    elif arch == "llama":
        from transformers import LlamaConfig

        config = LlamaConfig(**common)
    else:
        raise ValueError(f"arch must be 'qwen3' or 'llama', got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
