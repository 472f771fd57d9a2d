"""Rewriting queries with the tuned language model: short, greedy, bounded, batched and
cached.

Greedy decoding (the most likely token at every step) makes a rewrite a deterministic
function of the query, so it can be cached by the normalized query and logged
reproducibly; ``max_new_tokens`` bounds its cost. Sampling (:meth:`LLMRewriter.sample`) is
for preference tuning, which needs several different candidates per query to rank.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from models.rewrite.llm import prompt_ids
from models.rewrite.markov import Rewrite
from models.rewrite.mining import normalize_query


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise TypeError(f"queries={queries!r} must be a sequence of strings, not one string")
    normalized = []
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"queries[{i}]={query!r} must be a non-empty string")
        normalized.append(normalize_query(query))
    return normalized


class LLMRewriter:
    """Rewrites queries with a causal LM tuned on the rewrite prompt
    (:mod:`models.rewrite.sft`).

    :meth:`rewrite` decodes greedily, ``batch_size`` queries per call of the model (left
    padded, so every prompt ends where its answer starts), at most ``max_new_tokens`` new
    tokens, stopping at the tokenizer's end-of-turn token; the answer is normalized like
    every query (:func:`models.rewrite.mining.normalize_query`). Results are kept in an LRU
    cache of ``cache_size`` normalized queries: a query met before costs no model call.
    ``generated_`` counts the queries the model has decoded and ``hits_`` the cache hits.

    ``Rewrite.confidence`` is the model's per-token probability of its own answer, the
    geometric mean ``exp(mean log p)`` over the answer's tokens, the end-of-turn token
    included. The whole answer's probability ``exp(sum log p)`` would shrink with every
    token, so a long correct rewrite would look less sure than a short wrong one and the
    score would rank answers by length as much as by the model's certainty; the mean keeps
    one scale for every length. It is an uncalibrated score in [0, 1]: a gate calibrates it
    against observed outcomes. ``why`` holds ``mean_logprob``, ``logprob`` (the sum),
    ``tokens`` and ``truncated`` (1 when ``max_new_tokens`` cut the answer before its
    end). An answer that is empty after normalization gives the query back unchanged with
    confidence 0.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 16,
                 batch_size: int = 32, cache_size: int = 100_000,
                 name: str = "smollm2-sft") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if cache_size < 0:
            raise ValueError(f"cache_size={cache_size} must be >= 0")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name={name!r} must be a non-empty string")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.cache_size, self.name = cache_size, name
        self.cache_: OrderedDict[str, Rewrite] = OrderedDict()
        self.generated_ = 0
        self.hits_ = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def rewrite(self, queries: Sequence[str]) -> list[Rewrite]:
        """One greedy rewrite per query, in order; ``Rewrite.original`` is the query as
        given."""
        normalized = _check_queries(queries)
        missing = [q for q in dict.fromkeys(normalized) if q not in self.cache_]
        found: dict[str, Rewrite] = {}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start: start + self.batch_size]
            found.update(zip(chunk, self._greedy(chunk), strict=True))
        self.generated_ += len(missing)
        out = []
        for given, query in zip(queries, normalized, strict=True):
            if query in found:
                result = found[query]
            else:
                result = self.cache_[query]
                self.cache_.move_to_end(query)
                self.hits_ += 1
            out.append(result if result.original == given
                       else dataclasses.replace(result, original=given))
        if self.cache_size:
            for query, result in found.items():
                self.cache_[query] = result
            while len(self.cache_) > self.cache_size:
                self.cache_.popitem(last=False)
        return out

    def sample(self, queries: Sequence[str], n: int, *, temperature: float = 1.0,
               top_p: float = 0.95, seed: int = 0) -> list[list[str]]:
        """``n`` sampled rewrites per query (nucleus sampling at ``temperature`` and
        ``top_p``), normalized, for preference tuning: the same ``seed`` gives the same
        samples. Samples of one query may repeat (the caller de-duplicates) and may be empty
        strings (an answer of nothing). Never cached; the global torch random state is left
        as it was."""
        normalized = _check_queries(queries)
        if n < 1:
            raise ValueError(f"n={n} must be at least 1")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1]")
        device = self.device
        out: list[list[str]] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(normalized), self.batch_size):
                chunk = normalized[start: start + self.batch_size]
                ids, mask = self._prompts(chunk)
                with torch.inference_mode():
                    sequences = self.model.generate(
                        input_ids=ids, attention_mask=mask, do_sample=True,
                        temperature=temperature, top_p=top_p, top_k=None,
                        num_return_sequences=n, max_new_tokens=self.max_new_tokens,
                        eos_token_id=self.tokenizer.eos_token_id,
                        pad_token_id=self.tokenizer.pad_token_id)
                texts = self._decode(sequences[:, ids.shape[1]:])
                out += [texts[i * n: (i + 1) * n] for i in range(len(chunk))]
        return out

    def clear_cache(self) -> None:
        self.cache_.clear()

    # -- decoding ----------------------------------------------------------------------------

    def _prompts(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = prompt_ids(self.tokenizer, queries)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _decode(self, new_tokens: torch.Tensor) -> list[str]:
        return [normalize_query(t) for t in
                self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _greedy(self, queries: Sequence[str]) -> list[Rewrite]:
        ids, mask = self._prompts(queries)
        eos = self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, temperature=None,
                top_p=None, top_k=None, max_new_tokens=self.max_new_tokens, eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id, output_logits=True,
                return_dict_in_generate=True)
        new = out.sequences[:, ids.shape[1]:]
        # Raw logits, before any logits processor: the model's own probabilities.
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        picked = torch.gather(logprobs, 2, new.unsqueeze(-1)).squeeze(-1)
        # An answer's tokens run up to and including its first end-of-turn token; what
        # follows is padding of rows that finished before the others.
        is_eos = new == eos
        ended = is_eos.any(dim=1)
        length = torch.where(ended, is_eos.int().argmax(dim=1) + 1,
                             torch.full_like(ended, new.shape[1], dtype=torch.long))
        counted = torch.arange(new.shape[1], device=new.device)[None, :] < length[:, None]
        total = (picked * counted).sum(dim=1)
        texts = self._decode(new)
        results = []
        for row, query in enumerate(queries):
            tokens = int(length[row])
            mean = float(total[row]) / tokens
            why = {"mean_logprob": mean, "logprob": float(total[row]), "tokens": float(tokens),
                   "truncated": float(not bool(ended[row]))}
            if texts[row]:
                results.append(Rewrite(query, texts[row], min(1.0, math.exp(mean)), self.name,
                                       why))
            else:
                results.append(Rewrite(query, query, 0.0, self.name, {**why, "empty": 1.0}))
        return results
