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
"""

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

__all__ = [
    "DEFAULT_LONG_DWELL_S",
    "FAILURE",
    "POSITIVE_REACTIONS",
    "REFORMULATED",
    "SUCCESS",
    "MarkovRewriter",
    "Rewrite",
    "mine_reformulations",
    "normalize_query",
    "query_outcomes",
    "transitions",
]
