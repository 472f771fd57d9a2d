from __future__ import annotations

import numpy as np
import pytest

from simulation.queries import PROCESSES, SYNONYMS, Edit, QueryNoise, restore
from simulation.world import World

TITLES = World(n_items=3000, seed=4).titles(np.arange(3000))


def _damerau_one(a: str, b: str) -> bool:
    """True when b is one substitution, deletion, insertion or adjacent swap away from a."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return (a[i + 1:] == b[i + 1:] or a[i + 1:] == b[i:] or a[i:] == b[i + 1:]
            or (a[i + 2:] == b[i + 2:] and a[i:i + 2] == b[i:i + 2][::-1]))


CHECKS = {
    "typo": lambda e: _damerau_one(e.before, e.after),
    "synonym": lambda e: e.after in SYNONYMS[e.before],
    "truncation": lambda e: e.before.startswith(e.after) and 3 <= len(e.after) < len(e.before),
    "abbreviation": lambda e: e.after[0] == e.before[0] and not set(e.after[1:]) & set("aeiou")
    and len(e.after) < len(e.before),
    "drop": lambda e: e.after == "",
}


FITS = {
    "typo": lambda words: [w for w in words if len(w) >= 3],
    "synonym": lambda words: [w for w in words if w in SYNONYMS],  # brands have none
    "truncation": lambda words: [w for w in words if len(w) >= 5],
    "abbreviation": lambda words: [w for w in words if set(w[1:]) & set("aeiou")],
    "drop": lambda words: words[:-1],
}


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_alone_does_what_it_says_and_is_invertible(process: str) -> None:
    noise = QueryNoise({process: 1.0})
    rng = np.random.default_rng(0)
    edited = 0
    for title in TITLES:
        q = noise.apply(title, rng)
        assert restore(q.noisy, q.edits) == title
        assert (q.noisy != title) == bool(q.edits)
        for edit in q.edits:
            assert edit.process == process and title.split()[edit.word] == edit.before
            assert CHECKS[process](edit), edit
        edited += len(q.edits)
        assert q.noisy.split(), "a query never loses all its words"
    # At rate 1 every word the process fits is changed (a drop keeps one word).
    assert edited == sum(len(FITS[process](title.split())) for title in TITLES)


def test_mixed_noise_is_invertible_in_the_record_for_every_query() -> None:
    noise, rng = QueryNoise(), np.random.default_rng(1)
    queries = [noise.apply(TITLES[i % len(TITLES)], rng) for i in range(20_000)]
    assert all(restore(q.noisy, q.edits) == q.clean for q in queries)
    processes = {e.process for q in queries for e in q.edits}
    assert processes == set(PROCESSES)
    changed = np.mean([q.noisy != q.clean for q in queries])
    assert 0.5 < changed < 0.95  # the default rates: most queries carry some noise


def test_level_scales_the_amount_of_noise() -> None:
    noise = QueryNoise()
    counts = {}
    for level in (0.0, 0.5, 1.0):
        rng = np.random.default_rng(2)
        counts[level] = sum(len(noise.apply(t, rng, level).edits) for t in TITLES * 4)
    assert counts[0.0] == 0
    # Edits per word ~ the summed rates x level (less the few words no process fits).
    assert counts[0.5] / counts[1.0] == pytest.approx(0.5, abs=0.06)


def test_restore_refuses_a_record_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="word 1='wool' but the edit says 'wol'"):
        restore("navy wool coat", [Edit("typo", 1, "wool", "wol")])
    with pytest.raises(ValueError, match="past the end"):
        restore("navy", [Edit("typo", 3, "coat", "caot")])


@pytest.mark.parametrize(("rates", "message"), [
    ({"typo": 1.5}, r"rates\['typo'\]=1.5 must be in \[0, 1\]"),
    ({"misspell": 0.1}, r"rates\['misspell'\] is not a noise process"),
])
def test_bad_rates_are_named(rates: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueryNoise(rates)
