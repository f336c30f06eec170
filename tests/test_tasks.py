"""Task generators: equal lengths, correct answers, determinism, constraints enforced."""

import pytest
import torch

from lib.core.errors import UserError
from lib.tools.toy import build_tokenizer
from tasks import TASK_NAMES, TASKS, docstring, greater_than, ioi, sva
from tasks.base import single_tokens

N = 60


@pytest.fixture(scope="module")
def toy_tok():
    return build_tokenizer()


@pytest.fixture(params=["toy_tok", "gpt2_tokenizer"])
def tok(request):
    return request.getfixturevalue(request.param)


def decode1(tok, i):
    return tok.decode([int(i)])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_lengths_determinism(tok, name):
    a = TASKS[name].build(tok, N, 7)
    b = TASKS[name].build(tok, N, 7)
    c = TASKS[name].build(tok, N, 8)
    assert len(a) == N and a.clean.shape == a.corrupt.shape
    for i in range(N):
        n = int(a.lengths[i])
        assert a.clean[i, 0] == tok.bos_token_id
        # the texts re-tokenize to exactly the stored ids, and clean/corrupted have the same length
        assert a.clean[i, 1:n].tolist() == tok(a.info.clean_text[i], add_special_tokens=False)["input_ids"]
        assert a.corrupt[i, 1:n].tolist() == tok(a.info.corrupt_text[i], add_special_tokens=False)["input_ids"]
        assert (a.clean[i, n:] == a.pad_id).all()
    assert torch.equal(a.clean, b.clean) and torch.equal(a.correct, b.correct)
    assert a.info.equals(b.info)
    assert not torch.equal(a.clean[:, :5], c.clean[:, :5]) or not a.info.equals(c.info)
    for i in range(N):  # an answer is never also a wrong answer
        assert not set(a.correct[i][a.correct[i] >= 0].tolist()) & set(a.wrong[i][a.wrong[i] >= 0].tolist())


def test_ioi_answers(tok):
    for corruption in ("abc", "s2"):
        d = ioi.build(tok, N, 0, corruption=corruption)
        for i in range(N):
            row = d.info.iloc[i]
            clean, corrupt = row.clean_text, row.corrupt_text
            assert decode1(tok, d.correct[i, 0]) == " " + row.io_name
            assert decode1(tok, d.wrong[i, 0]) == " " + row.s_name
            assert clean.count(" " + row.io_name + " ") + clean.count(" " + row.io_name + ",") >= 1
            assert clean.split().count(row.s_name) + clean.count(row.s_name + ",") >= 2
            if corruption == "abc":
                assert row.io_name not in corrupt.split() and row.s_name not in corrupt.split()
            else:  # only the second subject mention changes
                assert corrupt.count(row.s_name) == clean.count(row.s_name) - 1
    assert set(d.info.order) == {"ABBA", "BABA"}


def test_greater_than_answers(tok):
    d = greater_than.build(tok, N, 0)
    for i in range(N):
        yy = int(d.info.yy[i])
        assert 1 <= yy <= 98
        assert sorted(int(decode1(tok, t)) for t in d.correct[i] if t >= 0) == list(range(yy + 1, 100))
        assert sorted(int(decode1(tok, t)) for t in d.wrong[i] if t >= 0) == list(range(0, yy + 1))
        assert d.info.corrupt_text[i].split()[6].endswith("01")
        century = d.info.clean_text[i].split()[-1]
        assert d.info.clean_text[i].split()[6] == f"{century}{yy:02d}"


def test_docstring_answers(tok):
    d = docstring.build(tok, N, 0)
    for i in range(N):
        text = d.info.clean_text[i]
        args = text.split("(")[1].split(")")[0].split(", ")
        documented = [line.split(":param ")[1].split(":")[0] for line in text.splitlines() if ":param " in line]
        c = d.info.answer_param[i]
        assert args.index(c) == args.index(documented[-1]) + 1  # the arg after the last documented one
        assert decode1(tok, d.correct[i, 0]) == " " + c
        assert {decode1(tok, t).strip() for t in d.wrong[i] if t >= 0} == set(args) - {"self", c}
        cargs = d.info.corrupt_text[i].split("(")[1].split(")")[0].split(", ")
        assert cargs[:3] == args[:3] and cargs[5:] == args[5:] and cargs[3:5] != args[3:5]


def test_sva_answers(tok):
    d = sva.build(tok, N, 0)
    sing = {" " + s for s, _ in sva.ANSWER_VERBS}
    plur = {" " + p for _, p in sva.ANSWER_VERBS}
    for i in range(N):
        row = d.info.iloc[i]
        correct = {decode1(tok, t) for t in d.correct[i] if t >= 0}
        assert correct <= (sing if row.number == "singular" else plur) and len(correct) > 0
        assert row.clean_text.split()[1] != row.corrupt_text.split()[1]
        assert row.clean_text.split()[2:] == row.corrupt_text.split()[2:]
    assert set(d.info.structure) == set(sva.STRUCTURES)


def test_real_tokenizer_word_lists_all_pass(gpt2_tokenizer):
    """With GPT-2's tokenizer every IOI name/place/object, greater-than noun and docstring name is one token."""
    tok = gpt2_tokenizer
    assert len(ioi.NAMES) == 99
    for words in (ioi.NAMES, ioi.PLACES, ioi.OBJECTS, greater_than.NOUNS, docstring.NAMES, docstring.WORDS):
        assert single_tokens(tok, words)[1] == []
    assert len(greater_than.valid_years(tok)) > 500
    for name in TASK_NAMES:
        assert TASKS[name].build(tok, 20, 0).vocab_dropped == {} or name == "sva"


def test_constraints_enforced(gpt2_tokenizer, monkeypatch):
    tok = gpt2_tokenizer
    # a multi-token name is dropped from the vocabulary, reported, and never used
    monkeypatch.setattr(ioi, "NAMES", ioi.NAMES[:10] + ["Xzqwvplonk"])
    d = ioi.build(tok, 40, 0)
    assert d.vocab_dropped == {"names": ["Xzqwvplonk"]}
    assert not d.info.clean_text.str.contains("Xzqwvplonk").any()
    # SVA pairs whose singular and plural differ in token count are dropped, counted
    d = sva.build(tok, 200, 0)
    assert d.n_dropped > 0
    # too few valid words: a clear error, not a crash
    monkeypatch.setattr(ioi, "NAMES", ioi.NAMES[:3])
    with pytest.raises(UserError, match="only 3 IOI names"):
        ioi.build(tok, 10, 0)


def test_impossible_prompt_count(toy_tok, monkeypatch):
    with pytest.raises(UserError, match="at least 1"):
        ioi.build(toy_tok, 0, 0)
    monkeypatch.setattr(sva, "NOUNS", [("man", "xqzzyplurals"), ("boy", "zzqboys")])  # all break a constraint
    with pytest.raises(UserError, match="satisfy the tokenizer"):
        sva.build(toy_tok, 5, 0)
