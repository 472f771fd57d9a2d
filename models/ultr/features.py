"""Query-item features for the list rankers: how well an item's title answers a query's text,
plus whatever the caller knows about the item.

:class:`QueryItemFeatures` follows the fit/transform protocol: ``fit`` learns the statistics
of the catalog's titles (document frequencies, average length, the character n-gram
vocabulary), ``transform`` turns (query, title) pairs into one feature vector per pair::

    text = QueryItemFeatures(item_features=("log_popularity",)).fit(catalog_titles)
    x = text.transform(queries, titles, items=log_popularity[:, None])   # (n, 4)
    data = ListDataModule.from_join(rows, join_features(text, titles_by_id, items_frame))

Features, in ``feature_names_`` order:

- ``bm25``: Okapi BM25 of the query against the title (Robertson and Zaragoza, "The
  Probabilistic Relevance Framework: BM25 and Beyond", Foundations and Trends in IR, 2009)::

      bm25(q, d) = sum over distinct words t of q of
                   idf(t) * tf(t, d) (k1 + 1) / (tf(t, d) + k1 (1 - b + b |d| / avgdl))
      idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))

  with ``N`` titles in the catalog, ``n_t`` of them holding ``t`` and ``avgdl`` their mean
  length in words. The ``1 +`` inside the logarithm (Lucene's form) keeps idf positive for
  words in more than half the titles, where the original form would make a match count
  against an item. A query word counts once however often it is typed: queries here are a
  few words, and a repeat is noise rather than emphasis. Words outside the catalog match
  nothing.
- ``tfidf_cosine``: cosine of the query's and the title's TF-IDF vectors over character
  n-grams within words (scikit-learn's ``TfidfVectorizer(analyzer="char_wb")``, fitted on
  the titles). A typo, a truncation or an abbreviation breaks a word match but keeps most of
  the word's n-grams, so the intended item still scores high where BM25 gives 0.
- ``token_overlap``: the share of the query's distinct words that appear in the title (0
  for an empty query).
- then the caller's item features (``item_features`` names; values passed to
  ``transform``), e.g. log popularity, as they are.

Words are lower-cased runs of word characters (``\\w+``). Everything is computed on the
distinct queries and titles of a batch and gathered back per pair with sparse matrix
products, so a log of many slots with few distinct strings costs little.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

#: The text features, in column order.
TEXT_FEATURES = ("bm25", "tfidf_cosine", "token_overlap")
_WORD = r"\w+"


def _unique(strings: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The distinct strings, sorted, and per input row the index of its string among them
    (a dense rank sorts the same way)."""
    index = (strings.rank("dense") - 1).cast(pl.Int64).to_numpy()
    return strings.unique().sort(), index


def _rowwise_dot(left: sparse.csr_matrix, right: sparse.csr_matrix) -> np.ndarray:
    """``sum_j left[i, j] * right[i, j]`` for every row i."""
    return np.asarray(left.multiply(right).sum(axis=1)).ravel()


class QueryItemFeatures:
    """Text features of (query, title) pairs and the caller's item features (module doc).

    ``k1`` (>= 0) and ``b`` (in [0, 1]) are BM25's term-frequency saturation and length
    normalization; ``ngram_range`` the character n-gram sizes of the TF-IDF cosine;
    ``item_features`` names the columns passed as ``items`` to :meth:`transform`.

    Learned by :meth:`fit`: ``n_titles_``, ``avg_length_`` (mean words per title),
    ``idf_`` (BM25 idf per word of ``words_``, a fitted ``CountVectorizer``), ``ngrams_``
    (the fitted ``TfidfVectorizer``) and ``feature_names_``.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75,
                 ngram_range: tuple[int, int] = (2, 4),
                 item_features: Sequence[str] = ()) -> None:
        if not k1 >= 0:
            raise ValueError(f"k1={k1} must be >= 0")
        if not 0 <= b <= 1:
            raise ValueError(f"b={b} must be in [0, 1]")
        low, high = ngram_range
        if not 1 <= low <= high:
            raise ValueError(f"ngram_range={ngram_range} must be (low, high) with "
                             "1 <= low <= high")
        if isinstance(item_features, str):
            raise ValueError(f"item_features={item_features!r} must be a sequence of names")
        clash = set(item_features) & set(TEXT_FEATURES)
        if clash or len(set(item_features)) != len(item_features):
            raise ValueError(f"item_features={tuple(item_features)} must be distinct names "
                             f"other than {', '.join(TEXT_FEATURES)}")
        self.k1, self.b, self.ngram_range = k1, b, (low, high)
        self.item_features = tuple(item_features)

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters, JSON-able: with the same catalog titles,
        ``QueryItemFeatures(**params).fit(titles)`` computes the same features again (what
        an artifact records so that a scorer can)."""
        return {"k1": self.k1, "b": self.b, "ngram_range": list(self.ngram_range),
                "item_features": list(self.item_features)}

    def fit(self, titles: Sequence[str] | pl.Series) -> Self:
        """Learn the catalog's statistics from its ``titles`` (one per item)."""
        series = pl.Series("title", titles, dtype=pl.String)
        if len(series) == 0 or series.null_count():
            raise ValueError(f"titles: {len(series)} given, {series.null_count()} null; "
                             "need at least one title and no nulls")
        lengths = series.str.to_lowercase().str.count_matches(_WORD).to_numpy()
        if lengths.sum() == 0:
            raise ValueError("titles have no words to learn from")
        words = CountVectorizer(token_pattern=_WORD, lowercase=True)
        counts = words.fit_transform(series.to_list())
        holding = np.asarray((counts > 0).sum(axis=0)).ravel()  # n_t: titles holding t
        n = len(series)
        self.n_titles_ = n
        self.avg_length_ = float(lengths.mean())
        self.words_ = words
        self.idf_ = np.log1p((n - holding + 0.5) / (holding + 0.5))
        self.ngrams_ = TfidfVectorizer(analyzer="char_wb", ngram_range=self.ngram_range,
                                       lowercase=True).fit(series.to_list())
        self.feature_names_ = [*TEXT_FEATURES, *self.item_features]
        return self

    def transform(self, queries: Sequence[str | None] | pl.Series,
                  titles: Sequence[str] | pl.Series,
                  items: ArrayLike | None = None) -> np.ndarray:
        """(n, F) float32 features of the pairs ``(queries[i], titles[i])``, columns as
        ``feature_names_``. A null query is an empty one (every text feature 0). ``items``
        (n, G) holds the ``item_features`` columns of each pair's item, G as many as named."""
        if not hasattr(self, "idf_"):
            raise ValueError("QueryItemFeatures is not fitted: call fit(titles) first")
        query = pl.Series("query", queries, dtype=pl.String).fill_null("")
        title = pl.Series("title", titles, dtype=pl.String)
        if len(query) != len(title):
            raise ValueError(f"queries has {len(query)} entries, titles {len(title)}: "
                             "one title per query")
        if title.null_count():
            raise ValueError(f"titles has {title.null_count()} nulls: every pair needs one")
        extra = self._items(items, len(query))
        if len(query) == 0:
            return np.zeros((0, len(self.feature_names_)), dtype=np.float32)
        queries, q_index = _unique(query)
        titles, t_index = _unique(title)
        text = np.column_stack([
            _rowwise_dot(self._bm25_query(queries)[q_index], self._bm25_title(titles)[t_index]),
            # Rows are L2-normalized by the vectorizer, so the dot product is the cosine.
            _rowwise_dot(self.ngrams_.transform(queries.to_list()).tocsr()[q_index],
                         self.ngrams_.transform(titles.to_list()).tocsr()[t_index]),
            self._overlap(query, title)])
        return np.hstack([text, extra]).astype(np.float32)

    def fit_transform(self, queries: Sequence[str | None] | pl.Series,
                      titles: Sequence[str] | pl.Series,
                      items: ArrayLike | None = None) -> np.ndarray:
        """Fit on the distinct ``titles`` of the pairs, then transform the pairs. Fit on the
        whole catalog instead when it is at hand: document statistics from the shown items
        alone lean towards what was shown."""
        distinct = pl.Series("title", titles, dtype=pl.String).unique(maintain_order=True)
        return self.fit(distinct).transform(queries, titles, items)

    def _items(self, items: ArrayLike | None, n: int) -> np.ndarray:
        want = len(self.item_features)
        if items is None:
            if want:
                raise ValueError(f"items is None but item_features={self.item_features} "
                                 "are expected")
            return np.zeros((n, 0))
        values = np.asarray(items, dtype=np.float64)
        if values.ndim == 1 and want == 1:
            values = values[:, None]
        if values.shape != (n, want):
            raise ValueError(f"items has shape {values.shape}; expected ({n}, {want}), one "
                             f"column per item feature {self.item_features}")
        if not np.isfinite(values).all():
            raise ValueError("items must be finite")
        return values

    def _bm25_query(self, queries: pl.Series) -> sparse.csr_matrix:
        """(queries, words): 1 where the query holds the word (a word counts once)."""
        asked = self.words_.transform(queries.to_list()).tocsr()
        asked.data[:] = 1
        return asked

    def _bm25_title(self, titles: pl.Series) -> sparse.csr_matrix:
        """(titles, words): idf(t) times the saturated term frequency of t in the title, so
        that a query row's dot product with a title row is BM25 (module doc)."""
        tf = self.words_.transform(titles.to_list()).astype(np.float64).tocsr()
        length = titles.str.to_lowercase().str.count_matches(_WORD).to_numpy() \
            .astype(np.float64)
        # Every stored entry of row i shares that title's length normalization.
        norm = self.k1 * (1 - self.b + self.b * length / self.avg_length_)
        tf.data = tf.data * (self.k1 + 1) / (tf.data + np.repeat(norm, np.diff(tf.indptr)))
        tf.data *= self.idf_[tf.indices]
        return tf

    def _overlap(self, query: pl.Series, title: pl.Series) -> np.ndarray:
        words = pl.DataFrame({"q": query, "t": title}).select(
            q=pl.col("q").str.to_lowercase().str.extract_all(_WORD).list.unique(),
            t=pl.col("t").str.to_lowercase().str.extract_all(_WORD))
        shares = words.select(
            pl.col("q").list.set_intersection("t").list.len()
            / pl.col("q").list.len().clip(lower_bound=1))
        return shares.to_series().to_numpy().astype(np.float64)


def join_features(features: QueryItemFeatures, titles: Mapping[str, str],
                  items: pl.DataFrame | None = None,
                  query: str = "query") -> Callable[[pl.DataFrame], np.ndarray]:
    """A ``features`` callable for :meth:`models.ultr.ListDataModule.from_join`: given the
    join's slot rows, looks up each ``item_id``'s title in ``titles`` and, when the fitted
    ``features`` names item features, their values in ``items`` (an ``item_id`` column and
    one column per name), and returns ``features.transform`` of (row's ``query``, title).
    A row without a query (a recommendation slot) gets text features 0."""
    if not hasattr(features, "idf_"):
        raise ValueError("QueryItemFeatures is not fitted: call fit(titles) first")
    names = list(features.item_features)
    if names and items is None:
        raise ValueError(f"items is None but item_features={features.item_features} are "
                         "expected")
    if items is not None:
        missing = [c for c in ("item_id", *names) if c not in items.columns]
        if missing:
            raise ValueError(f"items has no column {missing[0]!r} (it has "
                             f"{sorted(items.columns)})")
        if items["item_id"].n_unique() != items.height:
            raise ValueError("items has repeated item_id values: one row per item")
        items = items.select("item_id", *names)
    lookup = pl.DataFrame({"item_id": list(titles.keys()), "__title": list(titles.values())},
                          schema={"item_id": pl.String, "__title": pl.String})

    def compute(rows: pl.DataFrame) -> np.ndarray:
        for column in ("item_id", query):
            if column not in rows.columns:
                raise ValueError(f"rows have no column {column!r} (they have "
                                 f"{sorted(rows.columns)})")
        slots = rows.select("item_id", query).join(lookup, on="item_id", how="left",
                                                   maintain_order="left")
        unknown = slots.filter(pl.col("__title").is_null())["item_id"]
        if len(unknown):
            raise ValueError(f"item_id={unknown[0]!r} has no title ({len(unknown)} slots "
                             "lack one)")
        values = None
        if items is not None and names:
            joined = rows.select("item_id").join(items, on="item_id", how="left",
                                                 maintain_order="left")
            lacking = joined.filter(pl.any_horizontal(pl.col(names).is_null()))["item_id"]
            if len(lacking):
                raise ValueError(f"item_id={lacking[0]!r} has no value for some of "
                                 f"{names} in items")
            values = joined.select(names).to_numpy()
        return features.transform(slots[query], slots["__title"], values)

    return compute
