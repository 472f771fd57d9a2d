"""Query noise: known processes that turn a clean query into what a user types, on record.

A clean query is made of catalog words (``"acme navy wool coat"``). :class:`QueryNoise`
applies, word by word, at most one of five processes, each with its own rate:

- ``typo``: one keystroke error — a neighbouring key hit instead, a letter dropped, a
  neighbouring key hit as well, or two letters swapped (the four single-edit operations of
  Damerau, "A technique for computer detection and correction of spelling errors", CACM
  1964, with substitutions and insertions on QWERTY neighbours);
- ``synonym``: a word the catalog does not use (``coat`` → ``overcoat``);
- ``truncation``: the word cut short, as when typing stops early (``cashmere`` → ``cashm``);
- ``abbreviation``: the vowels after the first letter dropped (``leather`` → ``lthr``);
- ``drop``: the word left out (never all of them).

Every change is an :class:`Edit` naming the process, the word's index in the clean query,
and the word before and after, so :func:`restore` rebuilds the clean query from the noisy
one and its edits: for every noisy query the ideal rewrite is known. A noise ``level``
scales all rates at once (a user who reformulates types with less noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

PROCESSES = ("typo", "synonym", "truncation", "abbreviation", "drop")

#: Words a user may type for a catalog word; none of them is a catalog word.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "jacket": ("anorak",), "coat": ("overcoat", "topcoat"), "sneaker": ("trainer", "kicks"),
    "boot": ("bootie",), "shirt": ("tee", "top"), "sweater": ("jumper", "pullover"),
    "jeans": ("pants", "trousers"), "dress": ("gown", "frock"), "skirt": ("miniskirt",),
    "scarf": ("shawl", "muffler"), "hat": ("cap", "beanie"), "bag": ("handbag", "purse"),
    "belt": ("strap",), "watch": ("wristwatch",), "sandal": ("slide", "flipflop"),
    "hoodie": ("hoody",), "parka": ("puffer",), "blazer": ("sportcoat",),
    "vest": ("gilet", "waistcoat"), "glove": ("mitten",),
    "black": ("jet", "ebony"), "white": ("ivory",), "red": ("crimson", "scarlet"),
    "navy": ("darkblue",), "olive": ("khaki",), "grey": ("gray", "charcoal"),
    "beige": ("tan", "sand"), "brown": ("chocolate",), "green": ("emerald",),
    "blue": ("azure", "cobalt"), "pink": ("rose", "blush"), "yellow": ("mustard",),
    "wool": ("woolen", "merino"), "cotton": ("organic-cotton",), "leather": ("nappa",),
    "denim": ("jean",), "linen": ("flax",), "suede": ("nubuck",), "fleece": ("polar",),
    "nylon": ("polyamide",), "cashmere": ("pashmina",), "canvas": ("duck",),
}

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    where = {ch: (r, c) for r, row in enumerate(_KEYBOARD_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in where.items():
        near = [other for other, (r2, c2) in where.items()
                if other != ch and abs(r2 - r) <= 1 and abs(c2 - c) <= 1]
        out[ch] = "".join(sorted(near))
    return out


KEY_NEIGHBOURS = _neighbours()
_VOWELS = frozenset("aeiou")


@dataclass(frozen=True)
class Edit:
    """One word of the clean query changed by ``process``: ``before`` became ``after``
    (``after`` is empty for a dropped word)."""

    process: str
    word: int
    before: str
    after: str


@dataclass(frozen=True)
class NoisyQuery:
    clean: str
    noisy: str
    edits: tuple[Edit, ...]


def _typo(word: str, rng: np.random.Generator) -> str | None:
    if len(word) < 3:
        return None
    for _ in range(8):  # a few tries: some edits give the same word back ("ee" swapped)
        at = int(rng.integers(0, len(word)))
        ch = word[at]
        kind = int(rng.integers(0, 4))
        near = KEY_NEIGHBOURS.get(ch, "")
        if kind == 0 and near:
            out = word[:at] + near[int(rng.integers(0, len(near)))] + word[at + 1:]
        elif kind == 1:
            out = word[:at] + word[at + 1:]
        elif kind == 2 and near:
            out = word[:at + 1] + near[int(rng.integers(0, len(near)))] + word[at + 1:]
        elif kind == 3 and at + 1 < len(word):
            out = word[:at] + word[at + 1] + word[at] + word[at + 2:]
        else:
            continue
        if out != word:
            return out
    return None


def _synonym(word: str, rng: np.random.Generator) -> str | None:
    options = SYNONYMS.get(word)
    return options[int(rng.integers(0, len(options)))] if options else None


def _truncation(word: str, rng: np.random.Generator) -> str | None:
    if len(word) < 5:
        return None
    return word[: int(rng.integers(3, len(word) - 1))]


def _abbreviation(word: str, rng: np.random.Generator) -> str | None:
    short = word[0] + "".join(ch for ch in word[1:] if ch not in _VOWELS)
    return short if len(short) >= 2 and short != word else None


_WORD_PROCESSES = {"typo": _typo, "synonym": _synonym, "truncation": _truncation,
                   "abbreviation": _abbreviation}


@dataclass(frozen=True)
class QueryNoise:
    """Per-word rates of each process (see the module doc) at ``level`` 1.

    Processes are tried in the order of ``PROCESSES``; the first that fires and applies to
    the word changes it, so a word carries at most one edit.
    """

    rates: Mapping[str, float] = field(default_factory=lambda: {
        "typo": 0.15, "synonym": 0.12, "truncation": 0.08, "abbreviation": 0.06,
        "drop": 0.10})

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            if name not in PROCESSES:
                raise ValueError(f"rates[{name!r}] is not a noise process; "
                                 f"use one of {', '.join(PROCESSES)}")
            if not 0 <= rate <= 1:
                raise ValueError(f"rates[{name!r}]={rate} must be in [0, 1]")

    def apply(self, clean: str, rng: np.random.Generator, level: float = 1.0) -> NoisyQuery:
        if not 0 <= level <= 1:
            raise ValueError(f"level={level} must be in [0, 1]")
        words = clean.split()
        if not words:
            raise ValueError(f"clean={clean!r} must have at least one word")
        out: list[str] = []
        edits: list[Edit] = []
        kept = len(words)
        for index, word in enumerate(words):
            changed = None
            for process in PROCESSES:
                if rng.random() >= self.rates.get(process, 0.0) * level:
                    continue
                if process == "drop":
                    if kept > 1:
                        changed = ""
                else:
                    changed = _WORD_PROCESSES[process](word, rng)
                if changed is not None:
                    edits.append(Edit(process, index, word, changed))
                    break
            if changed == "":
                kept -= 1
            else:
                out.append(word if changed is None else changed)
        return NoisyQuery(clean, " ".join(out), tuple(edits))


def restore(noisy: str, edits: Sequence[Edit]) -> str:
    """The clean query behind ``noisy``, from its edits; raises if they do not fit it."""
    by_word = {edit.word: edit for edit in edits}
    if len(by_word) != len(edits):
        raise ValueError(f"edits={list(edits)} change one word twice")
    typed = iter(noisy.split())
    clean: list[str] = []
    index = 0
    while True:
        edit = by_word.pop(index, None)
        if edit is not None and edit.after == "":
            clean.append(edit.before)
        else:
            word = next(typed, None)
            if word is None:
                break
            if edit is not None:
                if word != edit.after:
                    raise ValueError(f"word {index}={word!r} but the edit says {edit.after!r}")
                word = edit.before
            clean.append(word)
        index += 1
    if by_word:
        raise ValueError(f"edits at words {sorted(by_word)} lie past the end of {noisy!r}")
    return " ".join(clean)
