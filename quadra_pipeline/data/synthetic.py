"""A seeded, wikitext-shaped corpus that the project makes itself (the default data source).

The rows look like Hugging Face ``wikitext-2-raw-v1`` rows (without the trailing newline):

    ''                                   blank line
    ' = Oderan Valkaria = '               article title
    ''
    ' The Oderan Valkaria is a 1 @,@ 204 ... , which ... . '     paragraph, ~110 tokens
    ' In 1998 the well @-@ known ... . '
    ''
    ' = = Reception = = '                 section heading
    ''
    ...

Wikitext tokenisation is imitated: tokens separated by single spaces, ``" , "``, ``" . "``,
``" @-@ "`` inside hyphenated words, ``"1 @,@ 204"`` and ``"3 @.@ 5"`` numbers, years,
parentheses and quotes as separate tokens. Words are drawn from a fixed vocabulary with
Zipf-like weights (so a paragraph repeats words, like real text) plus a few proper names made
per article. About 6 rows in 10 are longer than 10 characters once stripped, as in wikitext.

Determinism: the corpus is a sequence of articles; article ``i`` is built from two private
``random.Random`` generators seeded with a sha256 of ``(GENERATOR_VERSION, seed, i, part)``,
so the rows depend only on ``seed`` (never on global random state, hash randomisation, the
platform or the Python version's ``hash()``). The *structure* of an article (its sections and
paragraph counts, hence its row count) comes from its own generator, so ``rows(start=k)``
skips whole articles without writing their text.

Bump :data:`GENERATOR_VERSION` whenever the output for a given seed changes: it is part of the
fingerprint, so runs trained on the old text are not mistaken for runs on the new one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .sources import DataSourceError, check_start

__all__ = ["GENERATOR_VERSION", "SyntheticSource", "generate_rows"]

#: Part of the fingerprint; bump it when the rows for a seed change.
GENERATOR_VERSION = 1

# Vocabulary -----------------------------------------------------------------------------------
# Ordered roughly by frequency: the Zipf weights below make the first words the most common.

_FUNCTION_WORDS = (
    "the of and in to a was is for on as by with that at from his it an were which are "
    "this be its also had has first their after but not one two or he they her been new "
    "into during between more most only other over when where while who all about three "
    "than these through under until both there later before being would some such could "
    "many several however would each following since against including within 's"
).split()

_CONTENT_WORDS = (
    "season game city river species album song film team war army church league series "
    "station line world year years time state national north south west east century "
    "building island government party record number club group role company division "
    "school family band track road area town ship ships battle storm hurricane tropical "
    "episode character characters music system version release released played became "
    "called known used made took began received described named built led won returned "
    "found wrote said included continued remained moved considered published produced "
    "reached destroyed located designed appeared announced early late major final second "
    "third large small high long main original public british american french german "
    "royal military early local single common critical commercial positive general "
    "population village county district province region coast valley bridge tower castle "
    "temple museum college university court council election campaign attack forces "
    "troops fleet port summer winter history design production development reception "
    "critics fans audience player players manager coach goals match cup championship "
    "chart singles video award awards writer director actor producer story novel book "
    "poem painting style form structure water land miles kilometres feet metres people "
    "members leader king queen emperor bishop saint father son wife daughter brother"
).split()

_NAME_SYLLABLES = (
    "val kyr ia ode ran mar ten hol ber gan sel vin tor ash lin dor mel ric an el "
    "us ca mon ter lo sa ri ven bra dal gor fen wyn ston ley ham ford"
).split()

_SECTION_TITLES = (
    "History", "Early life", "Career", "Background", "Plot", "Gameplay", "Development",
    "Reception", "Legacy", "Release", "Design", "Music", "Cast", "Geography", "Climate",
    "Description", "Aftermath", "Production", "Personal life", "Critical response",
    "Track listing", "Awards", "Construction", "Service history", "Taxonomy", "Habitat",
    "Distribution", "Composition", "Synopsis", "Impact", "Meteorological history",
    "Preparations", "Demographics", "Economy", "Architecture", "Casualties", "Reviews",
)

_VOCAB = _FUNCTION_WORDS + _CONTENT_WORDS
# Zipf-like: weight 1 / (rank + 2.7); cumulative weights for random.choices.
_CUM_WEIGHTS = list(itertools.accumulate(1.0 / (rank + 2.7) for rank in range(len(_VOCAB))))

# Paragraph and article shape. Sentences are added until the paragraph reaches its target;
# the overshoot (half a sentence, ~9 tokens) brings the mean to ~110 tokens.
_PARAGRAPH_TARGET = (100, 24, 35, 220)  # mean, sd, min, max (tokens)
_SENTENCE_WORDS = (7, 28)
_PARAGRAPHS_PER_SECTION = ((1, 2, 3, 4), (30, 35, 20, 15))
_SECTIONS_PER_ARTICLE = (2, 7)


@dataclass(frozen=True)
class _Section:
    level: int  # 1 = article title, 2 = section, 3 = subsection
    paragraphs: int

    @property
    def n_rows(self) -> int:
        # blank, heading, blank, paragraphs...
        return 3 + self.paragraphs


def _derived_seed(seed: int, article: int, part: str) -> int:
    text = f"quadra-synthetic/v{GENERATOR_VERSION}/{seed}/{article}/{part}"
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:16], "big")


def _structure(seed: int, article: int) -> list[_Section]:
    rng = random.Random(_derived_seed(seed, article, "structure"))
    counts, weights = _PARAGRAPHS_PER_SECTION
    sections = [_Section(1, rng.choices(counts, weights)[0])]
    for _ in range(rng.randint(*_SECTIONS_PER_ARTICLE)):
        sections.append(_Section(2, rng.choices(counts, weights)[0]))
        if rng.random() < 0.2:
            sections.append(_Section(3, rng.choices(counts, weights)[0]))
    return sections


def _article_rows(seed: int, article: int, sections: list[_Section]) -> list[str]:
    rng = random.Random(_derived_seed(seed, article, "content"))
    names = [_make_name(rng) for _ in range(rng.randint(2, 5))]
    rows: list[str] = []
    for section in sections:
        rows.append("")
        if section.level == 1:
            title = " ".join(rng.sample(names, k=min(len(names), rng.randint(1, 2))))
            rows.append(f" = {title} = ")
        else:
            marks = " ".join(["="] * section.level)
            rows.append(f" {marks} {rng.choice(_SECTION_TITLES)} {marks} ")
        rows.append("")
        for _ in range(section.paragraphs):
            rows.append(" " + " ".join(_paragraph(rng, names)) + " ")
    return rows


def _make_name(rng: random.Random) -> str:
    return "".join(rng.choices(_NAME_SYLLABLES, k=rng.randint(2, 3))).capitalize()


def _number(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.45:
        return [str(rng.randint(1800, 2016))]
    if kind < 0.7:
        return [str(rng.randint(2, 99))]
    if kind < 0.85:
        return [str(rng.randint(1, 99)), "@,@", f"{rng.randint(0, 999):03d}"]
    return [str(rng.randint(0, 99)), "@.@", str(rng.randint(0, 9))]


def _paragraph(rng: random.Random, names: list[str]) -> list[str]:
    mean, sd, low, high = _PARAGRAPH_TARGET
    target = min(high, max(low, round(rng.gauss(mean, sd))))
    tokens: list[str] = []
    while len(tokens) < target:
        tokens.extend(_sentence(rng, names))
    return tokens


def _sentence(rng: random.Random, names: list[str]) -> list[str]:
    words = rng.choices(_VOCAB, cum_weights=_CUM_WEIGHTS, k=rng.randint(*_SENTENCE_WORDS))
    out: list[str] = []
    in_parens = False
    for word in words:
        r = rng.random()
        if r < 0.08:
            out.append(rng.choice(names))
        elif r < 0.12:
            out.extend(_number(rng))
        elif r < 0.145:
            out.extend((word, "@-@", rng.choice(_CONTENT_WORDS)))
        else:
            out.append(word)
        r = rng.random()
        if r < 0.07:
            out.append(",")
        elif r < 0.08 and not in_parens:
            out.append("(")
            in_parens = True
        elif r < 0.095 and in_parens:
            out.append(")")
            in_parens = False
        elif r < 0.1:
            out.extend(('"', rng.choice(_CONTENT_WORDS).capitalize(), '"'))
    while out[-1] in (",", "("):
        if out.pop() == "(":
            in_parens = False
    if in_parens:
        out.append(")")
    first = out[0]
    if first.islower():
        out[0] = first.capitalize()
    out.append(".")
    return out


def generate_rows(seed: int = 0, start: int = 0) -> Iterator[str]:
    """The endless synthetic row stream for `seed`, beginning at row `start`."""
    article = 0
    skip = start
    while True:
        sections = _structure(seed, article)
        n = sum(s.n_rows for s in sections)
        if skip >= n:  # skip the whole article without writing its text
            skip -= n
        else:
            rows = _article_rows(seed, article, sections)
            yield from rows[skip:] if skip else rows
            skip = 0
        article += 1


def _as_int(value: object) -> int | None:
    """`value` as an int (ints, numpy integers...), or None; booleans are not integers here."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


class SyntheticSource:
    """The seeded wikitext-shaped corpus: ``open_source("synthetic", seed=0, n_rows=None)``.

    ``seed``: any int (default 0); the same seed gives the same rows on any machine.
    ``n_rows``: stop after this many rows (default None: endless).
    """

    name = "synthetic"

    def __init__(self, seed: int = 0, n_rows: int | None = None, **unknown: Any) -> None:
        if unknown:
            from .sources import check_options

            check_options("synthetic", unknown, ("seed", "n_rows"))
        as_int = _as_int(seed)
        if as_int is None:
            raise DataSourceError(
                f"synthetic source: seed must be an integer, got {type(seed).__name__} {seed!r}"
            )
        seed = as_int
        if n_rows is not None:
            as_int = _as_int(n_rows)
            if as_int is None or as_int < 0:
                raise DataSourceError(
                    "synthetic source: n_rows must be a non-negative integer or None, "
                    f"got {n_rows!r}"
                )
            n_rows = as_int
        self.seed = seed
        self.n_rows = n_rows
        self.label = f"synthetic source (seed {seed})"

    def rows(self, start: int = 0) -> Iterator[str]:
        start = check_start(start)
        if self.n_rows is None:
            return generate_rows(self.seed, start)
        return itertools.islice(generate_rows(self.seed, start), max(0, self.n_rows - start))

    def describe(self) -> dict:
        return {
            "kind": self.name,
            "options": {"seed": self.seed, "n_rows": self.n_rows},
            "generator_version": GENERATOR_VERSION,
            "rows": self.n_rows,
            "bytes": None,
        }

    def fingerprint(self) -> str:
        identity: dict[str, Any] = {
            "kind": self.name,
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "n_rows": self.n_rows,
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed!r}, n_rows={self.n_rows!r})"
