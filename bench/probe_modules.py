"""An independent PyTorch probe of closed-form module fitting on the MLM fixture (issue 15).

    LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread \
        /usr/bin/python3 bench/probe_modules.py [--spans 0-1 | 0-1,2-3] [--variants ...]

Rebuilds fixtures/mlm's MaskedLM in PyTorch (bench/probe_fit.py's loader), replaces each span of
layers by one post-LN layer that starts as the span's first layer (keep-first), fits it in float64
on calib/ and scores eval/ (masked top-1 and loss), as `node dist/bench/module-fit.js --parts
quality` does, so vcompile's module fit can be checked against a reference written apart from it and
variants of the method tried in minutes. With h the module's FFN input (the attention sublayer's
output), a the FFN's hidden activation and y the target stream:

  drop         the span removed
  init         keep-first, as it is
  refit        ridge of z* - h on [a; 1]: the FFN output projection refitted (vcompile's method),
               z* = y mapped back through the output norm with the candidate's own statistics
  res          ridge of z* - h on [a; h; 1]: refit plus a d x d map of h (an extra MatMul)
  iter         refit, then z* recomputed with the refitted module's statistics and refit again (x3)
  norm         refit, then the output norm's gamma and beta refitted per channel in output space
  wideM        refit with M more hidden units (the span's last layer's, largest output rows first) added
               to the module's FFN and their output rows fitted with the rest
  ctxW         ridge of z* - h on [a; context(h); 1]: refit plus maps of h at the W positions either side
               (h at t-1..t-W and t+1..t+W, 0 past the real positions; W = 1 when omitted) and of the mean
               of h over the sequence's real positions: position mixing a per-token fit cannot do
  resctx       ridge of z* - h on [a; h; context(h); 1]: res and ctx together
  ctxsW[rN]    ctxW fitted in two stages: refit, then the context maps on what refit leaves (vcompile's method);
               rN: N rounds of the two (backfitting, at the penalties the first round chose)
  last, refitlast, reslast   init, refit and res starting from the span's last layer instead
  avg, avg:METHOD   builtin:average (the span's mean weights), as it is or as METHOD's starting point
Each may end with +stream: later spans' target is the original model's stream at the span's end
(the target otherwise: the original span run on the stream the earlier fitted modules produce).
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_fit  # noqa: E402
from probe_fit import GRID, load, load_model, make_mlm  # noqa: E402

torch.set_num_threads(2)


def batches(ids, mask, batch=32):
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    return [(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)]


def sublayers(layer, x, additive):
    h = layer.attention_norm(x + layer.attention(x, additive))
    a = layer.ffn.activation(layer.ffn.inner(h))
    return h, a


def context(h, additive, window=1):
    """[h at t-j and t+j for j = 1..window ; the mean of h over the sequence], over real positions only (0 elsewhere)."""
    keep = (additive[:, 0, 0, :] == 0).to(h.dtype)[..., None]
    hk = h * keep
    parts = []
    for j in range(1, window + 1):
        zero = torch.zeros_like(hk[:, :j])
        parts += [torch.cat([zero, hk[:, :-j]], 1), torch.cat([hk[:, j:], zero], 1)]
    mean = hk.sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
    return torch.cat(parts + [mean.expand_as(h)], -1)


def average_layer(model, span):
    """One layer whose every parameter is the mean of the span's layers' (builtin:average)."""
    layers = list(model.bert.encoder)[span[0]:span[1] + 1]
    out = copy.deepcopy(layers[0])
    for name, p in out.named_parameters():
        p.data = torch.stack([dict(layer.named_parameters())[name].data for layer in layers]).mean(0)
    return out


def preimage(norm, y, z):
    mu, sd = z.mean(-1, keepdim=True), (z.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return mu + sd * (y - norm.bias) / norm.weight


class Ridge:
    """Normal equations of [features; 1] -> target, fit and held-out splits (every fifth sample)."""

    def __init__(self):
        self.g = [None, None]
        self.h = [None, None]
        self.yy = [0.0, 0.0]

    def add(self, f, t, keep, held):
        f = torch.cat([f, torch.ones(f.shape[:-1] + (1,), dtype=f.dtype)], -1)
        for s in (0, 1):
            rows = keep & (held if s else ~held)[:, None]
            fo, to = f[rows], t[rows]
            g, h = fo.T @ fo, fo.T @ to
            self.g[s] = g if self.g[s] is None else self.g[s] + g
            self.h[s] = h if self.h[s] is None else self.h[s] + h
            self.yy[s] += float((to * to).sum())

    def solve(self):
        w, err, _ = solve_ridge(self.g, self.h, self.yy)
        return w, err / self.yy[1]

    def staged(self, f, rounds=1):
        """Ridge on [a; 1] (the first f features and the constant), then the residual's ridge on [the rest; 1];
        then `rounds` - 1 more of each on what the other leaves, at the penalties the first round chose (backfitting)."""
        first = torch.cat([torch.arange(f), torch.tensor([-1])]) % self.g[0].shape[0]
        rest = torch.arange(f, self.g[0].shape[0])
        sub = lambda m, r, c: m[r][:, c]  # noqa: E731
        w1, _, pen1 = solve_ridge([sub(g, first, first) for g in self.g], [h[first] for h in self.h], self.yy)
        h2 = [h[rest] - sub(g, rest, first) @ w1 for g, h in zip(self.g, self.h)]
        yy2 = [yy - 2 * float((w1 * h[first]).sum()) + float((w1 * (sub(g, first, first) @ w1)).sum())
               for g, h, yy in zip(self.g, self.h, self.yy)]
        w2, err, pen2 = solve_ridge([sub(g, rest, rest) for g in self.g], h2, yy2)
        g, h = self.g[0], self.h[0]
        for _ in range(rounds - 1):
            w1 = torch.linalg.solve(sub(g, first, first) + torch.diag(pen1), h[first] - sub(g, first, rest) @ w2)
            w2 = torch.linalg.solve(sub(g, rest, rest) + torch.diag(pen2), h[rest] - sub(g, rest, first) @ w1)
        w = torch.cat([w1[:f], w2[:-1], w1[-1:] + w2[-1:]])
        err = self.yy[1] - 2 * float((w * self.h[1]).sum()) + float((w * (self.g[1] @ w)).sum())
        return w, err / self.yy[1]


def solve_ridge(g, h, yy):
    """Ridge of [features; 1] -> target on the fit split's normal equations, the penalty chosen on the held-out split's."""
    best = None
    for rel in GRID:
        pen = torch.full((g[0].shape[0],), float(rel * g[0].diagonal()[:-1].mean()), dtype=g[0].dtype)
        pen[-1] = 0
        w = torch.linalg.solve(g[0] + torch.diag(pen), h[0])
        err = yy[1] - 2 * float((w * h[1]).sum()) + float((w * (g[1] @ w)).sum())
        if best is None or err < best[1]:
            best = (w, err, pen)
    return best


class Module(torch.nn.Module):
    """One post-LN layer (a copy of the span's first), with an optional map of h added to its FFN."""

    def __init__(self, layer):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        self.res = None
        self.extra = None  # (inner Linear, activation, [m, d] output weight): more hidden units
        self.ctx = None  # [(2 window + 1) d, d]: a map of context(h), the neighbours and the sequence mean
        self.window = 1

    def forward(self, x, additive):
        h, a = sublayers(self.layer, x, additive)
        inc = self.layer.ffn.output(a)
        if self.ctx is not None:
            inc = inc + context(h, additive, self.window) @ self.ctx
        if self.extra is not None:
            inner, act, w = self.extra
            inc = inc + act(inner(h)) @ w
        if self.res is not None:
            inc = inc + h @ self.res
        return self.layer.ffn_norm(h + inc)


def run(model, spans, modules, x, additive, upto=None):
    """The stream after layer `upto` (default: all) with each span replaced by its module."""
    layers = list(model.bert.encoder)
    i = 0
    end = len(layers) - 1 if upto is None else upto
    while i <= end:
        span = next((s for s in spans if s[0] == i and s in modules), None)
        if span:
            x = modules[span](x, additive)
            i = span[1] + 1
        else:
            x = layers[i](x, additive)
            i += 1
    return x


@torch.no_grad()
def fit_span(model, span, modules, spans, method, data, stream_target):
    layers = list(model.bert.encoder)
    if method.startswith("avg:"):
        method = method[4:]
        module = Module(average_layer(model, span))
    else:
        module = Module(layers[span[1] if "last" in method else span[0]])
    held_of = lambda n, lo: (torch.arange(lo, lo + n) % 5) == 4  # noqa: E731
    rounds = 3 if method == "iter" else 1
    for _ in range(rounds):
        ridge = Ridge()
        lo = 0
        for ids, mask in data:
            additive = make_mlm.models.bert_additive_mask(mask).double()
            emb = model.bert.embeddings(ids).double()
            x = run(model, spans, modules, emb, additive, upto=span[0] - 1) if span[0] > 0 else emb
            if stream_target:
                y = emb
                for layer in layers[:span[1] + 1]:
                    y = layer(y, additive)
            else:
                y = x
                for layer in layers[span[0]:span[1] + 1]:
                    y = layer(y, additive)
            h, a = sublayers(module.layer, x, additive)
            z = h + module.layer.ffn.output(a)
            t = preimage(module.layer.ffn_norm, y, z) - h
            feats = torch.cat([a, h], -1) if method.startswith("res") else a
            if method.startswith("ctx"):
                module.window = int(method.partition("r")[0].lstrip("ctxs") or 1)
                feats = torch.cat([a, context(h, additive, module.window)], -1)
            if method == "resctx":
                feats = torch.cat([a, h, context(h, additive)], -1)
            if method.startswith("wide"):
                if module.extra is None:
                    src = layers[span[1]].ffn
                    m = int(method[4:])
                    keep = (src.output.weight ** 2).sum(0).argsort(descending=True)[:m].sort().values
                    inner = torch.nn.Linear(src.inner.in_features, m).double()
                    inner.weight.data = src.inner.weight.data[keep].clone()
                    inner.bias.data = src.inner.bias.data[keep].clone()
                    module.extra = (inner, src.activation, torch.zeros(m, src.output.out_features, dtype=torch.float64))
                    module.extra_fit = True
                feats = torch.cat([a, module.extra[1](module.extra[0](h))], -1)
                z = h + module.layer.ffn.output(a) + module.extra[1](module.extra[0](h)) @ module.extra[2]
                t = preimage(module.layer.ffn_norm, y, z) - h
            ridge.add(feats, t, mask.bool(), held_of(len(ids), lo))
            lo += len(ids)
        backfit = int(method.partition("r")[2] or 1) if method.startswith("ctxs") else 1
        f = module.layer.ffn.output.weight.shape[1]
        w, unexplained = ridge.staged(f, backfit) if method.startswith("ctxs") else ridge.solve()
        f = module.layer.ffn.output.weight.shape[1]
        module.layer.ffn.output.weight.copy_(w[:f].T)
        module.layer.ffn.output.bias.copy_(w[-1])
        if method.startswith("res"):
            module.res = w[f:-1].clone()
        if method.startswith("ctx"):
            module.ctx = w[f:-1].clone()
        if method == "resctx":
            d = w.shape[1]
            module.res, module.ctx = w[f:f + d].clone(), w[f + d:-1].clone()
        if method.startswith("wide"):
            module.extra = (module.extra[0], module.extra[1], w[f:-1].clone())
    if method == "norm":
        # per channel: y_j = gamma_j n_j + beta_j, n the normalised pre-norm stream
        sums = torch.zeros(5, module.layer.ffn_norm.weight.shape[0], dtype=torch.float64)
        for ids, mask in data:
            additive = make_mlm.models.bert_additive_mask(mask).double()
            emb = model.bert.embeddings(ids).double()
            x = run(model, spans, modules, emb, additive, upto=span[0] - 1) if span[0] > 0 else emb
            y = x
            for layer in layers[span[0]:span[1] + 1]:
                y = layer(y, additive)
            h, a = sublayers(module.layer, x, additive)
            z = h + module.layer.ffn.output(a)
            n = (z - z.mean(-1, keepdim=True)) / (z.var(-1, unbiased=False, keepdim=True) + module.layer.ffn_norm.eps).sqrt()
            keep = mask.bool()
            n, y = n[keep], y[keep]
            sums += torch.stack([n.sum(0), (n * n).sum(0), y.sum(0), (n * y).sum(0), torch.full_like(n[0], len(n))])
        sn, snn, sy, sny, c = sums
        gamma = (c * sny - sn * sy) / (c * snn - sn * sn)
        module.layer.ffn_norm.weight.copy_(gamma)
        module.layer.ffn_norm.bias.copy_((sy - gamma * sn) / c)
    return module, unexplained


@torch.no_grad()
def evaluate(model, spans, modules, ids, mask, labels, batch=32):
    tally = make_mlm.Tally()
    for i in range(0, len(ids), batch):
        m = torch.from_numpy(mask[i:i + batch])
        additive = make_mlm.models.bert_additive_mask(m).double()
        x = run(model, spans, modules, model.bert.embeddings(torch.from_numpy(ids[i:i + batch])), additive)
        tally.add(model.head(x), torch.from_numpy(labels[i:i + batch]))
    return tally.result()


class Identity(torch.nn.Module):
    def forward(self, x, additive):
        return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", default="0-1")
    parser.add_argument("--variants", default="drop,init,refit,res,iter,norm")
    args = parser.parse_args()
    model = load_model().double()
    spans = [tuple(int(v) for v in s.split("-")) for s in args.spans.split(",")]
    calib, evals = load("calib"), load("eval")
    data = batches(calib[0], calib[1])
    base = evaluate(model, [], {}, *evals)
    print(f"original: acc {base['accuracy']:.4f} loss {base['loss']:.4f}", flush=True)
    results = {}
    for variant in args.variants.split(","):
        method, _, tail = variant.partition("+")
        modules = {}
        notes = []
        for span in spans:
            if method == "drop":
                modules[span] = Identity()
            elif method == "avg":
                modules[span] = Module(average_layer(model, span))
            elif method in ("init", "last"):
                modules[span] = Module(list(model.bert.encoder)[span[1] if method == "last" else span[0]])
            else:
                modules[span], unexplained = fit_span(model, span, modules, spans, method, data,
                                                      tail == "stream" and span != spans[0])
                notes.append(f"{unexplained:.3f}")
        r = evaluate(model, spans, modules, *evals)
        results[variant] = r
        best = min((results[v]["loss"] for v in ("init", "avg") if v in results), default=None)
        gap = ""
        if best is not None and method not in ("drop", "init", "avg"):
            gap = f" recovers {(best - r['loss']) / (best - base['loss']):.0%} of the best training-free module's loss gap"
        print(f"{args.spans} {variant}: acc {r['accuracy']:.4f} loss {r['loss']:.4f}{gap} (target unexplained {' '.join(notes)})",
              flush=True)


if __name__ == "__main__":
    main()
