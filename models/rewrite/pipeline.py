"""The wiring of rewriter training shared by ``clickloop rewrite train`` and the benchmark:
what each learner is fed, and how the gate's validation rows are judged.

- :func:`sft_pairs`: the supervised pairs, every mined reformulation whose rewrite succeeded
  at least once, weighted by its beta-posterior mean (the Markov rewriter's confidence),
  and optionally queries that succeed as typed paired with themselves;
- :func:`labelled`: query steps with the item the user finally clicked on the success that
  closed their chain (the retriever's target);
- :func:`failing_queries`: the failing queries DPO samples candidates for, with that target
  and the query that finally succeeded;
- :func:`validation_rows`: the gate's calibration rows on held-out sessions, each candidate
  judged by whether the retriever puts the clicked item in its top ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from models.rewrite.markov import MarkovRewriter
from models.rewrite.mining import normalize_query

#: ``retrieve(queries) -> (n, >= k)`` item ids, best first.
Retrieve = Callable[[list[str]], Any]

#: What ``clickloop rewrite train`` and ``benchmarks/rewrite.py`` train with, chosen on the
#: validation day by ``benchmarks/rewrite_tuning.py``: the share of identity pairs in SFT
#: (:func:`sft_pairs`) and DPO's rate, ``beta`` and NLL weight
#: (:class:`models.rewrite.dpo.DPOModule`).
IDENTITY_SHARE = 0.5
DPO_LR = 2e-4
DPO_BETA = 0.1
DPO_NLL_WEIGHT = 1.0

_VALIDATION = {"source": pl.String, "confidence": pl.Float64, "original_success": pl.Boolean,
               "rewrite_success": pl.Boolean}


def sft_pairs(markov: MarkovRewriter, identity_share: float = 0.0) -> pl.DataFrame:
    """``query, rewrite, weight`` of a fitted Markov rewriter's mined pairs whose rewrite
    succeeded at least once, ``weight`` the pair's ``Beta(a0 + s, b0 + f)`` posterior
    mean.

    ``identity_share``: add ``round(identity_share * n_pairs)`` queries that succeed as typed,
    each paired with itself and weighted by its own success posterior mean: the queries of
    most successes first (ties: fewer failures, then text), those whose posterior mean is
    under 1/2 left out. A model that has only seen broken queries learns to change every
    query; these teach it to leave a working one alone, the way a spelling corrector is
    trained on correct words too."""
    if not identity_share >= 0:
        raise ValueError(f"identity_share={identity_share} must be >= 0")
    a0, b0 = markov.prior
    s, f = pl.col("successes").cast(pl.Float64), pl.col("failures").cast(pl.Float64)
    posterior = (a0 + s) / (a0 + b0 + s + f)
    pairs = (markov.pairs_.filter(pl.col("successes") > 0)
             .select("query", "rewrite", weight=posterior))
    n_identity = round(identity_share * pairs.height)
    if not n_identity:
        return pairs
    kept = (markov.queries_.filter((pl.col("successes") > 0) & (posterior >= 0.5))
            .sort(["successes", "failures", "query"], descending=[True, False, False])
            .head(n_identity)
            .select("query", rewrite="query", weight=posterior))
    return pl.concat([pairs, kept])


def labelled(steps: pl.DataFrame, clicks: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Steps with ``target``, the item first clicked on the success that closed their
    chain, and ``final``, that success's query; steps of chains that never succeeded on a
    click are left out."""
    first = (clicks.lazy().sort("ts").group_by("request_id")
             .agg(target=pl.col("item_id").first()).collect())
    closed = pl.col("success").cast(pl.Int32).cum_sum().shift(1, fill_value=0)
    steps = steps.sort("session_id", "step").with_columns(chain=closed.over("session_id"))
    wins = (steps.filter("success").join(first, on="request_id")
            .select("session_id", "chain", "target", final="query"))
    return steps.join(wins, on=["session_id", "chain"], maintain_order="left")


def failing_queries(steps: pl.DataFrame, clicks: pl.LazyFrame | pl.DataFrame,
                    limit: int) -> pl.DataFrame:
    """``query, target, rewrite``: up to ``limit`` distinct failing queries whose chain
    closed on a click, with that click's item and the query that got it (the input of
    :func:`models.rewrite.dpo.preference_pairs`)."""
    return (labelled(steps, clicks).filter(~pl.col("success"))
            .select("query", "target", rewrite="final")
            .unique("query", keep="first", maintain_order=True)
            .head(limit))


def validation_rows(markov: MarkovRewriter, llm: Any, held: pl.DataFrame,
                    clicks: pl.LazyFrame | pl.DataFrame, retrieve: Retrieve, gate: Any,
                    limit: int, k: int = 10) -> pl.DataFrame:
    """Rows ``source, confidence, original_success, rewrite_success`` of up to ``limit``
    held-out queries the gate would consider (not already succeeding by ``markov``'s
    stats), for each candidate (of ``markov``, and of ``llm`` when given) that changes the
    query, judged by whether ``retrieve`` puts the clicked item in its top ``k``: the input
    of :meth:`models.rewrite.gate.RewriteGate.fit`."""
    rows = labelled(held, clicks).unique(["query", "target"], maintain_order=True)
    queries = rows["query"].to_list()
    if not queries:
        return pl.DataFrame(schema=_VALIDATION)
    rates = markov.stats(queries)["success_rate"].to_list()
    open_ = [i for i, r in enumerate(rates) if r is None or r < gate.max_original_success]
    queries = [queries[i] for i in open_][:limit]
    targets = rows["target"].to_numpy()[open_][:limit]
    candidates = [markov.rewrite(queries)]
    if llm is not None and queries:
        candidates.append(llm.rewrite(queries))
    # An unchanged query is never a rewrite the gate makes ("identical"): nothing to learn.
    found = [(i, r) for got in candidates for i, r in enumerate(got)
             if r is not None and normalize_query(r.rewrite) != queries[i]]
    texts = list(dict.fromkeys([*queries, *(r.rewrite for _, r in found)]))
    where = {t: n for n, t in enumerate(texts)}
    retrieved = np.asarray(retrieve(texts)) if texts else np.empty((0, k), dtype=object)

    def hit(text: str, row: int) -> bool:
        return bool((retrieved[where[text], :k] == targets[row]).any())

    out = [{"source": r.source, "confidence": r.confidence,
            "original_success": hit(queries[i], i), "rewrite_success": hit(r.rewrite, i)}
           for i, r in found]
    return pl.DataFrame(out, schema=_VALIDATION)
