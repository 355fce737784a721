"""ruler.py: the RULER-style task generator and scorer. Every sample is checked against an independent
reading of its own prompt (needles found by a regex, the variable chain resolved, the words counted), with
the real tokenizer of the default model for the lengths."""
from __future__ import annotations

import collections
import re

import pytest

from adamas_gguf import ruler

LENGTH = 900


@pytest.fixture(scope="module")
def n_tokens(llm):
    return lambda s: len(llm.tokenize(s.encode("utf-8")))


@pytest.fixture(scope="module")
def samples(n_tokens):
    return {t: ruler.make_sample(t, n_tokens, LENGTH, seed=7, index=0) for t in ruler.TASKS}


NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")


def needles(context: str) -> list:
    return [(k, v) for _, k, v in NEEDLE_RE.findall(context)]


def asked_keys(query: str) -> list:
    m = re.search(r"for (.+?) mentioned in the provided text\?", query)
    return [k.strip() for k in re.split(r", and |, ", m.group(1))]


def test_lengths_fit_and_fill(samples, n_tokens):
    for t, s in samples.items():
        n = n_tokens(s.prompt)
        assert n <= LENGTH, t
        # the haystack is grown to the length: the next unit would not fit (units are < 10% of it)
        assert n >= 0.9 * LENGTH, (t, n)
        assert s.prompt.endswith(s.query) and s.expected


def test_niah_answers_from_the_prompt(samples):
    for t in (x for x in ruler.TASKS if x.startswith("niah")):
        s = samples[t]
        found = needles(s.context)
        keys = asked_keys(s.query)
        want = [v for k in keys for kk, v in found if kk == k]
        assert sorted(want) == sorted(s.expected), t
        assert len(set(s.expected)) == len(s.expected), t
        by_key = collections.Counter(k for k, _ in found)
        for k in keys:  # the asked keys hold only their own values (4 for multivalue)
            assert by_key[k] == (4 if t == "niah_multivalue" else 1), (t, k)
    assert len(needles(samples["niah_multikey_1"].context)) == 4  # 3 distractors
    assert len(needles(samples["niah_multikey_2"].context)) > 20  # a haystack of needles
    assert ruler.NOISE in samples["niah_single_1"].context
    assert ruler.NOISE not in samples["niah_single_2"].context
    assert samples["niah_single_3"].kind == "uuid" and samples["niah_multikey_3"].kind == "uuid"


def test_variable_tracking_chain(samples):
    s = samples["vt"]
    value = re.search(r"assigned the value (\d+)", s.query).group(1)
    env: dict = {}
    for name, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", s.context):
        env[name] = env.get(rhs[4:], None) if rhs.startswith("VAR ") else rhs
    holders = sorted(n for n, v in env.items() if v == value)
    assert holders == sorted(s.expected) and len(holders) == 5


def test_common_words_are_the_most_frequent(samples):
    s = samples["cwe"]
    words = re.findall(r"\d+\. (\w+)", s.context)
    counts = collections.Counter(words)
    top = [w for w, _ in counts.most_common(ruler.CWE_COMMON)]
    assert sorted(top) == sorted(s.expected)
    rare = [c for w, c in counts.items() if w not in s.expected]
    assert rare and set(rare) == {ruler.CWE_RARE_FREQ}
    assert min(counts[w] for w in s.expected) > ruler.CWE_RARE_FREQ
    assert len(rare) * ruler.CWE_RARE_FREQ >= ruler.CWE_COMMON * counts[s.expected[0]]  # not only common words


def test_qa_fact(samples):
    s = samples["qa"]
    (answer,) = s.expected
    person = re.search(r"(?:does|of|that) ([A-Z][a-z]+)", s.query).group(1)
    facts = [f for f in re.split(r"(?<=\.) ", s.context) if person in f]
    assert len(facts) == 1 and answer in facts[0]
    assert s.context.count(answer) == 1
    # the other planted facts are distractors about other people
    assert len(re.findall(r"lives in the city of|favourite food of|keeps a pet named", s.context)) == ruler.QA_FACTS


def test_deterministic_and_needles_fixed_across_lengths(n_tokens, samples):
    again = ruler.make_sample("niah_multiquery", n_tokens, LENGTH, seed=7, index=0)
    assert again == samples["niah_multiquery"]
    longer = ruler.make_sample("niah_multiquery", n_tokens, 2 * LENGTH, seed=7, index=0)
    assert longer.expected == again.expected and len(longer.context) > 1.5 * len(again.context)
    other = ruler.make_sample("niah_multiquery", n_tokens, LENGTH, seed=7, index=1)
    assert other.expected != again.expected
    assert ruler.make_sample("niah_multiquery", n_tokens, LENGTH, seed=8).expected != again.expected


def test_score_matches_whole_items():
    assert ruler.score("The number is 1234567.", ["1234567"], "number") == 1.0
    assert ruler.score("12345678 and 234567", ["1234567"], "number") == 0.0  # no match inside another item
    assert ruler.score("1111111, 2222222", ["1111111", "2222222", "3333333", "4444444"], "number") == 0.5
    u = "4f3c69a5-4817-4408-9236-4d08db78e30e"
    assert ruler.score(f": {u.upper()}.", [u], "uuid") == 1.0
    assert ruler.score(u[:-1], [u], "uuid") == 0.0
    assert ruler.score("they are: UNTAE, NOKSPX and TSQPY", ["UNTAE", "NOKSP", "TSQPY"], "word") == pytest.approx(2 / 3)
    assert ruler.complete("a, b", ["b", "a"], "word") and not ruler.complete("a", ["a", "b"], "word")


def test_errors(n_tokens):
    with pytest.raises(ruler.RulerError, match="unknown task 'niah'"):
        ruler.make_sample("niah", n_tokens, 1000, 0)
    with pytest.raises(ruler.RulerError, match=r"task vt needs more than 50 tokens \(at least \d+\)"):
        ruler.make_sample("vt", n_tokens, 50, 0)
    with pytest.raises(ruler.RulerError, match="task cwe needs more than 200 tokens"):
        ruler.make_sample("cwe", n_tokens, 200, 0)
    assert ruler.parse_tasks(["vt", "all"]) == list(ruler.TASKS)
    assert ruler.parse_tasks(["qa", "vt", "qa"]) == ["vt", "qa"]
    with pytest.raises(ruler.RulerError, match="unknown task 'x'"):
        ruler.parse_tasks(["x"])
