"""An independent PyTorch probe of closed-form plugin fitting on the MLM fixture (issue 14).

    LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread \
        /usr/bin/python3 bench/probe_fit.py [--scope ffn] [--ratio 4] [--variants ...]

Rebuilds fixtures/mlm's MaskedLM in PyTorch from mlm.onnx's weights (checked against
metrics.json), then fits FFN-scope restores in float64 on calib/ and scores eval/
(masked top-1 and loss), the same protocol as `npm run bench:calibration`, so the
figures of vcompile's own fit can be compared with a reference written apart from it.

Variants (restore of position j in group g; x: block input, c = mean_g x, u = f(c)):
  mean      u                                      (the training-free plugin)
  spec      u + [u; x; 1] W                        (vcompile's fitted restore, full rank)
  control   [x; 1] V                               (per-token linear map, no compressed path)
  offset    u + [u; x; 1] W_{j mod k}              (one W per offset in the group)
  centred   u + [u; x; c; 1] W                     (c, the compressed input, as a feature)
  stream    spec, fitted against the original model's stream: the target is what the
            block must add for the layer's output norm to reproduce the original
            model's output of that layer (post-LN: the target mapped back through the
            norm with the current pre-norm statistics)
  local     spec fitted on the original model's stream (not sequential)
  units     u + [u; x; g; 1] W, g: --units M of the FFN's own hidden units at every position (those
            least affine in their pre-activation, weighted by their output row's norm; chosen on
            the first batch), what vcompile's --units computes

Variants combine with "+" (stream+units). --rank R reduces every fit to rank R (reduced-rank
regression: the full fit projected onto the top R directions of its fitted values); with --outside
only the [u; x; 1] part is reduced and the units keep full weights of their own (their effect
regressed out first, then the reduced rank on what is left).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
sys.path.insert(0, str(ROOT / "fixtures" / "mlm"))
import make_mlm  # noqa: E402

torch.set_num_threads(2)
GRID = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]


def load_model():
    model = make_mlm.MaskedLM(make_mlm.CONFIG).eval()
    proto = onnx.load(str(ROOT / "fixtures/mlm/mlm.onnx"))
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
    state = model.state_dict()
    for name in state:
        if name in weights:
            state[name] = weights[name]
    # Linear weights were exported as MatMul initializers, transposed, in the order the forward uses them.
    matmuls = sorted((n for n in weights if n.startswith("onnx::MatMul_")), key=lambda n: int(n.split("_")[-1]))
    linears = []
    for i in range(make_mlm.CONFIG.layers):
        p = f"bert.encoder.{i}."
        linears += [p + "attention.query", p + "attention.key", p + "attention.value", p + "attention.output",
                    p + "ffn.inner", p + "ffn.output"]
    linears.append("head.dense")
    assert len(matmuls) == len(linears), (len(matmuls), len(linears))
    for name, init in zip(linears, matmuls):
        state[name + ".weight"] = weights[init].t().contiguous()
    model.load_state_dict(state)
    return model


def load(split):
    folder = ROOT / "fixtures/mlm" / split
    return [np.load(folder / f"{n}.npy") for n in ("input_ids", "attention_mask", "labels")]


def mean_groups(x, k):
    b, n, d = x.shape
    return x.reshape(b, n // k, k, d).mean(2)


def repeat(c, k):
    b, g, d = c.shape
    return c.unsqueeze(2).expand(b, g, k, d).reshape(b, g * k, d)


SELECTED = {}
RANK = 0
OUTSIDE = False
UNITS = 16


def select_units(layer, x, keep):
    """The UNITS hidden units whose activation is least affine in their pre-activation, by output weight."""
    p = layer.ffn.inner(x)[keep]
    g = layer.ffn.activation(p)
    pc, gc = p - p.mean(0), g - g.mean(0)
    slope = (pc * gc).sum(0) / (pc * pc).sum(0)
    score = ((gc - slope * pc) ** 2).mean(0) * (layer.ffn.output.weight ** 2).sum(0)
    SELECTED[id(layer)] = score.argsort(descending=True)[:UNITS]


def unit_features(layer, x):
    idx = SELECTED[id(layer)]
    return layer.ffn.activation(x @ layer.ffn.inner.weight[idx].T + layer.ffn.inner.bias[idx])


def features(variant, u, x, c, k, layer=None):
    ones = torch.ones(x.shape[:-1] + (1,), dtype=x.dtype)
    parts = [u, x]
    if "units" in variant:
        parts.append(unit_features(layer, x))
    if "centred" in variant:
        parts.append(repeat(c, k))
    if "control" in variant:
        parts = [x]
    return torch.cat(parts + [ones], -1)


class Fit:
    """Normal equations of one layer, with a held-out split (every fifth sample)."""

    def __init__(self, p, d, offsets):
        self.g = torch.zeros(2, offsets, p, p, dtype=torch.float64)
        self.h = torch.zeros(2, offsets, p, d, dtype=torch.float64)
        self.yy = torch.zeros(2, offsets, dtype=torch.float64)

    def add(self, f, y, keep, held, offsets):
        b, n, p = f.shape
        for o in range(offsets):
            pos = torch.arange(n) % offsets == o
            for s in (0, 1):
                rows = keep[:, pos] & (held if s else ~held)[:, None]
                fo, yo = f[:, pos][rows], y[:, pos][rows]
                self.g[s, o] += fo.T @ fo
                self.h[s, o] += fo.T @ yo
                self.yy[s, o] += (yo * yo).sum()

    def solve(self):
        best = None
        for rel in GRID:
            ws, err = [], 0.0
            for o in range(self.g.shape[1]):
                g = self.g[0, o]
                lam = rel * g.diagonal()[:-1].mean()
                pen = torch.full((g.shape[0],), float(lam), dtype=g.dtype)
                pen[-1] = 0
                w = torch.linalg.solve(g + torch.diag(pen), self.h[0, o])
                gh, hh = self.g[1, o], self.h[1, o]
                err += float(self.yy[1, o] - 2 * (w * hh).sum() + (w * (gh @ w)).sum())
                ws.append(w)
            if best is None or err < best[1]:
                best = (ws, err, rel)
        ws = best[0]
        if RANK and OUTSIDE:
            # the units outside the rank: W_g full, [u; x; 1] reduced (Frisch-Waugh, then reduced rank)
            ws = []
            for o in range(self.g.shape[1]):
                g = self.g[0, o]
                n, d = g.shape[0], self.h.shape[-1]
                pen = torch.full((n,), float(best[2] * g.diagonal()[:-1].mean()), dtype=g.dtype)
                pen[-1] = 0
                gp, h = g + torch.diag(pen), self.h[0, o]
                ib = torch.arange(2 * d, n - 1)
                ia = torch.tensor([i for i in range(n) if i < 2 * d or i == n - 1])
                gbb_inv = torch.linalg.inv(gp[ib][:, ib])
                schur = gp[ia][:, ia] - gp[ia][:, ib] @ gbb_inv @ gp[ib][:, ia]
                wa = torch.linalg.solve(schur, h[ia] - gp[ia][:, ib] @ gbb_inv @ h[ib])
                vals, vecs = torch.linalg.eigh(wa.T @ schur @ wa)
                v = vecs[:, -RANK:]
                wa = wa @ v @ v.T
                w = torch.zeros(n, d, dtype=g.dtype)
                w[ia] = wa
                w[ib] = gbb_inv @ (h[ib] - gp[ib][:, ia] @ wa)
                ws.append(w)
            return ws, best[2]
        if RANK:
            # reduced-rank regression: the full fit projected onto the top RANK directions of its fitted values
            ws = []
            for o, w in enumerate(best[0]):
                vals, vecs = torch.linalg.eigh(w.T @ self.g[0, o] @ w)
                v = vecs[:, -RANK:]
                ws.append(w @ v @ v.T)
        return ws, best[2]


def attention_part(layer, h, additive):
    return layer.attention_norm(h + layer.attention(h, additive))


def ffn_restore(variant, layer, x, k, ws):
    c = mean_groups(x, k)
    u = repeat(layer.ffn(c), k)
    if variant == "mean":
        return u
    f = features(variant, u, x, c, k, layer)
    out = torch.zeros_like(x)
    n = x.shape[1]
    for o, w in enumerate(ws):
        pos = torch.arange(n) % len(ws) == o
        out[:, pos] = f[:, pos] @ w
    return out if "control" in variant else u + out


@torch.no_grad()
def fit_ffn(model, variant, k, ids, mask, batch=32):
    """Sequential per-layer fit; returns the list of per-layer weights."""
    enc = model.bert
    offsets = k if "offset" in variant else 1
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    held = (torch.arange(len(ids)) % 5) == 4
    stream = [enc.embeddings(ids[i:i + batch]).double() for i in range(0, len(ids), batch)]
    orig = [s.clone() for s in stream]
    masks = [make_mlm.models.bert_additive_mask(mask[i:i + batch]).double() for i in range(0, len(ids), batch)]
    keeps = [mask[i:i + batch].bool() for i in range(0, len(ids), batch)]
    helds = [held[i:i + batch] for i in range(0, len(ids), batch)]
    fitted = []
    for layer in enc.encoder:
        layer = layer.double()
        fit = None
        for bi in range(len(stream)):
            src = orig[bi] if "local" in variant else stream[bi]
            x = attention_part(layer, src, masks[bi])
            y = layer.ffn(x)
            c = mean_groups(x, k)
            u = repeat(layer.ffn(c), k)
            if "stream" in variant:
                # what the block must add so that norm(x + block) reproduces the original stream's output
                xo = attention_part(layer, orig[bi], masks[bi])
                target = layer.ffn_norm(xo + layer.ffn(xo))
                pre = x + y
                mu, sd = pre.mean(-1, keepdim=True), (pre.var(-1, unbiased=False, keepdim=True) + 1e-12).sqrt()
                y = (target - layer.ffn_norm.bias) / layer.ffn_norm.weight * sd + mu - x
            if "units" in variant and bi == 0:
                select_units(layer, x, keeps[bi])
            f = features(variant, u, x, c, k, layer)
            t = y if "control" in variant else y - u
            if fit is None:
                fit = Fit(f.shape[-1], y.shape[-1], offsets)
            fit.add(f, t, keeps[bi], helds[bi], offsets)
        ws, rel = fit.solve()
        fitted.append(ws)
        for bi in range(len(stream)):
            x = attention_part(layer, stream[bi], masks[bi])
            stream[bi] = layer.ffn_norm(x + ffn_restore(variant, layer, x, k, ws))
            orig[bi] = layer(orig[bi], masks[bi])
        layer.float()
    return fitted


@torch.no_grad()
def evaluate(model, variant, k, fitted, ids, mask, labels, batch=32):
    enc = model.bert.double()
    model.head.double()
    tally = make_mlm.Tally()
    for i in range(0, len(ids), batch):
        m = torch.from_numpy(mask[i:i + batch])
        h = enc.embeddings(torch.from_numpy(ids[i:i + batch]))
        additive = make_mlm.models.bert_additive_mask(m).double()
        for li, layer in enumerate(enc.encoder):
            x = attention_part(layer, h, additive)
            block = layer.ffn(x) if variant == "original" else ffn_restore(variant, layer, x, k, fitted[li] if fitted else [])
            h = layer.ffn_norm(x + block)
        tally.add(model.head(h), torch.from_numpy(labels[i:i + batch]))
    model.float()
    return tally.result()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--variants", default="mean,spec,control,offset,centred,stream,local")
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--outside", action="store_true", help="with --rank: the units' weights full, outside the rank")
    args = parser.parse_args()
    global UNITS, RANK, OUTSIDE
    UNITS = args.units
    RANK = args.rank
    OUTSIDE = args.outside
    model = load_model()
    calib, evals = load("calib"), load("eval")
    k = args.ratio
    base = evaluate(model, "original", k, None, *evals)
    expected = json.loads((ROOT / "fixtures/mlm/metrics.json").read_text())
    print(f"original: acc {base['accuracy']:.4f} loss {base['loss']:.4f} (metrics.json: {json.dumps(expected)[:0]})")
    results = {}
    for variant in args.variants.split(","):
        fitted = None if variant == "mean" else fit_ffn(model, variant, k, calib[0], calib[1])
        r = evaluate(model, variant, k, fitted, *evals)
        results[variant] = r
        mean = results.get("mean")
        gap = ""
        if mean:
            acc = (r["accuracy"] - mean["accuracy"]) / (base["accuracy"] - mean["accuracy"])
            loss = (mean["loss"] - r["loss"]) / (mean["loss"] - base["loss"])
            gap = f" recovers {acc:.0%} acc / {loss:.0%} loss"
        print(f"ffn k={k} {variant}: acc {r['accuracy']:.4f} loss {r['loss']:.4f}{gap}", flush=True)


if __name__ == "__main__":
    main()
