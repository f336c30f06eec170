"""Graph naming, circuit JSON round trip and validation, canonical circuits as edge sets."""

import json

import pytest
import torch

from lib.core.errors import UserError
from lib.core.graph import Graph
from lib.io.circuit_json import Circuit
from lib.methods.canonical import canonical_circuit

G = Graph(12, 12)


def test_json_round_trip(tmp_path):
    names = ["input->a0.h1<k>", "a5.h5->a9.h9<q>", "m0->logits", "a9.h9->logits"]
    c = Circuit("gpt2", "ioi", "test", {"k": 4}, {n: float(i) for i, n in enumerate(names)})
    c.save(tmp_path / "c.json", G)
    back = Circuit.load(tmp_path / "c.json", G)
    assert back.edges == c.edges and back.method == "test" and back.params == {"k": 4}
    obj = json.loads((tmp_path / "c.json").read_text())
    assert obj["nodes"] == ["input", "a0.h1", "m0", "a5.h5", "a9.h9", "logits"]  # forward order
    assert torch.equal(back.mask(G), G.mask_of(names)) and int(back.mask(G).sum()) == 4


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"edges": []}', "has no edges"),
        ('{"nodes": []}', "no 'edges' list"),
        ('{"edges": [{"edge": "a9.h9->a5.h5<q>"}]}', "does not exist"),
        ('{"edges": [{"edge": "a99.h0->logits"}]}', "does not exist"),
        ('{"edges": [3]}', "each edge must be"),
    ],
)
def test_bad_circuit_files(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        Circuit.load(path, G)
    with pytest.raises(UserError, match="does not exist"):
        Circuit.load(tmp_path / "missing.json", G)


def test_canonical_circuits_gpt2_small():
    ioi = canonical_circuit("ioi", G, "gpt2")
    gt = canonical_circuit("greater-than", G, "gpt2")
    assert ioi is not None and gt is not None
    edges = set(G.edges_of(ioi))
    nodes = G.nodes_of(ioi)
    heads = [n for n in nodes if n.startswith("a")]
    assert len(heads) == 26
    # rules spot-checked by hand
    assert "a2.h2->a5.h5<k>" in edges and "a2.h2->a5.h5<q>" not in edges  # previous token -> induction (k, v)
    assert "a7.h3->a9.h9<q>" in edges and "a7.h3->a9.h9<k>" not in edges  # S-inhibition -> name mover (q)
    assert "input->a9.h9<k>" in edges and "input->a9.h9<q>" not in edges
    assert "a9.h9->logits" in edges and "a7.h3->logits" not in edges
    assert "m3->a9.h9<v>" in edges and "m0->m5" in edges and "m11->logits" in edges
    gt_nodes = G.nodes_of(gt)
    assert {"a0.h1", "a6.h9", "a9.h1", "m0", "m11", "input", "logits"} <= set(gt_nodes)
    assert "a6.h9->m8" in set(G.edges_of(gt)) and "a0.h1->a5.h5<q>" in set(G.edges_of(gt))
    assert canonical_circuit("sva", G, "gpt2") is None and canonical_circuit("ioi", Graph(4, 4), "toy") is None
