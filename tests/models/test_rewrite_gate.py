from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from models.rewrite import MarkovRewriter, Rewrite
from models.rewrite.calibration import (
    IsotonicCalibrator,
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
)
from models.rewrite.gate import (
    REASONS,
    RewriteDecision,
    RewriteGate,
    fit_threshold,
    threshold_curve,
)


def _stats(rows: list[tuple[int, int] | None]) -> pl.DataFrame:
    """successes, failures and the Beta(1, 1) posterior mean success rate per query."""
    return pl.DataFrame({
        "successes": [r[0] if r else None for r in rows],
        "failures": [r[1] if r else None for r in rows],
        "success_rate": [(1 + r[0]) / (2 + r[0] + r[1]) if r else None for r in rows],
    }, schema={"successes": pl.UInt32, "failures": pl.UInt32, "success_rate": pl.Float64})


def test_gate_decisions_and_their_reasons_on_hand_built_cases() -> None:
    queries = ["navy coat", "blu shirt", "blu shirt", "red hatt", "grn sock", "wool cap",
               "blue shirt", "tshirt"]
    stats = _stats([(9, 1), (0, 5), (0, 5), (0, 1), None, None, None, (0, 4)])
    markov = [Rewrite("navy coat", "navy wool coat", 0.95),
              Rewrite("blu shirt", "blue shirt", 0.9),
              Rewrite("blu shirt", "blue shirt", 0.6),
              None, None, None, None, Rewrite("tshirt", "t shirt", 0.55)]
    llm = [Rewrite(q, r, c, "llm") if r else None for q, r, c in [
        ("navy coat", "navy coats", 0.99), ("blu shirt", "blue shirts", 0.95),
        ("blu shirt", "blue shirts", 0.95), ("red hatt", "red hat", 0.4),
        ("grn sock", "green sock", 0.8), ("wool cap", None, 0.0),
        ("blue shirt", "Blue  Shirt", 0.9), ("tshirt", None, 0.0)]]
    gate = RewriteGate(threshold=0.7)
    got = gate.decide(queries, stats, markov, llm)
    assert [d.reason for d in got] == [
        "already succeeds",  # success rate 10/12, whatever the candidates promise
        "rewritten",  # seen, Markov confident: Markov wins over the more confident LLM
        "rewritten",  # seen, Markov below threshold: the LLM's rewrite
        "below threshold",  # only the LLM's, at 0.4
        "rewritten",  # never seen: the LLM's
        "no candidate",
        "identical",  # the LLM only changed case and spacing
        "below threshold",  # only Markov's, at 0.55
    ]
    assert [(d.output, d.source) for d in got[1:5]] == [
        ("blue shirt", "markov"), ("blue shirts", "llm"), ("red hatt", "llm"),
        ("green sock", "llm")]
    assert got[0].original_success == pytest.approx(10 / 12) and got[0].source is None
    assert got[4].original_success is None and got[4].calibrated == pytest.approx(0.8)
    assert [d.rewritten for d in got] == [d.reason == "rewritten" for d in got]
    assert all(d.output == d.query for d in got if not d.rewritten)
    logged = json.loads(json.dumps(got[1].as_dict()))
    assert logged["reason"] == "rewritten" and logged["confidence"] == pytest.approx(0.9)
    # A Markov rewrite needs min_count observations of the query to be preferred.
    strict = RewriteGate(threshold=0.7, min_count=10).decide(queries[1:2], stats[1:2],
                                                             markov[1:2], llm[1:2])
    assert strict[0].source == "llm"
    # An LLM that only echoes the query yields to the Markov candidate, here below threshold.
    echo = [Rewrite("blu shirt", "blu shirt", 0.99, "llm")]
    low = gate.decide(queries[2:3], stats[2:3], markov[2:3], echo)[0]
    assert (low.reason, low.source, low.calibrated) == ("below threshold", "markov", 0.6)


def test_the_gate_never_rewrites_a_query_that_already_succeeds() -> None:
    rng = np.random.default_rng(0)
    successes = rng.integers(0, 20, 500)
    failures = rng.integers(0, 20, 500)
    stats = _stats(list(zip(successes.tolist(), failures.tolist(), strict=True)))
    queries = [f"q{i}" for i in range(500)]
    sure = [Rewrite(q, q + " x", 1.0, "llm") for q in queries]
    gate = RewriteGate(threshold=0.0, max_original_success=0.5)
    got = gate.decide(queries, stats, sure, sure)
    succeeding = (stats["success_rate"] >= 0.5).to_numpy()
    assert 100 < succeeding.sum() < 400
    assert not any(d.rewritten for d, s in zip(got, succeeding, strict=True) if s)
    assert all(d.rewritten for d, s in zip(got, succeeding, strict=True) if not s)


def test_decision_records_check_their_fields() -> None:
    with pytest.raises(ValueError, match="reason='maybe' must be one of"):
        RewriteDecision("a", False, "a", "maybe")
    with pytest.raises(ValueError, match="rewritten=True must be True exactly when"):
        RewriteDecision("a", True, "b", "below threshold")
    with pytest.raises(ValueError, match="calibrated=1.5 must be in"):
        RewriteDecision("a", True, "b", "rewritten", "llm", 0.5, 1.5)
    with pytest.raises(ValueError, match="max_original_success=2 must be in"):
        RewriteGate(max_original_success=2)
    assert set(REASONS) == {"rewritten", "already succeeds", "below threshold",
                            "no candidate", "identical"}


def _known_validation() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1000 queries, confidence (i + 0.5) / 1000. From i = 600 up every rewrite wins; below,
    every fifth query (i % 5 == 0) succeeded as typed and fails rewritten, the others win.
    With 1% harm allowed (10 queries) the rewrites may reach down to the harms at
    i = 595, 590, ..., 550 and the wins just under them: i = 546 is the lowest, so the
    threshold is 0.5465."""
    i = np.arange(1000)
    harmful = (i < 600) & (i % 5 == 0)
    return (i + 0.5) / 1000, harmful, ~harmful


def test_fit_threshold_meets_the_harm_target_with_the_known_answer() -> None:
    confidence, before, after = _known_validation()
    rng = np.random.default_rng(3)
    order = rng.permutation(1000)  # the order the rows come in must not matter
    threshold = fit_threshold(confidence[order], before[order], after[order], max_harm=0.01)
    assert threshold == pytest.approx(0.5465, abs=1e-12)
    rewritten = confidence >= threshold
    harm = np.mean(rewritten & before & ~after)
    success = np.mean(np.where(rewritten, after, before))
    # 444 winning rewrites (i >= 546) and the 110 harmful ones left as typed (i < 546)
    assert harm == pytest.approx(0.010) and success == pytest.approx(0.554)
    curve = threshold_curve(confidence, before, after)
    assert curve.height == 1001  # every distinct confidence, and rewriting nothing
    best_within = curve.filter(pl.col("harm") <= 0.01)["success"].max()
    assert success == pytest.approx(best_within)
    # No rewrite at all when every rewrite harms.
    assert fit_threshold([0.9, 0.8], [True, True], [False, False], max_harm=0.0) > 0.9


def test_gate_fit_calibrates_each_source_and_picks_the_threshold() -> None:
    confidence, before, after = _known_validation()
    validation = pl.DataFrame({"source": "llm", "confidence": confidence,
                               "original_success": before, "rewrite_success": after})
    gate = RewriteGate(threshold=0.9).fit(validation)
    calibrated = gate.calibrators_["llm"].predict(confidence)
    rewritten = calibrated >= gate.threshold_
    # Isotonic regression pools 0 < i <= 595 at their win rate, 0.8 (i = 0, a loss, is a
    # block of its own at 0; the wins after the last loss, i >= 596, are at 1): the gate
    # can take all of the mixed region (harm 12%) or none of it, so it takes none.
    assert calibrated[0] == 0.0 and calibrated[1:596] == pytest.approx(0.8)
    assert calibrated[596:] == pytest.approx(1.0)
    assert gate.threshold_ == pytest.approx(1.0)
    assert np.array_equal(rewritten, np.arange(1000) >= 596)
    again = RewriteGate().load_state_dict(json.loads(json.dumps(gate.state_dict())))
    assert again.threshold_ == gate.threshold_
    assert np.allclose(again.calibrators_["llm"].predict(confidence), calibrated)


def test_isotonic_calibration_lowers_ece_on_overconfident_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        p = rng.random(n)
        return np.sqrt(p), rng.random(n) < p  # says sqrt(p) where the truth is p

    fit_c, fit_y = draw(5000)
    test_c, test_y = draw(5000)
    raw = expected_calibration_error(test_c, test_y)
    calibrator = IsotonicCalibrator().fit(fit_c, fit_y)
    calibrated = calibrator.predict(test_c)
    after = expected_calibration_error(calibrated, test_y)
    assert raw == pytest.approx(1 / 6, abs=0.02)  # E[sqrt(p) - p] = 2/3 - 1/2
    assert after < 0.03 and raw - after > 0.13
    assert np.all(np.diff(calibrator.predict(np.linspace(0, 1, 101))) >= 0)
    path = plot_reliability({"raw": reliability_curve(test_c, test_y),
                             "isotonic": reliability_curve(calibrated, test_y)},
                            tmp_path / "reliability.png")
    assert path.stat().st_size > 10_000


def test_reliability_curve_bins() -> None:
    confidence = [0.0, 0.05, 0.1, 0.15, 0.55, 0.95, 1.0]
    outcome = [0, 1, 1, 1, 0, 1, 1]
    curve = reliability_curve(confidence, outcome, bins=10)
    assert curve["bin"].to_list() == [0, 1, 5, 9]
    assert curve["n"].to_list() == [2, 2, 1, 2]
    assert curve["mean_confidence"].to_list() == pytest.approx([0.025, 0.125, 0.55, 0.975])
    assert curve["success_rate"].to_list() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    # |0.025-0.5|*2 + |0.125-1|*2 + 0.55 + |0.975-1|*2, over 7
    assert expected_calibration_error(confidence, outcome) == pytest.approx(
        (0.95 + 1.75 + 0.55 + 0.05) / 7)
    with pytest.raises(ValueError, match="confidence has 2 values but outcome has 1"):
        reliability_curve([0.1, 0.2], [1])


def test_gate_rewrite_looks_up_a_fitted_markov_rewriter() -> None:
    steps = ([{"session_id": f"a{n}", "step": i, "query": q, "success": ok}
              for n in range(6) for i, (q, ok) in enumerate([("blu shirt", False),
                                                            ("blue shirt", True)])]
             + [{"session_id": f"b{n}", "step": 0, "query": "navy coat", "success": True}
                for n in range(4)])
    markov = MarkovRewriter().fit(pl.DataFrame(steps))

    class Echo:
        asked: list[str] = []

        def rewrite(self, queries: list[str]) -> list[Rewrite | None]:
            self.asked.extend(queries)
            return [Rewrite(q, q + "s", 0.8, "llm") for q in queries]

    llm = Echo()
    got = RewriteGate(threshold=0.7).rewrite(["Blu Shirt", "navy coat", "grn sock"],
                                             markov, llm)
    assert [(d.reason, d.output, d.source) for d in got] == [
        ("rewritten", "blue shirt", "markov"), ("already succeeds", "navy coat", None),
        ("rewritten", "grn socks", "llm")]
    assert got[0].confidence == pytest.approx(7 / 8)
    assert llm.asked == ["Blu Shirt", "grn sock"]  # never asked about a succeeding query
