"""Task data shared by the four tasks: tokenized clean/corrupted prompts, answer sets, per-item info."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pandas as pd
import torch

from lib.core.errors import UserError

# How a task scores the logits at the answer position (lib.metrics.task_metric implements each):
#   logit_diff       logit(correct[0]) - logit(wrong[0])                      (IOI)
#   logit_minus_max  logit(correct[0]) - max logit over the wrong set           (docstring)
#   prob_diff        sum P(correct set) - sum P(wrong set), full-vocab softmax  (greater-than, SVA)
METRIC_KINDS = ("logit_diff", "logit_minus_max", "prob_diff")


@dataclass
class TaskData:
    """A generated, tokenizer-validated dataset; row i of every tensor is item i."""

    task: str
    metric_kind: str
    clean: torch.Tensor  # [N, P] long, BOS first, right-padded with pad_id
    corrupt: torch.Tensor  # [N, P] long, same lengths as clean
    lengths: torch.Tensor  # [N] true lengths; the answer is predicted at lengths - 1
    correct: torch.Tensor  # [N, A] long, correct answer ids, -1 padded
    wrong: torch.Tensor  # [N, W] long, wrong answer ids, -1 padded
    info: pd.DataFrame  # one row per item: group, texts, answers, task features
    pad_id: int
    n_dropped: int = 0  # generated items dropped because they broke a token constraint
    vocab_dropped: dict = field(default_factory=dict)  # word list -> words dropped for this tokenizer
    drop_reasons: dict = field(default_factory=dict)  # why items were dropped -> how many (tasks from files)
    # prompts set aside to discover a circuit on, disjoint from these (a task file too small for --n-prompts
    # is split in halves: lib.methods.faithfulness.discovery_and_held_out); None: generate them
    discovery: TaskData | None = None

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def answer_pos(self) -> torch.Tensor:
        return self.lengths - 1

    @property
    def real(self) -> torch.Tensor:
        """[N, P] bool: the positions inside each prompt (False on its right padding)."""
        return torch.arange(self.clean.shape[1], device=self.lengths.device)[None] < self.lengths[:, None]

    def subset(self, idx) -> TaskData:
        """Items idx (a slice, list or tensor of indices), trimmed to their longest length."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        width = int(self.lengths[idx].max()) if len(idx) else 0
        return TaskData(
            task=self.task,
            metric_kind=self.metric_kind,
            clean=self.clean[idx, :width],
            corrupt=self.corrupt[idx, :width],
            lengths=self.lengths[idx],
            correct=self.correct[idx],
            wrong=self.wrong[idx],
            info=self.info.iloc[idx.tolist()].reset_index(drop=True),
            pad_id=self.pad_id,
            n_dropped=self.n_dropped,
            vocab_dropped=self.vocab_dropped,
            drop_reasons=self.drop_reasons,
        )

    def to(self, device) -> TaskData:
        for name in ("clean", "corrupt", "lengths", "correct", "wrong"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def dropped(self) -> dict:
        """What this tokenizer's constraints removed while building: generated prompts (clean and corrupted
        of unequal length, or an unknown token) and vocabulary (words that are not single tokens)."""
        out = {
            "prompts_dropped": self.n_dropped,
            "vocab_dropped": "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(self.vocab_dropped.items())),
        }
        if self.drop_reasons:  # tasks from files: why rows were dropped
            out["drop_reasons"] = "; ".join(f"{k}: {v}" for k, v in sorted(self.drop_reasons.items()))
        return out

    def dataset_frame(self, tokenizer) -> pd.DataFrame:
        """The exact dataset: texts, token ids, answer ids, so any number can be recomputed."""
        rows = []
        for i in range(len(self)):
            n = int(self.lengths[i])
            rows.append(
                {
                    "task": self.task,
                    "item": i,
                    **self.info.iloc[i].to_dict(),
                    "clean_ids": " ".join(map(str, self.clean[i, :n].tolist())),
                    "corrupt_ids": " ".join(map(str, self.corrupt[i, :n].tolist())),
                    "answer_pos": n - 1,
                    "correct_ids": " ".join(str(t) for t in self.correct[i].tolist() if t >= 0),
                    "wrong_ids": " ".join(str(t) for t in self.wrong[i].tolist() if t >= 0),
                    **self.dropped(),
                }
            )
        return pd.DataFrame(rows)


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def single_tokens(tokenizer, words: Sequence[str], prefix: str = " ") -> tuple[list[str], list[str]]:
    """Split words into those that are one token (with prefix) for this tokenizer and those that are not."""
    ids = tokenizer([prefix + w for w in words], add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    kept = [w for w, t in zip(words, ids) if len(t) == 1 and t[0] != unk]
    dropped = [w for w, t in zip(words, ids) if not (len(t) == 1 and t[0] != unk)]
    return kept, dropped


Word = TypeVar("Word")


def require(words: list[Word], minimum: int, what: str, task: str) -> list[Word]:
    if len(words) < minimum:
        raise UserError(f"task {task}: only {len(words)} {what} are single tokens for this tokenizer (need {minimum})")
    return words


def assemble(
    task: str,
    tokenizer,
    candidates: Iterator[dict],
    n: int,
    metric_kind: str,
    vocab_dropped: dict | None = None,
    max_tries: int | None = None,
) -> TaskData:
    """Tokenize candidate items until n satisfy the constraints (clean and corrupted of equal length).

    Each candidate: clean, corrupt (texts), correct, wrong (lists of token ids), group, plus features.
    """
    if n < 1:
        raise UserError(f"--n-prompts must be at least 1 (got {n})")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise UserError("the tokenizer has no BOS token; prompts are tokenized with BOS prepended")
    max_tries = max_tries or 20 * n + 200
    kept, dropped = [], 0
    for tries, cand in enumerate(candidates):
        if len(kept) == n or tries >= max_tries:
            break
        clean, corrupt = token_ids(tokenizer, cand["clean"]), token_ids(tokenizer, cand["corrupt"])
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(clean) != len(corrupt) or (unk is not None and (unk in clean or unk in corrupt)):
            dropped += 1
            continue
        kept.append((cand, [bos] + clean, [bos] + corrupt))
    if len(kept) < n:
        raise UserError(
            f"task {task}: only {len(kept)} of the requested {n} prompts satisfy the tokenizer's "
            f"constraints ({dropped} dropped); ask for fewer with --n-prompts"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    width = max(len(c) for _, c, _ in kept)
    a_width = max(len(c["correct"]) for c, _, _ in kept)
    w_width = max(len(c["wrong"]) for c, _, _ in kept)
    clean_t = torch.full((n, width), pad, dtype=torch.long)
    corrupt_t = torch.full((n, width), pad, dtype=torch.long)
    correct_t = torch.full((n, a_width), -1, dtype=torch.long)
    wrong_t = torch.full((n, w_width), -1, dtype=torch.long)
    lengths = torch.zeros(n, dtype=torch.long)
    rows = []
    for i, (cand, c, k) in enumerate(kept):
        clean_t[i, : len(c)] = torch.tensor(c)
        corrupt_t[i, : len(k)] = torch.tensor(k)
        correct_t[i, : len(cand["correct"])] = torch.tensor(cand["correct"])
        wrong_t[i, : len(cand["wrong"])] = torch.tensor(cand["wrong"])
        lengths[i] = len(c)
        rows.append({k2: v for k2, v in cand.items() if k2 not in ("correct", "wrong")})
    info = pd.DataFrame(rows).rename(columns={"clean": "clean_text", "corrupt": "corrupt_text"})
    return TaskData(
        task, metric_kind, clean_t, corrupt_t, lengths, correct_t, wrong_t, info, pad, dropped, vocab_dropped or {}
    )


def rng_for(seed: int, task: str) -> random.Random:
    """A task-specific deterministic generator, so tasks do not share random streams."""
    return random.Random(f"{task}:{seed}")


@dataclass(frozen=True)
class Task:
    """A registered task: its name, builder, and (optionally) the canonical circuit description."""

    name: str
    build: Callable[..., TaskData]  # build(tokenizer, n, seed, **options) -> TaskData
    description: str
    canonical: dict | None = None  # data describing the published circuit (see tasks/<name>.py)
    features: tuple[str, ...] = ()  # info columns usable as causal-scrubbing features
    # Causal scrubbing (lib/scrubbing.py): resampled prompts must share these info columns (and the token
    # length) so that activations align position by position; `answer_feature` determines the answer;
    # `positions(data)` names token positions per item (class -> [N] index) for position-specific claims.
    aligned_by: tuple[str, ...] = ()
    answer_feature: str | None = None
    positions: Callable[[TaskData], dict] | None = None
    corruptions: tuple[str, ...] = ()  # build(..., corruption=c); the first is the default
