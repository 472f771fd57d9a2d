"""Preference tuning of the rewrite LLM with the retriever's feedback.

Preferences come from the retriever, not from people, as in RetPO (Yoon, Kim, Jeong, Lee and
Kang, "Ask Optimal Questions: Aligning Large Language Models with Retriever's Preference in
Conversational Search", 2024): for a failing query whose user finally clicked an item, several
candidate rewrites are run through the retrieval pipeline, and a candidate that puts the
clicked item higher in the top ``k`` is preferred (:func:`preference_pairs`).

The pairs then tune the model by Direct Preference Optimization (Rafailov, Sharma, Mitchell,
Ermon, Manning and Finn, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", NeurIPS 2023): with ``y_w`` the chosen and ``y_l`` the rejected rewrite of
prompt ``x``, and the implicit reward ``r(x, y) = beta * (log pi(y | x) - log ref(y | x))``,
the loss is ``-log sigmoid(r(x, y_w) - r(x, y_l))``, which fits the policy to the preferences
while the log-ratio against the frozen reference keeps it from drifting where the data says
nothing. The policy is a LoRA adapter (peft) on the given model and the reference is that
same model with the adapter switched off, so the weights are held once
(:class:`DPOModule`, :func:`fit_dpo`).

With few pairs, DPO alone can lower the log-likelihood of the chosen rewrite too, as long as
the rejected one falls faster, and so unlearn what SFT taught. ``nll_weight`` adds the
chosen rewrite's mean per-token negative log-likelihood to the loss, as in Pang, Yuan, Cho,
He, Sukhbaatar and Weston, "Iterative Reasoning Preference Optimization", NeurIPS 2024:
``loss = -log sigmoid(m) + nll_weight * NLL(y_w | x) / |y_w|``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
import pytorch_lightning as lightning
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.data import Batch, PreBatchedDataModule
from models.rewrite.llm import IGNORE, encode_pairs, sequence_logprobs
from models.training import train

#: ``sampler(queries, n)``: up to ``n`` proposed rewrites of each query.
Sampler = Callable[[list[str], int], Sequence[Sequence[str]]]
#: ``retrieve(queries)``: ``(len(queries), >= k)`` items per query, best first.
Retrieve = Callable[[list[str]], Any]
Pairing = Literal["extremes", "all"]

#: Every linear map of a Llama block: a tiny adapter on all of them learns more per step
#: than a wider one on the attention projections alone.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_PAIRS = {"query": pl.String, "chosen": pl.String, "rejected": pl.String,
          "chosen_hit": pl.Float64, "rejected_hit": pl.Float64}


def reciprocal_ranks(retrieved: Any, targets: Any, k: int) -> np.ndarray:
    """``1 / rank`` of each row's target among its first ``k`` retrieved items (rank 1 is the
    best), 0 where the target is not among them: ``(n,)`` float64."""
    ranked = np.asarray(retrieved)
    targets = np.asarray(targets)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"retrieved has shape {ranked.shape}; must be ({len(targets)}, k)")
    hits = ranked[:, :k] == targets[:, None]
    found = hits.any(axis=1)
    return np.where(found, 1.0 / (hits.argmax(axis=1) + 1.0), 0.0)


def preference_pairs(failing: pl.DataFrame, sampler: Sampler, retrieve: Retrieve, *,
                     n_samples: int = 4, k: int = 10, pairing: Pairing = "extremes"
                     ) -> pl.DataFrame:
    """(chosen, rejected) rewrites of failing queries, ranked by the retriever (RetPO).

    ``failing``: one row per failing query, columns ``query`` and ``target``, the item the
    user finally clicked, in whatever ids ``retrieve`` returns (item indices for the
    simulator's engines in :mod:`simulation.retrieval`, id strings for a
    :class:`ranking.index.VectorIndex`); an optional ``rewrite`` column holds the mined
    reformulation (null where there is none). The candidates of a query are the query itself,
    its mined reformulation and ``sampler([queries], n_samples)``'s proposals, blank and
    repeated ones dropped. For a reproducible run, bind the sampler's seed
    (``functools.partial``). ``retrieve`` is called once, on every distinct candidate of
    every query together.

    A candidate scores the reciprocal rank of the target in its top ``k`` (0 when absent).
    ``pairing="extremes"`` gives one pair per query, its best against its worst candidate:
    each failing query weighs the same however many distinct candidates it drew, and the
    widest gap is the preference least likely to be noise of the retriever. ``"all"`` gives
    every pair with a score gap, more pairs from the same retrieval. Ties among the best go
    to the earliest candidate (the query itself, then the mined rewrite: when echoing the
    query does as well, no change is the safer rewrite); ties among the worst to the latest
    (the model's own samples, the mistakes DPO must push down). Queries whose candidates all
    score the same give no pair.

    Returns ``query, chosen, rejected, chosen_hit, rejected_hit``, the last two the
    candidates' reciprocal ranks, in the order of ``failing``.
    """
    missing = sorted({"query", "target"} - set(failing.columns))
    if missing:
        raise ValueError(f"failing lacks columns {missing}")
    if n_samples < 0:
        raise ValueError(f"n_samples={n_samples} must be >= 0")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if pairing not in ("extremes", "all"):
        raise ValueError(f"pairing={pairing!r} must be 'extremes' or 'all'")
    if failing.is_empty():
        return pl.DataFrame(schema=_PAIRS)
    queries = failing["query"].to_list()
    mined = (failing["rewrite"].to_list() if "rewrite" in failing.columns
             else [None] * len(queries))
    samples = list(sampler(queries, n_samples)) if n_samples else [[] for _ in queries]
    if len(samples) != len(queries):
        raise ValueError(f"the sampler returned {len(samples)} lists for {len(queries)} "
                         "queries")

    rows: list[tuple[int, int, str]] = []  # (query row, candidate order, text)
    for row, (query, rewrite, drawn) in enumerate(zip(queries, mined, samples, strict=True)):
        seen: set[str] = set()
        for text in (query, rewrite, *drawn):
            text = text.strip() if isinstance(text, str) else ""
            if text and text not in seen:
                seen.add(text)
                rows.append((row, len(seen) - 1, text))
    candidates = pl.DataFrame(rows, schema={"row": pl.Int64, "order": pl.Int64,
                                            "text": pl.String}, orient="row")
    distinct = candidates["text"].unique(maintain_order=True)
    retrieved = np.asarray(retrieve(distinct.to_list()))
    if retrieved.ndim != 2 or len(retrieved) != len(distinct):
        raise ValueError(f"retrieve returned shape {retrieved.shape} for {len(distinct)} "
                         "queries; must be (n, k)")
    where = candidates.select(
        pl.col("text").replace_strict(distinct, np.arange(len(distinct)),
                                      return_dtype=pl.Int64))["text"].to_numpy()
    targets = failing["target"].to_numpy()[candidates["row"].to_numpy()]
    scored = candidates.with_columns(
        score=pl.Series(reciprocal_ranks(retrieved[where], targets, k)))

    left = scored.rename({"text": "chosen", "score": "chosen_hit", "order": "chosen_order"})
    right = scored.rename({"text": "rejected", "score": "rejected_hit",
                           "order": "rejected_order"})
    if pairing == "extremes":
        left = left.sort("row", "chosen_hit", "chosen_order",
                         descending=[False, True, False]).unique("row", keep="first")
        right = right.sort("row", "rejected_hit", "rejected_order",
                           descending=[False, False, True]).unique("row", keep="first")
    pairs = (left.join(right, on="row")
             .filter(pl.col("chosen_hit") > pl.col("rejected_hit"))
             .sort("row", "chosen_order", "rejected_order"))
    return pairs.select(
        pl.Series("query", queries).gather(pairs["row"]), "chosen", "rejected",
        "chosen_hit", "rejected_hit")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the DPO loss ``-log sigmoid(m)`` and the reward margin
    ``m = beta * ((pi_w - ref_w) - (pi_l - ref_l))``, from sequence log-probs (B,) each."""
    margin = beta * ((policy_chosen - reference_chosen)
                     - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margin), margin


class PreferenceBatches(Dataset[Batch]):
    """Preference pairs, one batch per index tensor: ``encode_pairs`` of the batch's chosen
    rewrites followed by its rejected ones (rows ``[0, B)`` chosen, ``[B, 2B)`` rejected), so
    one forward pass scores both sides at the same padded width."""

    def __init__(self, tokenizer: Any, queries: Sequence[str], chosen: Sequence[str],
                 rejected: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.queries, self.chosen, self.rejected = list(queries), list(chosen), list(rejected)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> Batch:  # type: ignore[override]
        _, _, rows = key
        picked = rows.tolist()
        queries = [self.queries[i] for i in picked]
        return encode_pairs(self.tokenizer, queries + queries,
                            [self.chosen[i] for i in picked] + [self.rejected[i] for i in picked])


class PreferenceDataModule(PreBatchedDataModule):
    """A frame of ``query, chosen, rejected`` rows as shuffled batches of
    :class:`PreferenceBatches` (no validation split: the pairs are few, and the log-prob
    margins on them are the check)."""

    def __init__(self, tokenizer: Any, pairs: pl.DataFrame, *, batch_size: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        missing = sorted({"query", "chosen", "rejected"} - set(pairs.columns))
        if missing:
            raise ValueError(f"pairs lacks columns {missing}")
        if pairs.is_empty():
            raise ValueError("pairs is empty: there is nothing to prefer")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.tokenizer, self.pairs = tokenizer, pairs
        self.batch_size, self.seed = batch_size, seed
        self.train: PreferenceBatches | None = None
        self.val = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            self.train = PreferenceBatches(self.tokenizer, self.pairs["query"].to_list(),
                                           self.pairs["chosen"].to_list(),
                                           self.pairs["rejected"].to_list())


class DPOModule(lightning.LightningModule):
    """DPO (see the module doc) of a LoRA adapter on ``model``, against ``model`` itself with
    the adapter disabled as the reference. ``beta``: the strength of the pull towards the
    reference (the reward scale); ``nll_weight``: the weight of the chosen rewrite's NLL
    (module doc; 0 is plain DPO); ``lr``: AdamW's rate on the adapter, reached linearly over
    ``warmup_steps``; ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``: the
    adapter (scale ``alpha / r``). The adapter is injected into ``model`` in place:
    :func:`fit_dpo` works on a copy. Logs ``train_loss``, ``train_margin`` (the mean reward
    margin), ``train_accuracy`` (the share of pairs with a positive margin) and ``train_nll``
    (the chosen rewrites' mean per-token NLL) per step."""

    def __init__(self, model: Any, *, beta: float = 0.1, nll_weight: float = 0.0,
                 lr: float = 2e-4, lora_r: int = 8,
                 lora_alpha: int = 16, lora_dropout: float = 0.05, warmup_steps: int = 0,
                 target_modules: Sequence[str] = LLAMA_LINEAR) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        for name, value in (("beta", beta), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"{name}={value} must be > 0")
        if not nll_weight >= 0:
            raise ValueError(f"nll_weight={nll_weight} must be >= 0")
        if lora_r < 1 or lora_alpha <= 0:
            raise ValueError(f"lora_r={lora_r}, lora_alpha={lora_alpha} must be >= 1 and > 0")
        if not 0 <= lora_dropout < 1:
            raise ValueError(f"lora_dropout={lora_dropout} must be in [0, 1)")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        self.save_hyperparameters(ignore=["model"])
        self.hparams["target_modules"] = list(target_modules)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=list(target_modules), task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            # peft asks transformers for a renamed attribute: nothing for us to change.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.policy = get_peft_model(model, config)

    def on_fit_start(self) -> None:
        # Models come in eval mode (generation, scoring); the adapter's dropout needs train.
        self.policy.train()

    def logprobs(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        """Sequence log-probs of the batch's responses, (2B,): under the policy, or with
        ``reference`` under the model without its adapter (no gradient)."""
        if not reference:
            return sequence_logprobs(self.policy, batch)
        with torch.no_grad(), self.policy.disable_adapter():
            return sequence_logprobs(self.policy, batch)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's mean ``loss`` (DPO plus the weighted NLL), mean reward ``margin``,
        ``accuracy`` and the chosen rewrites' mean per-token ``nll``."""
        policy = self.logprobs(batch)
        reference = self.logprobs(batch, reference=True)
        half = len(policy) // 2
        loss, margin = dpo_loss(policy[:half], policy[half:], reference[:half],
                                reference[half:], self.hparams["beta"])
        tokens = (batch["labels"][:half, 1:] != IGNORE).sum(dim=1).clamp(min=1)
        nll = (-policy[:half] / tokens).mean()
        return {"loss": loss.mean() + self.hparams["nll_weight"] * nll,
                "margin": margin.mean().detach(), "accuracy": (margin > 0).float().mean(),
                "nll": nll.detach()}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self.losses(batch)
        self.log_dict({f"train_{name}": value for name, value in values.items()},
                      prog_bar=True, on_step=True, on_epoch=False,
                      batch_size=len(batch["input_ids"]) // 2)
        return values["loss"]

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.hparams["lr"], weight_decay=0.0)
        warmup = self.hparams["warmup_steps"]
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def merged(self) -> Any:
        """The model with the adapter folded into its weights and peft's wrappers removed,
        in eval mode."""
        return self.policy.merge_and_unload().eval()


@torch.no_grad()
def pair_logprobs(model: Any, tokenizer: Any, pairs: pl.DataFrame, *, batch_size: int = 8
                  ) -> np.ndarray:
    """``(n, 2)`` sequence log-probs of each pair's chosen and rejected rewrite under
    ``model`` (in eval mode while scoring): how strongly it prefers one to the other."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = PreferenceBatches(tokenizer, pairs["query"].to_list(), pairs["chosen"].to_list(),
                             pairs["rejected"].to_list())
    out = []
    for rows in torch.arange(len(data)).split(batch_size):
        batch = {name: t.to(device) for name, t in data[(0, 0, rows)].items()}
        out.append(sequence_logprobs(model, batch).view(2, -1).T.double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.empty((0, 2))


def fit_dpo(model: Any, tokenizer: Any, pairs: pl.DataFrame, *, max_steps: int,
            batch_size: int = 8, beta: float = 0.1, nll_weight: float = 0.0,
            lr: float = 2e-4, lora_r: int = 8, lora_alpha: int = 16,
            lora_dropout: float = 0.05, warmup_steps: int = 0,
            seed: int = 0, progress: bool = True, **trainer_options: Any) -> Any:
    """DPO of a copy of ``model`` on ``pairs`` (``query, chosen, rejected``) for
    ``max_steps`` optimizer steps with Lightning's ``Trainer`` (the GPU when there is one;
    ``trainer_options`` go to it, e.g. ``gradient_clip_val``). Returns the copy with the
    LoRA adapter merged, in eval mode, on ``model``'s device; ``model`` is left as it was."""
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    device = next(model.parameters()).device
    lightning.seed_everything(seed, workers=True, verbose=False)  # the adapter's init
    module = DPOModule(copy.deepcopy(model), beta=beta, nll_weight=nll_weight, lr=lr,
                       lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                       warmup_steps=warmup_steps)
    data = PreferenceDataModule(tokenizer, pairs, batch_size=batch_size, seed=seed)
    with warnings.catch_warnings():
        # No validation split (PreferenceDataModule says why): nothing to warn about.
        warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
        train(module, data, None, max_epochs=-1, patience=0, seed=seed,
              enable_progress_bar=progress, max_steps=max_steps, **trainer_options)
    return module.merged().to(device)
