"""RULER-style synthetic long-context tasks (after Hsieh et al., "RULER: What's the Real Context Size of Your
Long-Context Language Models?", 2024), generated offline from a seed: no dataset is downloaded.

Each task makes a prompt of at most a given number of tokens (the haystack is grown until the next size
would not fit), ending with a question and an answer prefix, and a tuple of expected items. An answer is
scored by exact match of items: the items of the answer's kind (numbers, UUIDs or words) are extracted
from the generated text, and the score is the share of the expected items among them (RULER's "all"
metric, at item level, so that 123 does not count inside 1234).

Tasks (RULER's names):
  niah_single_1    one needle (key -> 7-digit number) in repeated noise sentences
  niah_single_2    the same in an essay-like haystack (sentences drawn from word lists)
  niah_single_3    the same with a UUID as the value
  niah_multikey_1  the needle among 3 distractor needles of other keys, essay haystack
  niah_multikey_2  the haystack is made of needles (word keys, numbers): find the one asked for
  niah_multikey_3  the same with UUID keys and UUID values
  niah_multivalue  4 needles with the same key: every value is expected
  niah_multiquery  4 needles with different keys, all 4 asked at once
  vt               variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... (4 hops) in noise; every
                   variable that holds the value is expected
  cwe              common-words extraction: a numbered list where 10 words appear many times and the
                   others 3 times; the 10 frequent words are expected
  qa               a question over facts planted in an essay haystack (one asked, the others distractors)

Standard library only; everything is drawn from `random.Random` seeded with a string (stable across runs
and Python versions).
"""
from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "qa")

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_ADJ = ("quiet", "bright", "hollow", "ancient", "silver", "gentle", "rapid", "frozen", "golden", "crimson",
        "distant", "humble", "eager", "narrow", "shallow", "steady", "tidy", "vivid", "wooden", "brave",
        "calm", "dusty", "fierce", "grumpy", "honest", "jolly", "lucky", "misty", "noble", "polite",
        "rusty", "sleepy", "tender", "wild", "young", "clever", "fancy", "gloomy", "hungry", "icy",
        "lazy", "mellow", "nervous", "proud", "royal", "sandy", "tiny", "velvet", "witty", "zealous")
_NOUN = ("lantern", "harbor", "meadow", "falcon", "compass", "garden", "violin", "canyon", "glacier", "orchard",
         "beacon", "castle", "dolphin", "ember", "forest", "granite", "helmet", "island", "jungle", "kettle",
         "lagoon", "marble", "nectar", "oyster", "pebble", "quarry", "ribbon", "saddle", "tunnel", "umbrella",
         "valley", "window", "yacht", "anchor", "bridge", "candle", "desert", "engine", "feather", "goblet",
         "hammer", "igloo", "jacket", "kitten", "ladder", "mirror", "needle", "otter", "parrot", "rocket",
         "spoon", "tiger", "violet", "walrus", "wizard", "basket", "cactus", "drum", "fountain", "puzzle")
_VERB = ("watches", "carries", "follows", "remembers", "paints", "builds", "finds", "guards", "visits",
         "describes", "measures", "repairs", "collects", "imagines", "studies", "crosses", "shelters", "greets")
_PREP = ("near", "behind", "beside", "above", "under", "across", "beyond", "around")
_ESSAY = (
    "The {a} {n} {v} the {a2} {n2} {p} the {n3}.",
    "Nobody expected that a {a} {n} would matter so much to the {n2}.",
    "In the morning the {n} {v} a {a} {n2}, and by evening it {v2} the {n3}.",
    "Some people say the {n} is {a}, but most of them have never seen a {a2} {n2}.",
    "It is worth asking why the {a} {n} {v} the {n2} at all.",
    "Every {n} has a {a} side, and the {n2} is no exception.",
    "When the {n} is {a}, the {n2} {v} the {a2} {n3} {p} the {n4}.",
    "The story of the {a} {n} is really a story about the {n2}.",
)
_CONS = "bcdfghjklmnprstvz"
_VOW = "aeiou"

NEEDLE = "One of the special magic {what} for {key} is: {value}."
_WHAT = {"number": "numbers", "uuid": "uuids"}


@dataclass(frozen=True)
class Sample:
    """One prompt: `context` then `query` (the question and the answer prefix the model continues);
    `expected`: the items a full answer holds; `kind`: what an item is (number, uuid, word)."""
    task: str
    context: str
    query: str
    expected: tuple
    kind: str

    @property
    def prompt(self) -> str:
        return self.context + self.query


class RulerError(ValueError):
    """A request that cannot be met (an unknown task, a length too short for a task): one line."""


# ------------------------------------------------------------------------------------------------
# scoring

_ITEM_RE = {"number": re.compile(r"\d+"),
            "uuid": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
            "word": re.compile(r"[a-z]+")}


def items(text: str, kind: str) -> list:
    """The items of `kind` in `text`, in order (words and UUIDs lower-cased)."""
    return _ITEM_RE[kind].findall(text if kind == "number" else text.lower())


def score(answer: str, expected: Sequence[str], kind: str) -> float:
    """The share of the expected items found, as items, in the answer (0.0 to 1.0)."""
    want = {e.lower() for e in expected}
    return len(want & set(items(answer, kind))) / len(want)


def complete(answer: str, expected: Sequence[str], kind: str) -> bool:
    """Every expected item is in the answer: generating more cannot change its score."""
    return score(answer, expected, kind) == 1.0


# ------------------------------------------------------------------------------------------------
# generators: gen(rng_needles, rng_hay, n) -> Sample; n is the haystack size, searched by `make_sample`


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_CONS) + rng.choice(_VOW) for _ in range(rng.choice((2, 3, 3))))


def _distinct(rng: random.Random, make: Callable[[random.Random], str], k: int, avoid=()) -> list:
    out, seen = [], set(avoid)
    while len(out) < k:
        w = make(rng)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _key(rng: random.Random) -> str:
    return f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1000000, 9999999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sentence(rng: random.Random) -> str:
    t = rng.choice(_ESSAY)
    return t.format(a=rng.choice(_ADJ), a2=rng.choice(_ADJ), n=rng.choice(_NOUN), n2=rng.choice(_NOUN),
                    n3=rng.choice(_NOUN), n4=rng.choice(_NOUN), v=rng.choice(_VERB), v2=rng.choice(_VERB),
                    p=rng.choice(_PREP))


def _haystack(kind: str, rng: random.Random, n: int) -> list:
    """n haystack units (sentences) of `kind`: noise or essay."""
    return [NOISE] * n if kind == "noise" else [_sentence(rng) for _ in range(n)]


def _insert(units: list, lines: Sequence[str], rng: random.Random, ordered: bool = False) -> str:
    """`lines` inserted at random depths of `units` (in their order when `ordered`), joined with spaces."""
    pos = [rng.randint(0, len(units)) for _ in lines]
    if ordered:
        pos.sort()
    out = list(units)
    for p, line in sorted(zip(pos, lines), key=lambda x: x[0], reverse=True):
        out.insert(p, line)
    return " ".join(out)


_NIAH_INTRO = ("Some special magic {what} are hidden within the following text. Make sure to memorize them. "
               "I will quiz you about the {what} afterwards.\n")


def _niah_query(keys: Sequence[str], what: str, several: bool) -> str:
    one = what[:-1]
    if len(keys) == 1 and not several:
        return (f"\nWhat is the special magic {one} for {keys[0]} mentioned in the provided text? "
                f"The special magic {one} for {keys[0]} mentioned in the provided text is")
    ks = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    return (f"\nWhat are all the special magic {what} for {ks} mentioned in the provided text? "
            f"The special magic {what} for {ks} mentioned in the provided text are")


def _niah(task: str, hay: str, key_kind: str, value_kind: str, n_keys: int = 1, n_values: int = 1,
          n_distract: int = 0, n_query: int = 1):
    def gen(rn: random.Random, rh: random.Random, n: int) -> Sample:
        key_of = {"word": _key, "uuid": _uuid}[key_kind]
        val_of = {"number": _number, "uuid": _uuid}[value_kind]
        what = _WHAT[value_kind]
        keys = _distinct(rn, key_of, n_keys + n_distract)
        values = [_distinct(rn, val_of, n_values) for _ in keys]
        needles = [NEEDLE.format(what=what, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        if hay == "needles":  # the haystack itself: needles of other keys
            others = _distinct(rh, key_of, n, avoid=keys)
            units = [NEEDLE.format(what=what, key=k, value=val_of(rh)) for k in others]
        else:
            units = _haystack(hay, rh, n)
        context = _NIAH_INTRO.format(what=what) + _insert(units, needles, rn)
        asked = keys[:n_query]
        expected = tuple(v for vs in values[:n_query] for v in vs)
        return Sample(task, context, _niah_query(asked, what, n_values > 1 or n_query > 1), expected, value_kind)
    return gen


def _vt(rn: random.Random, rh: random.Random, n: int) -> Sample:
    names = _distinct(rn, lambda r: "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)), 5)
    value = str(rn.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    context = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
               + _insert(_haystack("noise", rh, n), chain, rn, ordered=True))
    query = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
             f"Answer: According to the chain(s) of variable assignment in the text above, {len(names)} "
             f"variables are assigned the value {value}, they are:")
    return Sample("vt", context, query, tuple(names), "word")


CWE_COMMON, CWE_RARE_FREQ = 10, 3
CWE_COMMON_FREQS = (30, 20, 10, 6)  # the first that fits the length (RULER: 30)


def _cwe(freq: int):
    def gen(rn: random.Random, rh: random.Random, n: int) -> Sample:
        common = _distinct(rn, _word, CWE_COMMON)
        rare = _distinct(rh, _word, n, avoid=common)
        words = common * freq + rare * CWE_RARE_FREQ
        rh.shuffle(words)
        context = ("Below is a numbered list of words. In these words, some appear more often than others. "
                   "Memorize the ones that appear most often.\n"
                   + " ".join(f"{i + 1}. {w}" for i, w in enumerate(words)))
        query = (f"\nQuestion: What are the {CWE_COMMON} most common words in the above list? "
                 f"Answer: The top {CWE_COMMON} words that appear most often in the list are:")
        return Sample("cwe", context, query, tuple(common), "word")
    return gen


_FACTS = (("{p} lives in the city of {o}.", "In which city does {p} live?"),
          ("The favourite food of {p} is called {o}.", "What is the favourite food of {p} called?"),
          ("{p} keeps a pet named {o}.", "What is the name of the pet that {p} keeps?"))
QA_FACTS = 6


def _qa(rn: random.Random, rh: random.Random, n: int) -> Sample:
    people = [w.capitalize() for w in _distinct(rn, _word, QA_FACTS)]
    objs = [w.capitalize() for w in _distinct(rn, _word, QA_FACTS, avoid={p.lower() for p in people})]
    kinds = [rn.randrange(len(_FACTS)) for _ in people]
    facts = [_FACTS[k][0].format(p=p, o=o) for p, o, k in zip(people, objs, kinds)]
    context = ("Answer the question based on the facts given in the following text. Only give the answer.\n\n"
               + _insert(_haystack("essay", rh, n), facts, rn))
    t = rn.randrange(QA_FACTS)
    query = f"\nQuestion: {_FACTS[kinds[t]][1].format(p=people[t])} Answer:"
    return Sample("qa", context, query, (objs[t],), "word")


_GEN = {
    "niah_single_1": _niah("niah_single_1", "noise", "word", "number"),
    "niah_single_2": _niah("niah_single_2", "essay", "word", "number"),
    "niah_single_3": _niah("niah_single_3", "essay", "word", "uuid"),
    "niah_multikey_1": _niah("niah_multikey_1", "essay", "word", "number", n_distract=3),
    "niah_multikey_2": _niah("niah_multikey_2", "needles", "word", "number"),
    "niah_multikey_3": _niah("niah_multikey_3", "needles", "uuid", "uuid"),
    "niah_multivalue": _niah("niah_multivalue", "essay", "word", "number", n_values=4),
    "niah_multiquery": _niah("niah_multiquery", "essay", "word", "number", n_keys=4, n_query=4),
    "vt": _vt,
    "qa": _qa,
}
# the needle-haystack tasks draw at most len(_ADJ) * len(_NOUN) distinct word keys
_MAX_UNITS = {"niah_multikey_2": len(_ADJ) * len(_NOUN) - 1}


def _generate(task: str, gen, seed: str, n: int) -> Sample:
    # two streams: the needles (and their depths) do not depend on n, so the search grows only the haystack
    return gen(random.Random(f"{seed}/needles"), random.Random(f"{seed}/haystack/{n}"), n)


def _largest(task: str, gen, seed: str, fits: Callable[[Sample], bool]) -> tuple:
    """(the sample with the largest haystack size n that fits, n); (None, -1) if even n = 0 does not fit."""
    cap = _MAX_UNITS.get(task)
    if not fits(_generate(task, gen, seed, 0)):
        return None, -1
    lo, hi = 0, 1
    while (cap is None or hi <= cap) and fits(_generate(task, gen, seed, hi)):
        lo, hi = hi, hi * 2
    if cap is not None:
        hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(_generate(task, gen, seed, mid)) else (lo, mid)
    return _generate(task, gen, seed, lo), lo


def make_sample(task: str, n_tokens: Callable[[str], int], length: int, seed: int, index: int = 0) -> Sample:
    """The sample `index` of `task` for this seed: the largest haystack whose prompt has at most `length`
    tokens (`n_tokens(text)` counts them, as the model tokenizes the whole prompt)."""
    if task not in TASKS:
        raise RulerError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    base = f"{seed}/{task}/{index}"

    def fits(s: Sample) -> bool:
        return n_tokens(s.prompt) <= length

    if task == "cwe":
        # the most frequent common words that leave at least as many rare entries as common ones
        for freq in CWE_COMMON_FREQS:
            s, n = _largest(task, _cwe(freq), base, fits)
            if s is not None and CWE_RARE_FREQ * n >= CWE_COMMON * freq:
                return s
        s = None
    else:
        s, _ = _largest(task, _GEN[task], base, fits)
    if s is None:
        need = n_tokens(_generate(task, _cwe(CWE_COMMON_FREQS[-1]) if task == "cwe" else _GEN[task], base, 0).prompt)
        raise RulerError(f"task {task} needs more than {length} tokens (at least {need})")
    return s


def parse_tasks(names: Sequence[str]) -> list:
    """Task names, or `all`; in TASKS order, each once. Raises RulerError for an unknown one."""
    want = set()
    for n in names:
        if n == "all":
            want.update(TASKS)
        elif n in TASKS:
            want.add(n)
        else:
            raise RulerError(f"unknown task {n!r} (tasks: all, {', '.join(TASKS)})")
    return [t for t in TASKS if t in want]
