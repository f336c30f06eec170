"""Our side of the cross-check against circuit-tracer and SAELens (README, "Published transcoder sets"): writes,
into OUT, transcoder sets for the toy model (one trained here in circuit-tracer's layout, one random JumpReLU set
with skip connections, one GemmaScope npz set), their SAELens conversions, and our features, outputs and
attribution graphs of one IOI prompt on the unprocessed toy model. crosscheck/theirs.py reads them in an
environment where circuit-tracer and SAELens install (TransformerLens 3), never this project's.

    uv run python crosscheck/ours.py /tmp/crosscheck
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_published_transcoders import write_set  # noqa: E402

from lib.core.model import UNPROCESSED, load_model  # noqa: E402
from lib.features import published  # noqa: E402
from lib.features.attribution import attribute  # noqa: E402
from lib.io import cli  # noqa: E402
from lib.tools import dictionaries, transcoder_format  # noqa: E402
from tasks import TASKS  # noqa: E402


def main(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"error: {out} exists")
    cli.main(
        dictionaries.app,
        ["--out", str(out / "trained"), "--layout", "circuit-tracer", "--activation", "relu"]
        + ["--steps", "300", "--n-per-task", "40", "--width", "64", "--quiet"],
    )
    write_set(out / "skip", "skip", 4, 64, torch.Generator().manual_seed(11))
    write_set(out / "gemmascope", "gemmascope", 4, 64, torch.Generator().manual_seed(12))
    lm = load_model("toy", "cpu", processing=UNPROCESSED)
    data = TASKS["ioi"].build(lm.tokenizer, 2, 0)
    tokens = data.clean[0, : int(data.lengths[0])]
    reference: dict = {"tokens": tokens}
    for name in ("trained", "skip", "gemmascope"):
        if name != "gemmascope":  # SAELens's layout of the same set (npz stays circuit-tracer's own)
            cli.main(transcoder_format.app, [str(out / name), str(out / f"saelens-{name}")])
        tc = published.read(out / name)
        x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
        layers = {}
        for l in range(tc.n_layers):
            f = tc.encode(l, x)
            layers[l] = (f, tc.write(l, {l: f}, x))
        graph = attribute(lm, tc, tokens, batch_size=64)
        reference[name] = {"x": x, "layers": layers, "active": graph.active, "adjacency": graph.adjacency}
    torch.save(reference, out / "ours.pt")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
