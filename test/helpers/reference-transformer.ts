// A plain TypeScript forward pass of the transformers test/helpers/transformer-gen.ts builds (HF-style
// attention, separate Q/K/V, scores divided by sqrt(head size), additive padding mask, no causal mask,
// ReLU or tanh-GELU),
// with the mean plugin applied by hand in any scope. It reads the weights from the model by name and
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
    for (let i = 0; i < config.layers; i++) x = layer(x, bias, i, config, w, plugin);
    return config.norm === 'pre' ? normalize(x, 'final_norm', config, w) : x;
  });
}

function layer(x: Matrix, bias: number[], i: number, config: TransformerConfig, w: Weights, plugin?: MeanPluginByHand): Matrix {
  const attention = (input: Matrix, keyBias: number[]) => attend(input, keyBias, `layer${i}.attention`, config, w);
  const ffn = (input: Matrix) => feedForward(input, `layer${i}.ffn`, config, w);
  const wrapAttention = plugin?.scope === 'attention' ? compressed(attention, bias, plugin.ratio) : attention;
  const wrapFfn = plugin?.scope === 'ffn' ? compressed((input) => ffn(input), bias, plugin.ratio) : (input: Matrix) => ffn(input);
  const whole = (input: Matrix, keyBias: number[]) => {
    const h = residual(input, `layer${i}.attention`, (t) => wrapAttention(t, keyBias), config, w);
    return residual(h, `layer${i}.ffn`, (t) => wrapFfn(t, keyBias), config, w);
  };
  return plugin?.scope === 'layer' ? compressed(whole, bias, plugin.ratio)(x, bias) : whole(x, bias);
}

/** Mean plugin by hand: pad with zeros to a multiple of k, average groups, run, repeat, crop. */
function compressed(block: (x: Matrix, keyBias: number[]) => Matrix, bias: number[], k: number) {
  return (x: Matrix, _keyBias: number[]): Matrix => {
    const n = x.length;
    const padded = n % k ? [...x, ...Array.from({ length: k - (n % k) }, () => x[0].map(() => 0))] : x;
    const paddedBias = [...bias, ...Array.from({ length: padded.length - n }, () => -3.4028234663852886e38)];
    const groups = padded.length / k;
    const short = Array.from({ length: groups }, (_, g) => mean(padded.slice(g * k, g * k + k)));
    const shortBias = Array.from({ length: groups }, (_, g) => Math.max(...paddedBias.slice(g * k, g * k + k)));
    const inner = block(short, shortBias);
    return Array.from({ length: n }, (_, j) => inner[Math.floor(j / k)]);
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

function mean(rows: Matrix): number[] {
  return rows[0].map((_, c) => rows.reduce((a, r) => a + r[c], 0) / rows.length);
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
