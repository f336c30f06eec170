"""A task file (tasks/files.py) as a Task: its rows in file order become items under the same rules as the
built-in tasks (BOS prepended, every answer one token of the loaded tokenizer, clean and corrupted prompts of
equal token length); rows that break a rule are dropped, counted and the reasons kept (dataset.csv)."""

from __future__ import annotations

from collections import Counter

from lib.core.errors import UserError
from tasks.base import Task, TaskData, assemble, token_ids
from tasks.files import SOURCES, FileSource, parse_ids

ANSWER_FEATURE = "answer"  # the info column causal scrubbing's answer-feature hypothesis resamples by
UNGROUPED = "ungrouped"
# rows that cannot carry a signal are dropped and counted like rows that break a tokenizer rule
NO_PROMPT = "a null, empty or non-text prompt"
SAME_ANSWER = "an answer that is also a wrong answer (the metric cannot tell them apart)"
SAME_PROMPTS = "identical clean and corrupted prompts (nothing to patch)"  # the group of rows without one ("all" is the summary over every item)


def _one_token(tokenizer, text: str) -> int | None:
    ids = token_ids(tokenizer, text)
    unk = getattr(tokenizer, "unk_token_id", None)
    return ids[0] if len(ids) == 1 and ids[0] != unk else None


def _answers(value) -> list[str]:
    """A text-pairs answer cell: a list (JSONL) or `|`-separated strings (CSV)."""
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split("|")


def _ids_checked(tokenizer, ids: list[int], what: str, where: str) -> list[int]:
    """Token ids of an EAP-IG file: in the vocabulary and each a token that encodes back to itself, else the
    ids belong to another tokenizer (one line)."""
    vocab = len(tokenizer)
    for i in ids:
        if i >= vocab or token_ids(tokenizer, tokenizer.decode([i])) != [i]:
            raise UserError(
                f"task file {where}: {what} {i} is not a token of this tokenizer (vocabulary {vocab}); "
                "the ids belong to another tokenizer"
            )
    return ids


def _item(source: FileSource, row: dict, tokenizer, year_ids: dict | None) -> tuple[dict | None, str]:
    """(candidate item, "") or (None, why the row is dropped)."""
    form = source.format
    if form in ("text-pairs", "eap-ig-ids", "eap-ig-label"):
        if not all(isinstance(row.get(k), str) and row[k] for k in ("clean", "corrupted")):
            return None, NO_PROMPT
        clean, corrupt = row["clean"], row["corrupted"]
    if form == "text-pairs":
        right, wrong = _answers(row["correct"]), _answers(row["wrong"])
        if not right or not wrong or "" in right or "" in wrong:
            return None, "an empty answer"
        ids = [_one_token(tokenizer, a) for a in right + wrong]
        if None in ids:
            return None, "an answer that is not one token"
        correct, wrong_ids = ids[: len(right)], ids[len(right) :]
        group = str(row.get("group", "") or UNGROUPED)
    elif form == "eap-ig-ids":
        correct = _ids_checked(tokenizer, parse_ids(row["correct_idx"], "correct_idx"), "correct_idx", source.path)
        wrong_ids = _ids_checked(
            tokenizer, parse_ids(row["incorrect_idx"], "incorrect_idx"), "incorrect_idx", source.path
        )
        right = [tokenizer.decode([i]) for i in correct]
        group = UNGROUPED
    elif form == "eap-ig-label":
        try:
            yy = int(str(row["label"]).strip())
        except ValueError:
            return None, "a label that is not a two-digit year"
        if not 0 <= yy <= 99:
            return None, "a label that is not a two-digit year"
        assert year_ids is not None  # read for this format
        if len(year_ids) < 100:
            raise UserError(
                f"task file {source.path}: the label format needs every two-digit year 00..99 as one "
                f"token; this tokenizer has {len(year_ids)} of them"
            )
        correct = [year_ids[y] for y in range(yy + 1, 100)]
        wrong_ids = [year_ids[y] for y in range(0, yy + 1)]
        if not correct:
            return None, "label 99: no later year"
        right, group = [f"after {yy:02d}"], UNGROUPED
    else:
        try:
            clean, corrupt, right_text, wrong_text = _mib(form, row)
        except (KeyError, IndexError, TypeError, AttributeError):  # a field missing or of another shape
            return None, "a MIB row without the fields MIB's loader reads"
        if corrupt is None or right_text is None or wrong_text is None:
            return None, "a MIB row without its counterfactual"
        if not (isinstance(clean, str) and clean and isinstance(corrupt, str) and corrupt):
            return None, NO_PROMPT
        correct, wrong_ids = [_one_token(tokenizer, right_text)], [_one_token(tokenizer, wrong_text)]
        if None in correct + wrong_ids:
            return None, "an answer that is not one token"
        right, group = [right_text], str(row.get("operator", UNGROUPED)) if form == "mib-arithmetic" else UNGROUPED
    return {
        "clean": clean,
        "corrupt": corrupt,
        "correct": correct,
        "wrong": wrong_ids,
        "group": group,
        ANSWER_FEATURE: "|".join(right),
    }, ""


def _mib(form: str, row: dict):
    """(clean, corrupted, correct text, wrong text) as MIB's HFEAPDataset.__getitem__ builds them."""
    if form == "mib-ioi":
        meta, cf = row["metadata"], row.get("s2_io_flip_counterfactual") or {}
        return row["prompt"], cf.get("prompt"), f" {meta['indirect_object']}", f" {meta['subject']}"
    if form == "mib-mcqa":
        cf = row.get("symbol_counterfactual") or {}
        if not cf.get("prompt"):
            return None, None, None, None
        return (
            row["prompt"],
            cf["prompt"],
            str(row["choices"]["label"][row["answerKey"]]),
            str(cf["choices"]["label"][cf["answerKey"]]),
        )
    cf = row.get("random_counterfactual") or {}
    if not cf.get("prompt"):
        return None, None, None, None
    return row["prompt"], cf["prompt"], str(row["label"]), str(cf["label"])


def build(name: str, tokenizer, n: int, seed: int, corruption: str = "file") -> TaskData:
    """The first n valid rows in file order (the seed does not reorder a file), or all of them if fewer."""
    from tasks.greater_than import year_tokens

    source = SOURCES[name]
    year_ids = year_tokens(tokenizer) if source.format == "eap-ig-label" else None
    unk = getattr(tokenizer, "unk_token_id", None)
    kept, reasons = [], Counter()
    for row_number, row in enumerate(source.rows, start=1):
        if len(kept) == n:
            break
        item, why = _item(source, row, tokenizer, year_ids)
        if item is not None:
            clean, corrupt = token_ids(tokenizer, item["clean"]), token_ids(tokenizer, item["corrupt"])
            if set(item["correct"]) & set(item["wrong"]):
                item, why = None, SAME_ANSWER
            elif clean == corrupt:
                item, why = None, SAME_PROMPTS
            elif len(clean) != len(corrupt):
                item, why = None, "clean and corrupted prompts of unequal token length"
            elif unk is not None and (unk in clean or unk in corrupt):
                item, why = None, "a word the tokenizer does not know (its unknown token)"
        if item is None:
            reasons[why] += 1
        else:
            kept.append({**item, "file_row": row_number})
    if not kept:
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.most_common())
        raise UserError(f"task file {source.path}: no row satisfies this tokenizer's rules ({detail or 'no rows'})")
    data = assemble(name, tokenizer, iter(kept), len(kept), source.metric)
    data.n_dropped = sum(reasons.values())
    data.drop_reasons = dict(reasons)
    source.stats = {
        "rows_used": len(kept),
        "rows_dropped": data.n_dropped,
        "drop_reasons": dict(reasons),
        "rows_not_read": len(source.rows) - len(kept) - data.n_dropped,
    }
    return data


def task_of(name: str) -> Task:
    """The registered file task as a Task (no canonical circuit; one corruption; answer-feature only)."""
    source = SOURCES[name]
    return Task(
        name=name,
        build=lambda tokenizer, n, seed, corruption="file": build(name, tokenizer, n, seed, corruption),
        description=f"from {source.path} ({source.format}, metric {source.metric})",
        canonical=None,
        features=(ANSWER_FEATURE,),
        aligned_by=(),
        answer_feature=ANSWER_FEATURE,
        corruptions=("file",),
    )
