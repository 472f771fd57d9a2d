"""Graded training targets from implicit feedback: clicks, reactions and dwell in one number.

A click says "this looked worth opening", not "this was good". What follows the click says
more: a quick return to the results (a short dwell) is the classic sign of a disappointed
click, a long read the sign of a satisfied one (Fox, Karnawat, Mydland, Dumais and White,
"Evaluating implicit measures to improve web search", ACM TOIS 2005; Kim, Hassan, White and
Zitouni, "Modeling dwell time to predict click-level satisfaction", WSDM 2014; Yi, Hong,
Zhong, Liu and Rajan, "Beyond clicks: dwell time for personalization", RecSys 2014), and an
explicit reaction (like, love, share; dislike, hide) says it outright. :class:`GradedTarget`
turns the columns of the impression-click join (:mod:`ingest.joins`: ``clicked``,
``reactions``, ``dwell``) into one non-negative grade per shown slot, which any learner that
takes graded labels can train on, e.g. ``ListDataModule.from_join(rows, features,
labels="grade")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import polars as pl

from ingest.events import REACTIONS

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)

#: The reactions that carry a positive grade of their own, by field name.
_POSITIVE = ("like", "love", "share")


@dataclass(frozen=True)
class GradedTarget:
    """The grade of a shown slot, from what the user did with it.

    Rules, in order of precedence:

    1. **Negatives.** A slot with any reaction in ``negatives`` (dislike and hide by default)
       gets 0, whatever else happened: a user who clicked and then disliked told us the
       click was a mistake.
    2. **The strongest positive signal.** Otherwise the grade is the largest of:

       - a click, graded by the dwell that followed it: ``short_click`` when the dwell is
         below ``short_dwell_s`` (a quick return), ``long_click`` when it is at least
         ``long_dwell_s`` (a satisfied read), ``click`` in between. A click without a dwell
         measurement (the join's ``dwell`` is 0, or null) counts as ``click``: the join fills
         a missing dwell with 0, which says nothing about how long the user stayed;
       - ``like``, ``love`` or ``share`` when the slot has that reaction (with or without
         a click: a feed may be liked in place);

       and 0 when none of them happened. Other reactions (``skip``) change nothing.

    The maximum rather than a sum keeps the grades on one documented scale (a loved item
    is worth ``love`` whether or not it was also liked and read long). Grades must be
    ordered ``0 <= short_click <= click <= long_click`` and ``click <= like <= love``,
    ``click <= share``: any positive reaction is at least as strong as a plain click.
    """

    click: float = 1.0
    short_click: float = 0.5
    long_click: float = 1.5
    like: float = 2.0
    love: float = 3.0
    share: float = 2.0
    short_dwell_s: float = 10.0
    long_dwell_s: float = 30.0
    negatives: tuple[str, ...] = ("dislike", "hide")

    def __post_init__(self) -> None:
        names = ("click", "short_click", "long_click", "like", "love", "share",
                 "short_dwell_s", "long_dwell_s")
        for name in names:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        for low, high in (("short_click", "click"), ("click", "long_click"),
                          ("click", "like"), ("like", "love"), ("click", "share"),
                          ("short_dwell_s", "long_dwell_s")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}={getattr(self, low)!r} must be <= "
                                 f"{high}={getattr(self, high)!r}")
        if isinstance(self.negatives, str):
            # A bare string would be read as its letters.
            raise ValueError(f"negatives={self.negatives!r} must be a tuple of reaction "
                             "names, e.g. ('dislike', 'hide')")
        for name in self.negatives:
            if name not in REACTIONS:
                raise ValueError(f"negatives={self.negatives!r} must name reactions among "
                                 f"{', '.join(REACTIONS)}; {name!r} is not one")
            if name in _POSITIVE:
                raise ValueError(f"negatives={self.negatives!r} must not hold {name!r}, "
                                 "which has a positive grade of its own")

    def expr(self, clicked: str = "clicked", reactions: str = "reactions",
             dwell: str = "dwell") -> pl.Expr:
        """The grade (Float64, named ``grade``) of each row as a polars expression over the
        join's columns: ``clicked`` (bool), ``reactions`` (list of reaction names) and
        ``dwell`` (seconds); nulls read as not clicked, no reaction and no dwell
        measurement."""
        has = pl.col(reactions).fill_null([])
        seconds = pl.col(dwell).fill_null(0.0)
        was_clicked = pl.col(clicked).fill_null(False)
        after_click = (
            pl.when(seconds <= 0).then(pl.lit(self.click))  # not measured
            .when(seconds < self.short_dwell_s).then(pl.lit(self.short_click))
            .when(seconds >= self.long_dwell_s).then(pl.lit(self.long_click))
            .otherwise(pl.lit(self.click)))
        parts = [pl.when(was_clicked).then(after_click).otherwise(pl.lit(0.0))]
        parts += [pl.when(has.list.contains(name)).then(pl.lit(float(getattr(self, name))))
                  .otherwise(pl.lit(0.0)) for name in _POSITIVE]
        negative = pl.lit(False)
        for name in self.negatives:
            negative = negative | has.list.contains(name)
        return pl.when(negative).then(pl.lit(0.0)).otherwise(pl.max_horizontal(parts)) \
            .cast(pl.Float64).alias("grade")

    def with_grade(self, rows: Frame, name: str = "grade") -> Frame:
        """``rows`` (a join frame, eager or lazy) with the grade added as column ``name``."""
        return rows.with_columns(self.expr().alias(name))
