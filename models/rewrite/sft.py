"""Supervised fine-tuning of the rewrite model with LoRA on mined reformulations, each pair
weighted by its confidence.

Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang and Chen, "LoRA: Low-Rank Adaptation of Large
Language Models", ICLR 2022: the pretrained weights stay frozen and every adapted projection
``W`` (here the attention's q, k, v, o and the MLP's gate, up and down projections) learns a
low-rank update ``(alpha / r) B A`` with ``A`` (r x d_in) and ``B`` (d_out x r, initialised at
zero, so training starts from the base model). After training the update is merged into
``W`` (peft's ``merge_and_unload``): the result is a plain causal LM of the base architecture,
as fast at generation as the base and saved like any other (:mod:`models.rewrite.artifact`).

The data are (failing query -> successful reformulation) pairs with a weight each, the
confidence that the reformulation really fixes the query (e.g. the Markov rewriter's beta
posterior mean). The loss is a weighted token-level cross-entropy: for each pair the mean
negative log-likelihood of its response tokens (the rewrite and the end-of-turn token, given
the prompt), times its weight, summed and divided by the batch's weight sum. Taking the mean
over a pair's tokens first makes every pair count by its weight, not by its length; a pair of
weight 0 contributes nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import polars as pl
import pytorch_lightning as lightning
import torch
from torch.utils.data import Dataset

from models.data import PreBatchedDataModule, _generator
from models.rewrite.llm import IGNORE, encode_pairs
from models.training import EpochLosses, train

Batch = dict[str, torch.Tensor]

#: The projections of a Llama block that LoRA adapts: attention and MLP.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj")

PairsLike = pl.DataFrame | Sequence[tuple[str, str, float]]


def weighted_response_nll(logits: torch.Tensor, labels: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """The weighted token-level cross-entropy of the module doc: ``logits`` (B, T, V) of
    the sequences whose ``labels`` (B, T) mark the response tokens (:data:`IGNORE`
    elsewhere), ``weights`` (B,). A batch whose weights are all 0 gives 0 (and no gradient
    through any pair)."""
    nll = per_pair_nll(logits, labels)
    weights = weights.to(nll.dtype)
    return (nll * weights).sum() / weights.sum().clamp(min=torch.finfo(nll.dtype).tiny)


def per_pair_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean negative log-likelihood over its labelled tokens, (B,); a row with
    no labelled token gives 0."""
    # Token t is predicted from the positions before it.
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != IGNORE
    token_nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
        reduction="none").view(labels.shape)
    return (token_nll * scored).sum(dim=1) / scored.sum(dim=1).clamp(min=1)


def response_nll(model: Any, batch: Batch) -> torch.Tensor:
    """:func:`per_pair_nll` of a causal LM on a batch of :func:`encode_pairs`, computing the
    vocabulary logits at the response positions only: the output layer over a 49k-token
    vocabulary at every prompt position would cost most of a small model's step."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE
    rows = scored.nonzero()[:, 0]
    logits = base.get_output_embeddings()(hidden[:, :-1][scored]).float()
    token_nll = torch.nn.functional.cross_entropy(logits, labels[scored], reduction="none")
    total = torch.zeros(len(labels), dtype=token_nll.dtype, device=token_nll.device)
    total = total.index_add(0, rows, token_nll)
    return total / scored.sum(dim=1).clamp(min=1)


def _pair_columns(pairs: PairsLike) -> tuple[list[str], list[str], list[float]]:
    if isinstance(pairs, pl.DataFrame):
        missing = {"query", "rewrite"} - set(pairs.columns)
        if missing:
            raise ValueError(f"pairs has columns {pairs.columns}; it needs 'query' and "
                             f"'rewrite' (and optionally 'weight'), missing {sorted(missing)}")
        weights = (pairs["weight"].cast(pl.Float64).to_list() if "weight" in pairs.columns
                   else [1.0] * pairs.height)
        return pairs["query"].to_list(), pairs["rewrite"].to_list(), weights
    rows = list(pairs)
    for row in rows:
        if len(row) != 3:
            raise ValueError(f"pairs must be (query, rewrite, weight) triples; got {row!r}")
    return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]


class PairBatches(Dataset[Batch]):
    """Tokenized pairs, right-padded to one width, indexed by a whole batch at once
    (:class:`models.data.EpochBatches`); a batch is cut to its own longest sequence."""

    def __init__(self, encoded: Batch, weights: torch.Tensor) -> None:
        self.encoded, self.weights = encoded, weights

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> Batch:  # type: ignore[override]
        _, _, rows = key
        mask = self.encoded["attention_mask"][rows]
        width = int(mask.sum(dim=1).max())
        batch = {name: tensor[rows, :width] for name, tensor in self.encoded.items()}
        batch["weights"] = self.weights[rows]
        return batch


class RewritePairsDataModule(PreBatchedDataModule):
    """(query, rewrite, weight) pairs as pre-batched token tensors.

    ``pairs`` is a polars frame with columns ``query``, ``rewrite`` and optionally ``weight``
    (default 1), or a sequence of ``(query, rewrite, weight)`` triples. They are tokenized
    once with :func:`models.rewrite.llm.encode_pairs` (prompt + response, labels on the
    response); ``val_fraction`` of them, chosen with ``seed``, are held out for validation.
    Batches hold ``input_ids``, ``attention_mask``, ``labels`` and ``weights``, reshuffled
    every epoch with ``seed``.
    """

    def __init__(self, pairs: PairsLike, tokenizer: Any, *, batch_size: int = 16,
                 val_fraction: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        queries, rewrites, weights = _pair_columns(pairs)
        if not queries:
            raise ValueError("pairs is empty: no (query, rewrite) pair to train on")
        for name, texts in (("query", queries), ("rewrite", rewrites)):
            for i, text in enumerate(texts):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"pairs[{i}].{name}={text!r} must be a non-empty string")
        for i, w in enumerate(weights):
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"pairs[{i}].weight={w} must be finite and >= 0")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.queries, self.rewrites = queries, rewrites
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.train: PairBatches | None = None
        self.val: PairBatches | None = None

    @property
    def n_pairs(self) -> int:
        """Pairs given, training and validation together."""
        return len(self.queries)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        encoded = encode_pairs(self.tokenizer, self.queries, self.rewrites)
        n = self.n_pairs
        n_val = int(round(n * self.val_fraction))
        if n_val >= n:
            raise ValueError(f"val_fraction={self.val_fraction} leaves no training pair of "
                             f"{n}")
        order = torch.randperm(n, generator=_generator(self.seed, 0))
        val_rows, train_rows = order[:n_val], order[n_val:]

        def part(rows: torch.Tensor) -> PairBatches:
            return PairBatches({k: v[rows] for k, v in encoded.items()}, self.weights[rows])

        self.train = part(train_rows)
        self.val = part(val_rows) if n_val else None


class SFTModule(EpochLosses, lightning.LightningModule):
    """LoRA supervised fine-tuning of a causal LM (see the module doc).

    ``model`` is wrapped in place by peft: rank ``r``, scale ``alpha / r``, ``dropout`` on
    the adapters' input, on ``target_modules``. AdamW (``lr``, ``weight_decay``) on the
    adapter weights only, the learning rate rising linearly over ``warmup_steps`` and then
    falling linearly to 0 at the trainer's last step. :meth:`merged` returns the base
    model with the trained update merged in.
    """

    def __init__(self, model: Any, *, r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                 lr: float = 2e-4, weight_decay: float = 0.0, warmup_steps: int = 10,
                 target_modules: Sequence[str] = LLAMA_PROJECTIONS) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        if r < 1:
            raise ValueError(f"r={r} must be at least 1")
        if not alpha > 0:
            raise ValueError(f"alpha={alpha} must be > 0")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if not lr > 0 or weight_decay < 0 or warmup_steps < 0:
            raise ValueError(f"lr={lr}, weight_decay={weight_decay}, "
                             f"warmup_steps={warmup_steps}: need lr > 0, weight_decay >= 0, "
                             "warmup_steps >= 0")
        self.save_hyperparameters(ignore=["model"])
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.target_modules = tuple(target_modules)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=list(self.target_modules), bias="none",
                            task_type="CAUSAL_LM")
        self.model = get_peft_model(model, config)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Each pair's mean response NLL, (B,)."""
        return response_nll(self.model, batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """:func:`weighted_response_nll`, without the logits of the prompt positions."""
        weights = batch["weights"].float()
        return (self(batch) * weights).sum() / weights.sum().clamp(min=1e-30)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.add_train_losses({"loss": loss}, len(batch["weights"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), batch_size=len(batch["weights"]),
                 prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.warmup_steps, total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(total - warmup, 1))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def merged(self) -> Any:
        """The base model with the LoRA update merged into its weights, in eval mode."""
        return self.model.merge_and_unload().eval()


def fit_sft(model: Any, tokenizer: Any, pairs: PairsLike | RewritePairsDataModule, *,
            max_steps: int = -1, max_epochs: int | None = None, batch_size: int = 16,
            val_fraction: float = 0.0, seed: int = 0, progress: bool = True,
            r: int = 16, alpha: float = 32.0, dropout: float = 0.05, lr: float = 2e-4,
            weight_decay: float = 0.0, warmup_steps: int = 10,
            **trainer_options: Any) -> Any:
    """LoRA-tune ``model`` on ``pairs`` (a frame, triples, or a ready
    :class:`RewritePairsDataModule`) and return it with the update merged, in eval mode.

    ``model`` itself is changed (peft injects its adapters into it, then merges them): pass
    a copy to keep the base. Training stops after ``max_steps`` optimizer steps or
    ``max_epochs`` epochs, whichever comes first (give at least one); on the GPU when there
    is one, with a progress bar when ``progress``, writing no logs or checkpoints. The
    returned model's ``sft_info_`` holds ``steps``, ``epochs``, ``pairs`` and the last
    ``train_loss`` (the metadata :func:`models.rewrite.artifact.save_rewriter` writes).
    ``trainer_options`` go to ``pytorch_lightning.Trainer``.
    """
    if max_steps < 1 and max_epochs is None:
        raise ValueError(f"max_steps={max_steps}, max_epochs={max_epochs}: give max_steps >= 1 "
                         "or max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs={max_epochs} must be at least 1")
    data = (pairs if isinstance(pairs, RewritePairsDataModule)
            else RewritePairsDataModule(pairs, tokenizer, batch_size=batch_size,
                                        val_fraction=val_fraction, seed=seed))
    # Seeded before peft draws the adapters' initial A matrices.
    lightning.seed_everything(seed, workers=True, verbose=False)
    with warnings.catch_warnings():
        # The frozen base model is in eval mode (it came that way); peft's adapters are
        # trained, and Lightning switches the whole module to train mode anyway.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        # Without a validation split the loader list is empty on purpose.
        warnings.filterwarnings("ignore", message=r".*Total length of `list` across ranks is zero")
        # peft asks transformers through a name that transformers renames: not ours to fix.
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* deprecated")
        module = SFTModule(model, r=r, alpha=alpha, dropout=dropout, lr=lr,
                           weight_decay=weight_decay, warmup_steps=warmup_steps)
        trainer = train(module, data, None, max_epochs=-1 if max_epochs is None else max_epochs,
                        patience=0, seed=seed, enable_progress_bar=progress,
                        max_steps=max_steps, **trainer_options)
    merged = module.merged()
    loss = trainer.callback_metrics.get("train_loss")
    merged.sft_info_ = {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
                        "pairs": data.n_pairs,
                        "train_loss": None if loss is None else float(loss)}
    return merged
