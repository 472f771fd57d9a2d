"""Query rewriting learned from the same clicks.

Mining (:mod:`models.rewrite.mining`), pure polars transforms of sessionized logs:

- :func:`normalize_query`: the one normalization of query text;
- :func:`query_outcomes`: each typed query in its session, and whether its results
  succeeded (a click the user stayed on, or a like, love or share);
- :func:`transitions`: what followed each query step (success, failure, or the next query);
- :func:`mine_reformulations`: (failed query, later query of the same session) pairs with
  the later query's own successes and failures.

Rewriters return :class:`Rewrite` records (original, rewrite, confidence, source, why):

- :class:`MarkovRewriter`: the absorbing Markov chain over queries of Ponnusamy et al.
  (AAAI 2020), best rewrite by absorption into success, confidence from a beta posterior on
  the pair's own outcomes.
- :class:`LLMRewriter`: a causal LM (SmolLM2-135M-Instruct, :mod:`models.rewrite.llm`) decoding
  greedily, batched, bounded and cached by query; confidence from the model's own per-token
  probability of its answer; :meth:`LLMRewriter.sample` draws candidates for preference
  tuning.

Training and artifacts of the LLM:

- :func:`fit_sft` with :class:`SFTModule` and :class:`RewritePairsDataModule`: LoRA (Hu et
  al., ICLR 2022) supervised fine-tuning on mined (failing query -> reformulation) pairs,
  each weighted by its confidence; returns the model with the update merged;
- :func:`preference_pairs` and :func:`fit_dpo` with :class:`DPOModule`: preference tuning
  (DPO, Rafailov et al., NeurIPS 2023) on pairs ranked by the retriever's feedback: for a
  failing query, the sampled rewrite that retrieves the item the user finally clicked is
  preferred (as RetPO, Yoon et al., 2024);
- :func:`save_rewriter` and :func:`load_rewriter`: merged weights as safetensors, the
  tokenizer and ``rewriter.json`` metadata in one folder.

Serving a rewrite:

- :class:`RewriteGate`: rewrites only when the calibrated confidence passes a threshold fitted
  for a harm target, never a query that already succeeds, and says why
  (:class:`RewriteDecision`);
- :class:`IsotonicCalibrator`, :func:`reliability_curve`, :func:`expected_calibration_error`,
  :func:`plot_reliability`: the calibration the gate relies on, measured.
"""

from models.rewrite.artifact import load_rewriter, save_rewriter
from models.rewrite.calibration import (
    IsotonicCalibrator,
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
)
from models.rewrite.dpo import DPOModule, PreferenceDataModule, fit_dpo, preference_pairs
from models.rewrite.gate import REASONS, RewriteDecision, RewriteGate, fit_threshold
from models.rewrite.generate import LLMRewriter
from models.rewrite.llm import LLMNotInstalled
from models.rewrite.markov import MarkovRewriter, Rewrite
from models.rewrite.mining import (
    DEFAULT_LONG_DWELL_S,
    FAILURE,
    POSITIVE_REACTIONS,
    REFORMULATED,
    SUCCESS,
    mine_reformulations,
    normalize_query,
    query_outcomes,
    transitions,
)
from models.rewrite.sft import RewritePairsDataModule, SFTModule, fit_sft

__all__ = [
    "DEFAULT_LONG_DWELL_S",
    "FAILURE",
    "POSITIVE_REACTIONS",
    "REASONS",
    "REFORMULATED",
    "SUCCESS",
    "DPOModule",
    "IsotonicCalibrator",
    "LLMNotInstalled",
    "LLMRewriter",
    "MarkovRewriter",
    "PreferenceDataModule",
    "Rewrite",
    "RewriteDecision",
    "RewriteGate",
    "RewritePairsDataModule",
    "SFTModule",
    "expected_calibration_error",
    "fit_dpo",
    "fit_sft",
    "fit_threshold",
    "load_rewriter",
    "mine_reformulations",
    "normalize_query",
    "plot_reliability",
    "preference_pairs",
    "query_outcomes",
    "reliability_curve",
    "save_rewriter",
    "transitions",
]
