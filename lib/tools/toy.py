"""The offline `toy` model: a small GPT-2 trained by the project on its four tasks.

uv run python -m lib.tools.toy train      # rebuilds models/toy/ (tokenizer + weights), deterministic
uv run python -m lib.tools.toy evaluate   # held-out accuracy and metrics per task
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

TOY_DIR = Path(__file__).resolve().parents[2] / "models" / "toy"
BOS = "<|endoftext|>"
UNK = "<unk>"
# GPT-2's pre-tokenization regex, except that digits are split in pairs, so " 1732" -> " 17", "32"
# exactly as GPT-2 tokenizes greater-than years.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\d{2}| ?\d| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Every task weighs the same: weighting docstring (the task the toy model learns worst) x3 in a trial
# run made IOI stall at chance without fixing docstring.
TASK_WEIGHTS: dict[str, float] = {}
# After FOCUS_FROM steps (the other tasks are learned by then) the batch shifts towards docstring, the task
# the toy model learns last: more docstring examples per step instead of a larger loss weight.
FOCUS_FROM = 2000
DOCSTRING_N_FACTOR = 10  # docstring training prompts per n_per_task
FOCUS_BATCHES = {"docstring": 2.0, "ioi": 0.5, "sva": 0.5, "greater-than": 0.5}  # x batch
TRAIN_SEED = 10_000  # task-generation seeds for training; evaluation uses seeds < TRAIN_SEED
ARCH: dict[str, Any] = dict(n_layer=4, n_head=4, n_embd=64, n_inner=256, n_positions=64)


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _corpus_texts() -> list[str]:
    """Every text the task generators produce (clean, corrupted), with the words they draw on."""
    from tasks import docstring, greater_than, ioi, sva

    words = (
        ioi.NAMES
        + ioi.PLACES
        + ioi.OBJECTS
        + greater_than.NOUNS
        + docstring.NAMES
        + docstring.WORDS
        + docstring.FUNCTION_NAMES
        + sva.PREPOSITIONS
        + sva.PREPNOUNS
        + [w for pair in sva.NOUNS + sva.RC_VERBS + sva.ANSWER_VERBS for w in pair]
    )
    texts = (
        [" " + w for w in words] + docstring.WORDS + [f"{i:02d}" for i in range(100)] + [f" {i}" for i in range(10, 20)]
    )
    texts += [t.replace("[S1]", "A").replace("[IO]", "B").replace("[S2]", "C") for t in ioi.BABA_TEMPLATES]
    texts += ["The a lasted from the year 1234 to the year 12"]
    texts += [
        docstring.TEMPLATE.format(
            fname="f", args=", ".join(["self"] + ["a"] * k), dA="a", dB="a", **{f"w{i}": "a" for i in range(1, 8)}
        )
        for k in range(1, 8)
    ]
    texts += [f"The {a} {p} the" for a, _ in sva.NOUNS for p in sva.PREPOSITIONS] + ["The a that the"]
    return texts


def build_tokenizer():
    """A word-level tokenizer over the task vocabularies with GPT-2's conventions (byte-level, Ġ spaces)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pre = _pre_tokenizer()
    pieces = {p for text in _corpus_texts() for p, _ in pre.pre_tokenize_str(text)}
    vocab = {BOS: 0, UNK: 1}
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=UNK,
        model_max_length=ARCH["n_positions"],
    )


PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # transformers 4 has it; 5 reads it as TokenizersBackend


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """save_pretrained, with a tokenizer_config.json that transformers 4 reads too (so tools on the
    TransformerLens-3 stack, circuit-tracer and SAELens, load the folder): transformers 5 writes its own class
    name, TokenizersBackend, which 4 does not have, and a `backend` key it does not know."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _training_batches(tokenizer, n_per_task: int):
    """Per task: (tokens [N, P], answer positions [N], target ids [N, K] (-1 padded)). Every target is
    uniform over its ids: IOI and docstring one token, SVA the verbs of the right number, greater-than
    YY+1 .. YY+20 (continuations a little above the start year, as in text)."""
    from tasks import TASK_NAMES, TASKS
    from tasks.docstring import build as build_docstring

    out = {}
    for i, name in enumerate(TASK_NAMES):  # the built-in tasks only
        seed = TRAIN_SEED + i
        if name == "docstring":
            # varied argument lists, and many more distinct prompts: with 20k a run memorised them
            data = build_docstring(tokenizer, DOCSTRING_N_FACTOR * n_per_task, seed, varied=True)
            target = data.correct
        else:
            data = TASKS[name].build(tokenizer, n_per_task, seed)
            target = data.correct
        if name == "greater-than":
            yy = torch.tensor(data.info["yy"].tolist())
            keep = torch.arange(target.shape[1])[None] < torch.clamp(99 - yy, max=20)[:, None]
            target = torch.where(keep, target, -1)[:, :20]
        out[name] = (data.clean, data.answer_pos, target)
    return out


def _step_loss(model, data, batches: dict[str, int], gen, weights: dict[str, float]):
    loss, parts = torch.zeros(()), {}
    for name, (tokens, pos, target) in data.items():
        n = batches.get(name, 0)
        if not n:
            continue
        idx = torch.randint(len(tokens), (n,), generator=gen)
        toks, p, ids = tokens[idx], pos[idx], target[idx]
        hidden = model.transformer(toks[:, : int(p.max()) + 1]).last_hidden_state  # [B, P, D]
        logp = model.lm_head(hidden[torch.arange(n), p]).log_softmax(-1)  # [B, V]
        valid = ids >= 0
        # cross-entropy against the uniform distribution over each row's ids
        part = -((logp.gather(1, ids.clamp_min(0)) * valid).sum(1) / valid.sum(1)).mean()
        parts[name] = part.item()
        loss = loss + weights.get(name, 1.0) * part
    return loss, parts


def train(
    out_dir: Path = TOY_DIR,
    steps: int = 6000,
    batch: int = 32,
    n_per_task: int = 20_000,
    seed: int = 0,
    lr: float = 2e-3,
    checkpoints: tuple[int, ...] = (),
) -> dict:
    """Train the toy model deterministically on CPU and save it in Hugging Face format; each step in
    `checkpoints` is also saved, after that many optimizer steps, as out_dir/checkpoints/step<N>."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lib.io import progress

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    data = _training_batches(tokenizer, n_per_task)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **ARCH,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    gen = torch.Generator().manual_seed(seed)
    t0, log = time.time(), []
    meta = {"steps": steps, "batch_per_task": batch, "n_per_task": n_per_task, "seed": seed, "lr": lr}
    model.train()
    bar = progress.bar(steps, "train toy", "step")
    for step in range(steps):
        share = FOCUS_BATCHES if step >= FOCUS_FROM else {}
        loss, parts = _step_loss(
            model, data, {name: int(batch * share.get(name, 1.0)) for name in data}, gen, TASK_WEIGHTS
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            log.append({"step": step, **parts})
        bar.update(1)
        if step + 1 in checkpoints:
            _save(model, tokenizer, out_dir / "checkpoints" / f"step{step + 1}", meta | {"checkpoint_step": step + 1})
            model.train()
    bar.close()
    meta = meta | {
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": log[-1],
        "task_weights": TASK_WEIGHTS,
        "docstring_n": DOCSTRING_N_FACTOR * n_per_task,
        "focus_from": FOCUS_FROM,
        "focus_batches": FOCUS_BATCHES,
        "architecture": ARCH,
        "vocab_size": len(tokenizer),
        "checkpoints": list(checkpoints),
    }
    _save(model, tokenizer, out_dir, meta)
    return meta


def _save(model, tokenizer, out_dir: Path, meta: dict) -> None:
    """The model (eval mode), its tokenizer and training.json, in Hugging Face format."""
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    (out_dir / "training.json").write_text(json.dumps(meta, indent=1) + "\n")


app = typer.Typer(add_completion=False, help=__doc__)


@app.command("train")
def train_cmd(
    out: Path = TOY_DIR,
    steps: int = 6000,
    batch: int = 32,
    seed: int = 0,
    checkpoint: Annotated[list[int], typer.Option(help="also save the model after this many steps (repeatable)")] = [],  # noqa: B006 - typer reads the default
):
    """Rebuild the toy model (tokenizer and weights) into OUT; --checkpoint N also saves OUT/checkpoints/stepN."""
    if any(not 0 < n < steps for n in checkpoint):
        raise typer.BadParameter(f"each --checkpoint must be between 1 and --steps - 1 ({steps - 1})")
    print(json.dumps(train(out, steps=steps, batch=batch, seed=seed, checkpoints=tuple(checkpoint)), indent=1))


@app.command("evaluate")
def evaluate_cmd(n: int = 200, seed: int = 1, model_dir: str = "toy"):
    """Accuracy and clean/corrupted metric of the toy model on held-out prompts."""
    from lib.core.evaluate import behaviour_summary
    from lib.core.model import load_model
    from tasks import TASK_NAMES, TASKS

    model = load_model(model_dir, device="cpu")
    for name in TASK_NAMES:
        print(name, behaviour_summary(model, TASKS[name].build(model.tokenizer, n, seed)))


if __name__ == "__main__":
    app()
