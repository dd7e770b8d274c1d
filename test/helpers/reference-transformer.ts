// A plain TypeScript forward pass of the transformers test/helpers/transformer-gen.ts builds (HF-style
// attention, separate Q/K/V, scores divided by sqrt(head size), additive padding mask, no causal mask,
// ReLU or tanh-GELU),
// with the mean plugin applied by hand in any scope: a group's mean over its real positions (the mask's
// ones, not the padding), the block on the short sequence, then repeat (ffn, attention) or, at layer scope,
// each position's own stream plus its group's change. It reads the weights from the model by name and
// shares no code with the pass, so it is an independent reference for what the rewritten graph computes.
import type { Model } from '../../src/ir/model.js';
import type { TransformerConfig } from './transformer-gen.js';

type Matrix = number[][]; // [positions][features]

export interface MeanPluginByHand {
  scope: 'ffn' | 'attention' | 'layer';
  ratio: number;
}

export function referenceForward(
  model: Model,
  config: TransformerConfig,
  ids: number[][],
  mask: number[][] | undefined,
  plugin?: MeanPluginByHand,
): Matrix[] {
  const w = weightsOf(model);
  return ids.map((row, b) => {
    let x = row.map((id) => w.vector('embeddings.word', id, config.hidden));
    const bias = mask ? mask[b].map((m) => (1 - m) * -10000) : row.map(() => 0);
    const keep = mask ? mask[b] : row.map(() => 1);
    for (let i = 0; i < config.layers; i++) x = layer(x, bias, keep, i, config, w, plugin);
    return config.norm === 'pre' ? normalize(x, 'final_norm', config, w) : x;
  });
}

function layer(
  x: Matrix,
  bias: number[],
  keep: number[],
  i: number,
  config: TransformerConfig,
  w: Weights,
  plugin?: MeanPluginByHand,
): Matrix {
  const attention = (input: Matrix, keyBias: number[]) => attend(input, keyBias, `layer${i}.attention`, config, w);
  const ffn = (input: Matrix) => feedForward(input, `layer${i}.ffn`, config, w);
  const wrap = (block: (x: Matrix, keyBias: number[]) => Matrix, scope: MeanPluginByHand['scope']) =>
    plugin?.scope === scope ? compressed(block, bias, keep, plugin.ratio, scope === 'layer') : block;
  const wrapAttention = wrap(attention, 'attention');
  const wrapFfn = wrap((input) => ffn(input), 'ffn');
  const whole = (input: Matrix, keyBias: number[]) => {
    const h = residual(input, `layer${i}.attention`, (t) => wrapAttention(t, keyBias), config, w);
    return residual(h, `layer${i}.ffn`, (t) => wrapFfn(t, keyBias), config, w);
  };
  return wrap(whole, 'layer')(x, bias);
}

/**
 * Mean plugin by hand: pad with zeros to a multiple of k, average each group over its real positions (0
 * for a group of padding only), run, restore, crop. Restore repeats the block's result, or with
 * `residual` (layer scope) adds the group's change to each position: x_j + inner_g - short_g.
 */
function compressed(block: (x: Matrix, keyBias: number[]) => Matrix, bias: number[], keep: number[], k: number, residual: boolean) {
  return (x: Matrix, _keyBias: number[]): Matrix => {
    const n = x.length;
    const extra = n % k ? k - (n % k) : 0;
    const padded = [...x, ...Array.from({ length: extra }, () => x[0].map(() => 0))];
    const paddedKeep = [...keep, ...new Array<number>(extra).fill(0)];
    const paddedBias = [...bias, ...new Array<number>(extra).fill(-3.4028234663852886e38)];
    const groups = padded.length / k;
    const group = <T>(xs: T[], g: number) => xs.slice(g * k, g * k + k);
    const short = Array.from({ length: groups }, (_, g) => meanOfReal(group(padded, g), group(paddedKeep, g)));
    const shortBias = Array.from({ length: groups }, (_, g) => Math.max(...group(paddedBias, g)));
    const inner = block(short, shortBias);
    return Array.from({ length: n }, (_, j) => {
      const g = Math.floor(j / k);
      return residual ? x[j].map((t, c) => t + inner[g][c] - short[g][c]) : inner[g];
    });
  };
}

function residual(x: Matrix, name: string, block: (x: Matrix) => Matrix, config: TransformerConfig, w: Weights): Matrix {
  if (config.norm === 'pre') return add(x, block(normalize(x, `${name}_norm`, config, w)));
  return normalize(add(x, block(x)), `${name}_norm`, config, w);
}

function attend(x: Matrix, keyBias: number[], name: string, config: TransformerConfig, w: Weights): Matrix {
  const { hidden, heads } = config;
  const size = hidden / heads;
  const q = linear(x, `${name}.query`, config, w);
  const k = linear(x, `${name}.key`, config, w);
  const v = linear(x, `${name}.value`, config, w);
  const context = x.map(() => new Array<number>(hidden).fill(0));
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < x.length; i++) {
      const scores = k.map((kj, j) => dot(q[i], kj, h * size, size) / Math.sqrt(size) + keyBias[j]);
      const top = Math.max(...scores);
      const exps = scores.map((s) => Math.exp(s - top));
      const total = exps.reduce((a, b) => a + b, 0);
      exps.forEach((e, j) => {
        for (let c = 0; c < size; c++) context[i][h * size + c] += (e / total) * v[j][h * size + c];
      });
    }
  }
  return linear(context, `${name}.output`, config, w);
}

function feedForward(x: Matrix, name: string, config: TransformerConfig, w: Weights): Matrix {
  const inner = linear(x, `${name}.inner`, config, w).map((row) => row.map((t) => activate(t, config.activation)));
  return linear(inner, `${name}.output`, config, w);
}

function activate(t: number, kind: TransformerConfig['activation']): number {
  if (kind === 'relu') return Math.max(0, t);
  if (kind === 'gelu') throw new Error('reference: erf GELU is not implemented; use relu or gelu_tanh');
  return 0.5 * t * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (t + 0.044715 * t ** 3)));
}

function normalize(x: Matrix, name: string, config: TransformerConfig, w: Weights): Matrix {
  const gamma = w.get(`${name}.weight`);
  const rms = config.normKind === 'rmsnorm';
  const beta = rms ? undefined : w.get(`${name}.bias`);
  return x.map((row) => {
    const mu = rms ? 0 : row.reduce((a, b) => a + b, 0) / row.length;
    const variance = row.reduce((a, b) => a + (b - mu) ** 2, 0) / row.length;
    const scale = 1 / Math.sqrt(variance + (rms ? 1e-6 : 1e-5));
    return row.map((t, c) => (t - mu) * scale * gamma[c] + (beta ? beta[c] : 0));
  });
}

function linear(x: Matrix, name: string, config: TransformerConfig, w: Weights): Matrix {
  const weight = w.get(`${name}.weight`);
  const outDim = weight.length / x[0].length;
  const bias = config.bias ? w.get(`${name}.bias`) : undefined;
  return x.map((row) =>
    Array.from({ length: outDim }, (_, o) => row.reduce((acc, t, i) => acc + t * weight[i * outDim + o], bias ? bias[o] : 0)),
  );
}

function add(a: Matrix, b: Matrix): Matrix {
  return a.map((row, i) => row.map((t, c) => t + b[i][c]));
}

/** The mean of the rows whose keep is 1; zeros when there are none. */
function meanOfReal(rows: Matrix, keep: number[]): number[] {
  const count = keep.reduce((a, b) => a + b, 0);
  return rows[0].map((_, c) => (count ? rows.reduce((a, r, i) => a + keep[i] * r[c], 0) / count : 0));
}

function dot(a: number[], b: number[], start: number, size: number): number {
  let s = 0;
  for (let c = start; c < start + size; c++) s += a[c] * b[c];
  return s;
}

interface Weights {
  get(name: string): Float32Array;
  vector(name: string, row: number, width: number): number[];
}

function weightsOf(model: Model): Weights {
  const byName = new Map(model.graph.initializers.map((v) => [v.name, v.initializer!]));
  const get = (name: string) => {
    const t = byName.get(name);
    if (!t) throw new Error(`reference: no weight named ${name}`);
    return t.toFloat32();
  };
  return { get, vector: (name, row, width) => Array.from(get(name).subarray(row * width, row * width + width)) };
}
