"""The same prompts for two models: each model builds a task with its own tokenizer from the same seed; models
that share a vocabulary see identical token ids, others must agree on every prompt's text and answers."""

from __future__ import annotations

from lib.core.errors import UserError


def _texts(data, tokenizer) -> list[tuple]:
    """Each row's (prompt text, correct answers' text, wrong answers' text), decoded from its token ids."""
    rows = []
    for i in range(len(data)):
        n = int(data.lengths[i])
        correct = [t for t in data.correct[i].tolist() if t >= 0]
        wrong = [t for t in data.wrong[i].tolist() if t >= 0]
        rows.append((tokenizer.decode(data.clean[i, :n].tolist()), tokenizer.decode(correct), tokenizer.decode(wrong)))
    return rows


def agreement(models: list[str], opts) -> dict:
    """Per task {same_vocabulary, same_positions}: whether the two models' tokenizers give the same token ids,
    and whether every prompt has the same length in both (positions then correspond). Models of different
    vocabularies whose prompts or answers differ on a task are refused in one line, naming the task."""
    from lib.core.model import tokenizer_of
    from lib.methods.faithfulness import discovery_and_held_out

    tok_a, tok_b = tokenizer_of(models[0]), tokenizer_of(models[1])
    same_vocabulary = tok_a.get_vocab() == tok_b.get_vocab()
    out = {}
    for task in opts.tasks:
        if same_vocabulary:
            out[task] = {"same_vocabulary": True, "same_positions": True}
            continue
        a = discovery_and_held_out(task, tok_a, opts.n_prompts, opts.seed)
        b = discovery_and_held_out(task, tok_b, opts.n_prompts, opts.seed)
        rows_a = _texts(a.discovery, tok_a) + _texts(a.held_out, tok_a)
        rows_b = _texts(b.discovery, tok_b) + _texts(b.held_out, tok_b)
        differ = len(rows_a) != len(rows_b) or any(x != y for x, y in zip(rows_a, rows_b))
        if differ:
            n_differ = abs(len(rows_a) - len(rows_b)) + sum(x != y for x, y in zip(rows_a, rows_b))
            raise UserError(
                f"task {task}: models {models[0]} and {models[1]} have different vocabularies and the task's prompts "
                f"or answers differ between their tokenizers ({n_differ} of {max(len(rows_a), len(rows_b))} rows); "
                "compare them on a task whose answers are single tokens of both"
            )
        same_positions = all(
            bool((x.lengths == y.lengths).all()) for x, y in ((a.discovery, b.discovery), (a.held_out, b.held_out))
        )
        out[task] = {"same_vocabulary": False, "same_positions": same_positions}
    return out
