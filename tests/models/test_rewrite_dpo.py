"""Retriever-feedback preference pairs and DPO of the rewrite LLM, on a tiny random Llama
with SmolLM2's real tokenizer."""

from __future__ import annotations

import copy
import math

import numpy as np
import polars as pl
import pytest
import torch

pytest.importorskip("peft", reason="needs the llm extra (transformers, peft)")

from models.rewrite.dpo import (  # noqa: E402
    DPOModule,
    PreferenceDataModule,
    dpo_loss,
    fit_dpo,
    pair_logprobs,
    preference_pairs,
    reciprocal_ranks,
)
from models.rewrite.llm import (  # noqa: E402
    LLMNotInstalled,
    load_tokenizer,
    sequence_logprobs,
    tiny_llama,
)

#: DPO on the four pairs below: 16 steps of 2 pairs (8 epochs) at a learning rate that a
#: tiny random model needs to move within them.
STEPS, LR = 16, 5e-3
#: Each pair's log-prob margin, log pi(chosen) - log pi(rejected), must rise above the
#: reference's by at least this (nats; the run gives 2.9 to 4.9).
MIN_RISE = 1.0


@pytest.fixture(scope="module")
def tokenizer():
    try:
        return load_tokenizer()
    except LLMNotInstalled as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer, seed=0)


# Each candidate's top 3 items; the targets below are items 1, 2 and 3.
_RETRIEVED = {
    "blu shrt": [9, 8, 7],     # misses 1
    "blue shirt": [1, 5, 6],   # 1 at rank 1: 1.0
    "blue shirts": [5, 1, 6],  # rank 2: 0.5
    "blu shirt": [5, 6, 7],    # misses
    "red hatt": [2, 0, 0],     # the query itself already finds 2 at rank 1
    "red hat": [0, 2, 0],      # rank 2: 0.5
    "gren sock": [0, 0, 0],    # every candidate of this query misses 3
    "green sock": [4, 4, 4],
}
_SAMPLES = {"blu shrt": ["blue shirts", " blu shirt ", "blue shirt"],
            "red hatt": ["red hat", ""], "gren sock": ["green sock", "gren sock"]}
_FAILING = pl.DataFrame({"query": ["blu shrt", "red hatt", "gren sock"], "target": [1, 2, 3],
                         "rewrite": ["blue shirt", None, None]})


def _sampler(queries: list[str], n: int) -> list[list[str]]:
    return [_SAMPLES[q][:n] for q in queries]


class _Retriever:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, queries: list[str]) -> np.ndarray:
        self.calls.append(list(queries))
        return np.array([_RETRIEVED[q] for q in queries])


def test_preference_pairs_prefer_what_retrieves_the_clicked_item() -> None:
    retrieve = _Retriever()
    pairs = preference_pairs(_FAILING, _sampler, retrieve, n_samples=3, k=3)
    # Best against worst per query; the worst of "blu shrt" ties at 0 between the query and
    # a sample, and goes to the sample; "gren sock" scores 0 everywhere and gives no pair.
    assert pairs.rows() == [("blu shrt", "blue shirt", "blu shirt", 1.0, 0.0),
                            ("red hatt", "red hatt", "red hat", 1.0, 0.5)]
    # One retrieval for all, each distinct candidate once (stripped, blanks dropped).
    assert retrieve.calls == [["blu shrt", "blue shirt", "blue shirts", "blu shirt",
                               "red hatt", "red hat", "gren sock", "green sock"]]


def test_preference_pairs_all_keeps_every_pair_with_a_gap() -> None:
    pairs = preference_pairs(_FAILING, _sampler, _Retriever(), n_samples=3, k=3,
                             pairing="all")
    assert pairs.select("query", "chosen", "rejected").rows() == [
        ("blu shrt", "blue shirt", "blu shrt"), ("blu shrt", "blue shirt", "blue shirts"),
        ("blu shrt", "blue shirt", "blu shirt"), ("blu shrt", "blue shirts", "blu shrt"),
        ("blu shrt", "blue shirts", "blu shirt"), ("red hatt", "red hatt", "red hat")]
    # With k=1, "blue shirts" (rank 2) no longer counts: it ties with the misses.
    top1 = preference_pairs(_FAILING, _sampler, _Retriever(), n_samples=3, k=1,
                            pairing="all")
    assert top1["chosen_hit"].to_list() == [1.0, 1.0, 1.0, 1.0]
    assert top1["rejected"].to_list() == ["blu shrt", "blue shirts", "blu shirt", "red hat"]


def test_reciprocal_ranks_work_on_id_strings_too() -> None:
    got = reciprocal_ranks(np.array([["a", "b", "c"], ["c", "d", "e"]]), ["b", "e"], k=2)
    assert got.tolist() == [0.5, 0.0]


def test_preference_pairs_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match=r"failing lacks columns \['target'\]"):
        preference_pairs(_FAILING.drop("target"), _sampler, _Retriever())
    with pytest.raises(ValueError, match="the sampler returned 1 lists for 3 queries"):
        preference_pairs(_FAILING, lambda q, n: [["x"]], _Retriever())
    with pytest.raises(ValueError, match=r"retrieve returned shape \(2,\) for 8 queries"):
        preference_pairs(_FAILING, _sampler, lambda q: [1, 2])
    with pytest.raises(ValueError, match="pairing='best' must be"):
        preference_pairs(_FAILING, _sampler, _Retriever(), pairing="best")  # type: ignore[arg-type]


_PAIRS = pl.DataFrame({
    "query": ["blu shrt", "red hatt", "gren sok", "blk jeans"],
    "chosen": ["blue shirt", "red hat", "green sock", "black jeans"],
    "rejected": ["blu shirt", "red hatt", "gren sock", "blk jean"],
})


def test_dpo_loss_starts_at_log_2_because_the_policy_is_the_reference(tokenizer, model
                                                                        ) -> None:
    module = DPOModule(copy.deepcopy(model), beta=0.1)
    data = PreferenceDataModule(tokenizer, _PAIRS, batch_size=4)
    data.setup("fit")
    batch = data.train[(0, 0, torch.arange(len(_PAIRS)))]
    with torch.no_grad():
        values = module.losses(batch)
        assert float(values["loss"]) == pytest.approx(math.log(2), abs=1e-6)
        assert float(values["margin"]) == 0.0
        # The reference is the input model, the adapter switched off, even once the adapter
        # has moved: no second copy of the weights, and still the same numbers.
        for name, weight in module.policy.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.01)
        plain = sequence_logprobs(model, batch)
        assert torch.equal(module.logprobs(batch, reference=True), plain)
        assert (module.logprobs(batch) - plain).abs().max() > 1e-3
    # And the loss itself: a margin of m costs log(1 + exp(-m)).
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                            torch.tensor([-2.0]), beta=0.5)
    assert float(margin) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)


def test_the_nll_weight_adds_the_chosen_rewrites_mean_token_nll(tokenizer, model) -> None:
    from models.rewrite.sft import per_pair_nll

    data = PreferenceDataModule(tokenizer, _PAIRS, batch_size=4)
    data.setup("fit")
    batch = data.train[(0, 0, torch.arange(len(_PAIRS)))]
    half = len(_PAIRS)
    with torch.no_grad():
        plain = DPOModule(copy.deepcopy(model), beta=0.1).losses(batch)
        anchored = DPOModule(copy.deepcopy(model), beta=0.1, nll_weight=0.5).losses(batch)
        logits = model(input_ids=batch["input_ids"][:half],
                       attention_mask=batch["attention_mask"][:half]).logits
        nll = float(per_pair_nll(logits, batch["labels"][:half]).mean())
    assert float(plain["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(anchored["loss"]) == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-5)
    assert float(plain["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="nll_weight=-1.0 must be >= 0"):
        DPOModule(copy.deepcopy(model), nll_weight=-1.0)


def test_fit_dpo_raises_the_chosen_rewrites_and_returns_a_merged_model(tokenizer, model
                                                                        ) -> None:
    before_state = {name: t.clone() for name, t in model.state_dict().items()}
    before = pair_logprobs(model, tokenizer, _PAIRS)
    tuned = fit_dpo(model, tokenizer, _PAIRS, max_steps=STEPS, batch_size=2, beta=0.1,
                    lr=LR, seed=0, progress=False)
    after = pair_logprobs(tuned, tokenizer, _PAIRS)
    rise = (after[:, 0] - after[:, 1]) - (before[:, 0] - before[:, 1])
    assert rise.min() > MIN_RISE
    # Preference accuracy on the training pairs: the chosen rewrite is the likelier one.
    assert (after[:, 0] > after[:, 1]).mean() == 1.0
    # Merged: no LoRA layer or parameter left, and the input model untouched.
    assert not any("lora" in name for name, _ in tuned.named_parameters())
    assert not any(type(m).__module__.startswith("peft") for m in tuned.modules())
    assert not tuned.training
    assert all(torch.equal(t, before_state[name]) for name, t in model.state_dict().items())
    ids = torch.tensor([tokenizer("blu shrt")["input_ids"]])
    with torch.no_grad():
        change = (tuned(input_ids=ids).logits - model(input_ids=ids).logits).abs().max()
    assert change > 1e-2  # the run gives 0.76
