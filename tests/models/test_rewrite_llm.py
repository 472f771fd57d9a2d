"""The rewrite LLM: LoRA SFT weighted by confidence, greedy cached generation, sampling, and
the safetensors artifact; on a tiny random Llama with SmolLM2's tokenizer, and once on the
real GGUF SmolLM2 when it is installed."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest
import torch

pytest.importorskip("peft", reason="needs the llm extra (transformers, peft)")

from models.rewrite import (  # noqa: E402
    LLMNotInstalled,
    LLMRewriter,
    RewritePairsDataModule,
    fit_sft,
    load_rewriter,
    save_rewriter,
)
from models.rewrite.llm import (  # noqa: E402
    encode_pairs,
    load_smollm2,
    load_tokenizer,
    tiny_llama,
)
from models.rewrite.sft import per_pair_nll, response_nll, weighted_response_nll  # noqa: E402

COLORS = ["blue", "red", "green", "black", "white", "pink", "grey", "brown"]
THINGS = ["cotton shirt", "leather boots", "wool sweater", "denim jacket", "silk scarf"]
#: Weight 0: their rewrites share no word with the weighted ones, so only training on them
#: could teach them.
IGNORED = [("yelow umbrela", "yellow umbrella"), ("purpl lampshde", "purple lampshade"),
           ("orang kettel", "orange kettle"), ("violt teapt", "violet teapot")]


def _typo(word: str, at: int) -> str:
    # Drop one inner letter: "cotton" -> "coton", as a hurried typist would.
    if len(word) <= 3:
        return word
    i = 1 + at % (len(word) - 2)
    return word[:i] + word[i + 1:]


def _pairs() -> list[tuple[str, str, float]]:
    out = []
    for c, color in enumerate(COLORS):
        for t, thing in enumerate(THINGS):
            target = f"{color} {thing}"
            query = " ".join(_typo(w, c + t + k) for k, w in enumerate(target.split()))
            out.append((query, target, 1.0))
    return out


PAIRS = _pairs()
TRAIN = PAIRS + [(q, r, 0.0) for q, r in IGNORED]


@pytest.fixture(scope="session")
def tokenizer():
    try:
        return load_tokenizer()
    except LLMNotInstalled as error:
        pytest.skip(str(error))


def _tiny(tokenizer):
    model = tiny_llama(tokenizer, seed=0)
    # Tied random embeddings of std 0.02 cap every logit near 0.02 * hidden (about 1.3), so
    # no answer could get a probability far above uniform; a pretrained model's output scale
    # is far larger, and the final norm's gain gives the tiny one a comparable range.
    with torch.no_grad():
        model.model.norm.weight.fill_(8.0)
    return model


def _nll(model, tokenizer, pairs) -> torch.Tensor:
    batch = encode_pairs(tokenizer, [p[0] for p in pairs], [p[1] for p in pairs])
    with torch.no_grad():
        return response_nll(model, batch)


@pytest.fixture(scope="module")
def tuned(tokenizer):
    """(before, after): the response NLL of every training pair under the base model, and
    the model fitted on ``TRAIN``."""
    before = _nll(_tiny(tokenizer), tokenizer, TRAIN)
    model = fit_sft(_tiny(tokenizer), tokenizer, TRAIN, max_steps=300, batch_size=8, lr=5e-3,
                    r=32, alpha=64, dropout=0.0, warmup_steps=5, seed=0, progress=False)
    return before, model


def test_loss_helpers_agree_and_zero_weight_has_no_gradient(tokenizer):
    model = tiny_llama(tokenizer, seed=1)
    batch = encode_pairs(tokenizer, ["blu shrt", "rd hat"], ["blue shirt", "red hat"])
    logits = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits.detach().requires_grad_()
    # The response-only path equals the full-logits definition.
    torch.testing.assert_close(response_nll(model, batch).detach(),
                               per_pair_nll(logits, batch["labels"]).detach(),
                               rtol=1e-5, atol=1e-5)
    loss = weighted_response_nll(logits, batch["labels"], torch.tensor([1.0, 0.0]))
    loss.backward()
    assert logits.grad[1].abs().max() == 0.0
    assert logits.grad[0].abs().max() > 0.0
    # Normalized by the weight sum: weights (2, 0) give the same loss as (1, 0).
    again = weighted_response_nll(logits, batch["labels"], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(again, loss)


def test_data_module_splits_and_trims_batches(tokenizer):
    frame = pl.DataFrame({"query": [p[0] for p in PAIRS], "rewrite": [p[1] for p in PAIRS],
                          "weight": [p[2] for p in PAIRS]})
    data = RewritePairsDataModule(frame, tokenizer, batch_size=16, val_fraction=0.25, seed=3)
    data.setup("fit")
    assert (len(data.train), len(data.val)) == (30, 10)
    again = RewritePairsDataModule(PAIRS, tokenizer, batch_size=16, val_fraction=0.25, seed=3)
    again.setup("fit")
    assert torch.equal(data.val.encoded["input_ids"], again.val.encoded["input_ids"])
    batches = list(data.train_dataloader())
    assert [len(b["weights"]) for b in batches] == [16, 14]
    for batch in batches:  # cut to the batch's longest sequence: no all-padding column
        assert batch["attention_mask"][:, -1].any()
    with pytest.raises(ValueError, match=r"pairs\[1\].weight=-1.0"):
        RewritePairsDataModule([("a", "b", 1.0), ("c", "d", -1.0)], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[0\].rewrite=' '"):
        RewritePairsDataModule([("a", " ", 1.0)], tokenizer)


def test_sft_learns_the_weighted_pairs_only(tokenizer, tuned):
    before, model = tuned
    after = _nll(model, tokenizer, TRAIN)
    weighted, ignored = slice(0, len(PAIRS)), slice(len(PAIRS), None)
    # The weighted training loss falls at least fourfold (measured: 11.5 -> 1.95 nats).
    assert after[weighted].mean() < before[weighted].mean() / 4
    # A weight-0 pair is not learned: its loss falls far less than a weighted one's
    # (measured: 0.18 as much, from what every answer shares, such as the end-of-turn
    # token), and stays above every weighted pair's.
    drop = before - after
    assert drop[ignored].mean() < 0.3 * drop[weighted].mean()
    assert after[ignored].min() > after[weighted].max()
    rewriter = LLMRewriter(model, tokenizer)
    out = rewriter.rewrite([q for q, _, _ in PAIRS])
    exact = sum(r.rewrite == target for r, (_, target, _) in zip(out, PAIRS, strict=True))
    # Memorized: at least 90% of the 40 training queries give their target exactly
    # (measured: 40 of 40).
    assert exact >= 0.9 * len(PAIRS)
    assert all(r.source == "smollm2-sft" for r in out)
    assert all(set(r.why) >= {"mean_logprob", "tokens"} for r in out)
    learned = [r for r, (_, t, _) in zip(out, PAIRS, strict=True) if r.rewrite == t]
    for r in learned:  # the confidence is the per-token probability of the answer
        assert r.confidence == pytest.approx(2.718281828 ** r.why["mean_logprob"], rel=1e-6)
    assert not any(r.rewrite == t for r, (_, t) in
                   zip(rewriter.rewrite([q for q, _ in IGNORED]), IGNORED, strict=True))
    assert model.sft_info_["steps"] == 300 and model.sft_info_["pairs"] == len(TRAIN)


def test_cache_skips_the_model_and_returns_the_same(tokenizer, tuned):
    _, model = tuned
    rewriter = LLMRewriter(model, tokenizer, batch_size=4, cache_size=8)
    queries = [q for q, _, _ in PAIRS[:6]]
    first = rewriter.rewrite(queries + [queries[0]])  # a repeat in one call decodes once
    assert rewriter.generated_ == 6
    second = rewriter.rewrite(queries)
    assert rewriter.generated_ == 6 and rewriter.hits_ == 6
    assert second == first[:6]
    # Keyed by the normalized query; ``original`` stays the query as given.
    shouted = rewriter.rewrite(["  " + queries[0].upper()])[0]
    assert rewriter.generated_ == 6
    assert (shouted.original, shouted.rewrite) == ("  " + queries[0].upper(), first[0].rewrite)
    # Least recently used out first: 6 more queries push out 4 of the first 6.
    rewriter.rewrite([q for q, _, _ in PAIRS[6:12]])
    assert len(rewriter.cache_) == 8 and rewriter.generated_ == 12
    with pytest.raises(ValueError, match=r"queries\[1\]='  '"):
        rewriter.rewrite(["blu", "  "])


def test_sampling_is_seeded(tokenizer, tuned):
    _, model = tuned
    rewriter = LLMRewriter(model, tokenizer, max_new_tokens=6)
    queries = [PAIRS[0][0], PAIRS[7][0]]
    state = torch.random.get_rng_state()
    a = rewriter.sample(queries, 4, temperature=1.5, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream untouched
    assert a == rewriter.sample(queries, 4, temperature=1.5, seed=5)
    assert [len(s) for s in a] == [4, 4]
    assert a != rewriter.sample(queries, 4, temperature=1.5, seed=6)
    assert rewriter.generated_ == 0
    with pytest.raises(ValueError, match="queries\\[0\\]=''"):
        rewriter.sample([""], 2)


def test_save_load_round_trip(tokenizer, tuned, tmp_path):
    _, model = tuned
    folder = save_rewriter(model, tokenizer, tmp_path / "rw", {"data": {"first_ts": 1.0}})
    loaded, loaded_tok, meta = load_rewriter(folder)
    assert (meta["steps"], meta["pairs"], meta["data"]) == (300, len(TRAIN), {"first_ts": 1.0})
    assert meta["name"] == "smollm2-sft" and meta["created"]
    batch = encode_pairs(tokenizer, [q for q, _, _ in PAIRS[:4]], [t for _, t, _ in PAIRS[:4]])
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    queries = [q for q, _, _ in PAIRS[:8]]
    got_rw = LLMRewriter(loaded, loaded_tok).rewrite(queries)
    want_rw = LLMRewriter(model, tokenizer).rewrite(queries)
    assert [r.rewrite for r in got_rw] == [r.rewrite for r in want_rw]
    for g, w in zip(got_rw, want_rw, strict=True):  # float sums differ in the last bits
        assert g.confidence == pytest.approx(w.confidence, abs=1e-6)


def test_load_names_what_is_missing_or_corrupt(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        load_rewriter(tmp_path / "nowhere")
    folder = save_rewriter(tiny_llama(tokenizer, seed=2, hidden=16, layers=1), tokenizer,
                           tmp_path / "rw", {})
    (folder / "rewriter.json").write_text("{not json")
    with pytest.raises(ValueError, match="rewriter.json is not valid JSON"):
        load_rewriter(folder)
    (folder / "rewriter.json").write_text(json.dumps({"name": "x"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="rw.*does not load"):
        load_rewriter(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="rw.*missing model.safetensors"):
        load_rewriter(folder)


def test_real_smollm2_rewrites_and_saves(tokenizer, tmp_path):
    try:
        model = load_smollm2()
    except LLMNotInstalled as error:
        pytest.skip(str(error))
    rewriter = LLMRewriter(model, tokenizer, max_new_tokens=15)
    start = time.perf_counter()
    (out,) = rewriter.rewrite(["blu cottn shirt"])
    elapsed = time.perf_counter() - start
    assert out.rewrite.strip() and 1 <= out.why["tokens"] <= 15
    assert 0 < out.confidence <= 1 and elapsed < 10
    assert model.is_quantized and model.hf_quantizer is not None  # as GGUF loading leaves it
    folder = save_rewriter(model, tokenizer, tmp_path / "smollm2", {"base": "gguf"})
    assert not model.is_quantized and model.hf_quantizer is None
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    loaded, loaded_tok, meta = load_rewriter(folder)
    assert meta["base"] == "gguf" and not getattr(loaded, "is_quantized", False)
    again = LLMRewriter(loaded, loaded_tok, max_new_tokens=15).rewrite(["blu cottn shirt"])[0]
    assert again.rewrite == out.rewrite
    assert again.confidence == pytest.approx(out.confidence, abs=1e-5)
