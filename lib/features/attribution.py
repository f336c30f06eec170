"""Attribution graphs over transcoders, as circuit-tracer computes them (circuit_tracer/attribution.py,
AttributionContext and _run_attribution; graph.py for the layout):

- the local replacement model of one prompt: attention patterns and norm scales frozen, each MLP output a
  constant (its transcoder's reconstruction plus its error node), so that every target below is an affine
  function of the sources and the gradient gives each source's exact linear direct effect (Gemma 2: the
  post-attention and post-MLP norm scales are frozen too, and each logit target is the demeaned logit before the
  final soft-cap, the salient logits chosen by the capped probabilities, as circuit-tracer 0.5 does);
- nodes: active features (layer, position, feature) with their activations, error nodes (layer, position),
  token embeddings (position), and the top logits (softmax mass until 0.95, at most 10; demeaned unembedding
  columns: logit minus the mean logit); features and errors at position 0 are zeroed when it is the BOS token
  (circuit-tracer's zero_bos), so that position's MLP outputs are constants;
- adjacency[target, source] = direct effect of the source on the target's pre-activation (or demeaned logit):
  a feature source's column is its activation times its decoder rows (every layer it writes) dotted with the
  target's gradient there; an error's its error vector; a token's its token embedding (hook_embed);
- rows are computed for batches of targets with one backward pass each (the forward pass is run once on
  batch_size copies of the prompt, each copy carrying one target's injected gradient); with max_feature_nodes
  the features visited are chosen as circuit-tracer does (logit rows first, then features in order of their
  partial influence, re-ranked every update_interval batches).

Beside the logits, a "metric" target row holds the direct effects on the task metric's direction in the final
normalized residual (mean correct-answer unembedding minus mean wrong-answer unembedding): the quantity the
suite's other scripts measure. It is kept out of the adjacency (so circuit-tracer's scores are its scores)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.architecture import apply_softcap


@dataclass
class AttributionGraph:
    """Node order (circuit-tracer's): [selected features, errors (layer-major: layer, position), tokens, logits]."""

    tokens: torch.Tensor  # [P]
    active: torch.Tensor  # [n_active, 3] long: layer, position, feature
    activations: torch.Tensor  # [n_active]
    selected: torch.Tensor  # [n_features] indices into active: the feature nodes, in order
    adjacency: torch.Tensor  # [n, n] float32, rows targets, columns sources
    logit_tokens: torch.Tensor  # [K]
    logit_probs: torch.Tensor  # [K]
    metric_row: torch.Tensor | None  # [n] direct effects on the task-metric direction (None without one)
    targets: torch.Tensor  # [n] each row's target value: feature pre-activation, demeaned logit (0 elsewhere)
    metric_value: float  # the metric direction's value on the prompt
    n_layers: int
    transcoders: str  # the set's kind and name

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.selected)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    def slices(self) -> dict:
        """Node kind -> slice of the node order."""
        f, e = self.n_features, self.n_features + self.n_layers * self.n_pos
        t = e + self.n_pos
        return {
            "feature": slice(0, f),
            "error": slice(f, e),
            "token": slice(e, t),
            "logit": slice(t, t + self.n_logits),
        }


def salient_logits(logits: torch.Tensor, w_u: torch.Tensor, max_n_logits: int = 10, desired_prob: float = 0.95):
    """circuit-tracer's compute_salient_logits: the fewest top tokens whose probability reaches desired_prob (at
    most max_n_logits): ids [K], probabilities [K], demeaned unembedding columns [K, d_model]."""
    probs = torch.softmax(logits.double(), -1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, len(probs)))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_prob, dtype=top_p.dtype))) + 1
    top_p, top_idx = top_p[:cutoff], top_idx[:cutoff]
    demeaned = w_u[:, top_idx] - w_u.mean(-1, keepdim=True)
    return top_idx, top_p.float(), demeaned.T


def metric_direction(w_u: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """[d_model] mean unembedding of the correct answers minus that of the wrong ones (ids -1 padded)."""
    c, w = correct[correct >= 0], wrong[wrong >= 0]
    return w_u[:, c].mean(-1) - w_u[:, w].mean(-1)


class _Pass:
    """The forward pass on batch copies of one prompt with sources as leaves; rows(...) does one backward pass."""

    def __init__(self, model, tc, tokens: torch.Tensor, batch: int, embed, mlp_out):
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        from lib.features.replacement import freeze_hooks, norms_through_hooks

        P = len(tokens)
        self.embed = embed.detach().expand(batch, P, -1).clone().requires_grad_(True)  # [B, P, d]
        self.mlp = [m.detach().expand(batch, P, -1).clone().requires_grad_(True) for m in mlp_out]  # L x [B, P, d]
        self.inputs: dict = {}

        def leaf(value):
            return lambda x, hook: value

        def keep(name):
            def hook(x, hook):
                self.inputs[name] = x
                return x

            return hook

        def stop(x, hook):
            self.inputs["final"] = x
            raise StopAtLayerException(x)

        def mlp_leaf(l):
            """The MLP output is its leaf; a skip connection stays a live linear path from the transcoder's
            input (value unchanged: skip(x) - skip(x).detach() is 0), as circuit-tracer's add_skip_connection."""
            if tc.W_skip is None:
                return leaf(self.mlp[l])

            def hook(x, hook):
                skip = tc.skip(l, self.inputs[tc.hooks_in[l]]).to(x.dtype)
                return self.mlp[l] + skip - skip.detach()

            return hook

        hooks = freeze_hooks(model) + [("hook_embed", leaf(self.embed))]
        hooks += [(h, keep(h)) for h in sorted(set(tc.hooks_in))]
        hooks += [(tc.hooks_out[l], mlp_leaf(l)) for l in range(len(self.mlp))]
        hooks += [("unembed.hook_in", stop)]
        with norms_through_hooks(model), torch.enable_grad():
            model.bridge.run_with_hooks(tokens[None].expand(batch, -1).to(model.device), fwd_hooks=hooks)

    def rows(self, injections: list) -> tuple:
        """injections: (row, hook name or "final", position, vector [d]) -> gradients at the embedding [B, P, d]
        and at each MLP output (L x [B, P, d]; zeros where none flows)."""
        grads = {}
        for row, name, pos, vector in injections:
            g = grads.setdefault(name, torch.zeros_like(self.inputs[name]))
            g[row, pos] += vector.to(g.dtype)
        names, leaves = sorted(grads), [self.embed, *self.mlp]
        with torch.enable_grad():
            out = torch.autograd.grad(
                [self.inputs[n] for n in names], leaves, [grads[n] for n in names], retain_graph=True, allow_unused=True
            )
        out = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(out, leaves)]
        return out[0], out[1:]


def _decoders_by_position(tc, active: torch.Tensor, activations: torch.Tensor, n_pos: int, dtype) -> dict:
    """Per source layer s: (cols [P, m] column of each active feature, grouped by position and padded to the most
    at one position m; valid [P, m]; per output layer s + o the scaled decoder rows [P, m, d], 0 where padded),
    so that one batched matmul per (s, o) gives every feature column."""
    out = {}
    for s in range(tc.n_layers):
        idx = torch.nonzero(active[:, 0] == s).flatten()
        if len(idx) == 0:
            continue
        pos = active[idx, 1]
        counts = torch.bincount(pos, minlength=n_pos)
        m = int(counts.max())
        rank = (
            torch.arange(len(idx), device=idx.device) - (torch.cumsum(counts, 0) - counts)[pos]
        )  # index within its position
        cols = torch.zeros(n_pos, m, dtype=torch.long, device=idx.device)
        valid = torch.zeros(n_pos, m, dtype=torch.bool, device=idx.device)
        cols[pos, rank], valid[pos, rank] = idx, True
        vecs = []
        for o in range(tc.n_out(s)):
            v = torch.zeros(n_pos, m, tc.W_dec[s].shape[-1], dtype=dtype, device=idx.device)
            v[pos, rank] = (activations[idx, None] * tc.W_dec[s][active[idx, 2], o]).to(dtype)
            vecs.append(v)
        out[s] = (cols, valid, vecs)
    return out


def clean_state(model, tc, tokens: torch.Tensor) -> dict:
    """One prompt's clean pass: transcoder inputs (L x [P, d_in]), features {layer: [P, d_sae]}, MLP outputs
    (L x [P, d]), error nodes [L, P, d] (MLP output minus reconstruction), token embeddings [P, d] and the final
    normalized residual stream [P, d]."""
    from lib.core.forward import capture

    hooks = sorted(set(tc.hooks_in + tc.hooks_out + ["hook_embed", "unembed.hook_in"]))
    with torch.no_grad():
        clean = capture(model, tokens[None].to(model.device), hooks)
        x_in = [clean[h][0] for h in tc.hooks_in]
        feats = {l: tc.encode(l, x_in[l]) for l in range(tc.n_layers)}
        mlp_out = [clean[h][0] for h in tc.hooks_out]
        errors = torch.stack([mlp_out[l] - tc.write(l, feats, x_in[l]) for l in range(tc.n_layers)])
    return {
        "inputs": x_in,
        "features": feats,
        "mlp_out": mlp_out,
        "errors": errors,
        "embed": clean["hook_embed"][0],
        "final": clean["unembed.hook_in"][0],
    }


def attribute(
    model,
    tc,
    tokens: torch.Tensor,
    direction: torch.Tensor | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
) -> AttributionGraph:
    """The attribution graph of one prompt tokens [P] (BOS first) under the transcoder set tc."""
    L, P = tc.n_layers, len(tokens)
    dev = model.device
    tokens = tokens.to(dev)
    state = clean_state(model, tc, tokens)
    errors, feats, x_in, mlp_out, embed = (
        state["errors"].clone(),
        state["features"],
        state["inputs"],
        state["mlp_out"],
        state["embed"],
    )
    with torch.no_grad():
        acts = torch.stack([feats[l] for l in range(L)])  # [L, P, d_sae]
        bos = model.tokenizer.bos_token_id
        if bos is not None and int(tokens[0]) == bos:  # circuit-tracer's zero_bos
            acts[:, 0], errors[:, 0] = 0, 0
        active = torch.nonzero(acts)  # [n_active, 3] lexicographic: layer, position, feature
        activations = acts[active[:, 0], active[:, 1], active[:, 2]]
        w_u = model.bridge.W_U.detach().to(errors.dtype)
        final = state["final"][-1]
        logits = final @ w_u + model.bridge.b_U.detach().to(errors.dtype)
        # which logits and their probabilities: the model's own (soft-capped on Gemma 2, as circuit-tracer takes
        # them from its forward pass); each logit row explains the demeaned logit before the cap, linear in the stream
        capped = apply_softcap(logits, model.arch.softcap)
        logit_idx, logit_p, logit_vecs = salient_logits(capped, w_u, max_n_logits, desired_logit_prob)
        pre_all = torch.stack([tc.pre(l, x_in[l]) for l in range(L)])  # [L, P, d_sae]
    n_active, K = len(active), len(logit_idx)
    n_feat = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    non_feature = L * P + P  # errors, tokens
    width = n_active + non_feature  # columns while computing: every active feature, errors, tokens
    batch = max(1, min(batch_size, n_feat + K + 1))
    run = _Pass(model, tc, tokens, batch, embed, mlp_out)

    decoders = _decoders_by_position(tc, active, activations, P, errors.dtype)

    def columns(g_embed, g_mlp, n_rows):
        """[n_rows, width] direct effects of every source on the injected targets."""
        out = torch.zeros(n_rows, width, dtype=errors.dtype, device=dev)
        g_embed, g_mlp = g_embed.to(out.dtype), [g.to(out.dtype) for g in g_mlp]  # a half-precision model's grads
        for s, (cols, valid, vecs) in decoders.items():  # per source layer: its features grouped by position
            # [P, r, m]: summed over the output layers s + o that the features write to (vec [P, m, d] each)
            terms = (
                torch.bmm(g_mlp[s + o][:n_rows].transpose(0, 1), vec.transpose(1, 2)) for o, vec in enumerate(vecs)
            )
            total = next(terms)
            for term in terms:
                total = total + term
            out[:, cols[valid]] += total.permute(1, 0, 2)[:, valid]
        for l in range(L):
            out[:, n_active + l * P : n_active + (l + 1) * P] = torch.einsum("rpd,pd->rp", g_mlp[l][:n_rows], errors[l])
        out[:, n_active + L * P :] = torch.einsum("rpd,pd->rp", g_embed[:n_rows], embed.to(out.dtype))
        return out

    # logit rows (and the metric row) first
    out_rows = list(logit_vecs) + ([direction.to(dev, errors.dtype)] if direction is not None else [])
    head = []
    for start in range(0, len(out_rows), batch):
        chunk = out_rows[start : start + batch]
        g_e, g_m = run.rows([(r, "final", P - 1, v) for r, v in enumerate(chunk)])
        head.append(columns(g_e, g_m, len(chunk)))
    head = torch.cat(head)
    logit_rows, metric_cols = head[:K], (head[K] if direction is not None else None)

    feature_rows = torch.zeros(n_feat, width, dtype=errors.dtype, device=dev)
    visited = torch.zeros(n_active, dtype=torch.bool, device=dev)
    order = []  # active indices in the order their rows were computed
    while len(order) < n_feat:
        if n_feat == n_active:
            pending = torch.arange(n_active, device=dev)
        else:  # circuit-tracer's ranking by partial influence over the rows computed so far
            from lib.features.influence import partial_influence

            done = torch.tensor(order, dtype=torch.long, device=dev)
            rows = torch.cat([logit_rows, feature_rows[: len(order)]])
            row_nodes = torch.cat([torch.arange(K, device=dev) + width, done])
            influence = partial_influence(rows, logit_p.to(dev, rows.dtype), row_nodes, width + K)
            rank = torch.argsort(influence[:n_active], descending=True, stable=True)
            pending = rank[~visited[rank]][: min(update_interval * batch, n_feat - len(order))]
        for start in range(0, len(pending), batch):
            idx = pending[start : start + batch]
            inj = [
                (
                    r,
                    tc.hooks_in[int(active[j, 0])],
                    int(active[j, 1]),
                    tc.W_enc[int(active[j, 0])][:, int(active[j, 2])],
                )
                for r, j in enumerate(idx.tolist())
            ]
            g_e, g_m = run.rows(inj)
            feature_rows[len(order) : len(order) + len(idx)] = columns(g_e, g_m, len(idx))
            order += idx.tolist()
            visited[idx] = True
    # assemble circuit-tracer's square adjacency over the selected features
    order_t = torch.tensor(order, dtype=torch.long, device=dev)
    selected, perm = torch.sort(order_t)
    feature_rows = feature_rows[perm]
    keep_cols = torch.cat([selected, torch.arange(n_active, width, device=dev)])
    n = n_feat + non_feature + K
    adjacency = torch.zeros(n, n, dtype=torch.float32, device="cpu")
    adjacency[:n_feat, : n_feat + non_feature] = feature_rows[:, keep_cols].float().cpu()
    adjacency[n - K :, : n_feat + non_feature] = logit_rows[:, keep_cols].float().cpu()
    metric_row = None
    if metric_cols is not None:
        metric_row = torch.zeros(n)
        metric_row[: n_feat + non_feature] = metric_cols[keep_cols].float().cpu()
    targets = torch.zeros(n, dtype=torch.float64)
    sel = active[selected]
    targets[:n_feat] = pre_all[sel[:, 0], sel[:, 1], sel[:, 2]].double().cpu()
    targets[n - K :] = (logits[logit_idx] - logits.mean()).double().cpu()
    metric_value = float(final @ direction.to(dev, final.dtype)) if direction is not None else float("nan")
    return AttributionGraph(
        tokens.cpu(),
        active.cpu(),
        activations.float().cpu(),
        selected.cpu(),
        adjacency,
        logit_idx.cpu(),
        logit_p.cpu(),
        metric_row,
        targets,
        metric_value,
        L,
        f"{tc.kind}:{tc.name}",
    )


def memory_estimate(
    model, tc, tokens: torch.Tensor, batch: int, max_feature_nodes: int | None, max_n_logits: int
) -> str:
    """A rough upper estimate of one graph's memory, from the prompt's count of active features (a clean pass):
    the dense adjacency, the rows being computed, and the batched forward and backward pass."""
    state = clean_state(model, tc, tokens.to(model.device))
    L, P = tc.n_layers, len(tokens)
    n_active = sum(int((state["features"][l][1:] != 0).sum()) for l in range(L))
    n_feat = min(max_feature_nodes or n_active, n_active)
    n = n_feat + (L + 1) * P + max_n_logits
    item = state["errors"].element_size()
    b = max(1, min(batch, n_feat + max_n_logits + 1))
    cfg = model.bridge.cfg
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * model.d_model)
    adjacency = 4 * n * n
    rows = item * (n_feat + max_n_logits + 1) * (n_active + (L + 1) * P)
    passes = item * b * P * (L * (16 * model.d_model + 2 * d_mlp + 3 * model.n_heads * P) + 2 * (L + 1) * model.d_model)

    def mb(x):
        return f"{x / 2**20:,.0f} MiB" if x >= 2**20 else f"{x / 2**10:,.0f} KiB"

    return (
        f"{n_active} active features, {n:,} nodes: adjacency {mb(adjacency)}, rows {mb(rows)}, "
        f"pass on {b} prompt copies ~{mb(passes)}; about {mb(adjacency + rows + passes)} beyond the weights"
    )
