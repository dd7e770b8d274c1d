// Built-in plugins, written with the builder and parameterised by their weights, so that a plugin can
// be generated, trained elsewhere, fitted in closed form, or brought back from another framework.
//   mean      compress = mean of the real positions (keep = 1) of each group of k;
//             restore = repeat each compressed vector k times (ffn, attention), or, at layer scope,
//             hidden + repeat(inner - compressed): each position keeps its own stream and receives its
//             group's change (a whole layer's output is the stream itself, not a block's increment)
//   variator  compress = softmax-weighted merge of the k vectors (a [k, k·d] linear scores them; padded
//             positions are zeroed and get no weight); restore = the mean's restore + a tanh bottleneck
//             adapter on [repeated inner ; hidden] (Variator), its input product written as two, the
//             repeated half computed on the short sequence (the weights as PyTorch's Linear holds them)
//   identity  k = 1: compressed = hidden, restored = inner (the plumbing check)
//   fitted    compress = the mean's; restore = the mean's u + (u A_u + hidden A_x + g A_g + a) B: a linear
//             adapter on [u ; hidden ; g] fitted in closed form from data (src/decide/fit-plugins.ts), stored
//             factored (rank R: [d, R] twice, then [R, d]) or full (B absent); g, at FFN scope only, are a few
//             of the block's own hidden units computed at every position (passes/plugin/units.ts)
// mean and variator declare the optional `keep` input ([batch, seq], 1 at real positions), which the pass
// feeds; identity does not need it.
import { type GraphBuilder, ModelBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { VersionedOps } from '../../src/ir/ops.js';
import { DataType, tensorType } from '../../src/ir/types.js';
import { Rng } from '../../src/random.js';
import { addToGroups } from './sequence.js';
import { buildUnits, type Units } from './units.js';

export type Scope = 'ffn' | 'attention' | 'layer';
export const SCOPES: readonly Scope[] = ['ffn', 'attention', 'layer'];
export type BuiltinKind = 'mean' | 'variator' | 'identity';
export type PluginKind = BuiltinKind | 'fitted';
export const BUILTIN_KINDS: readonly BuiltinKind[] = ['mean', 'variator', 'identity'];

export interface PluginShape {
  ratio: number;
  hidden: number;
  scope: Scope;
  /** default-domain opset to write the plugin for (default 17) */
  opset?: number;
}

/** Variator's weights in PyTorch Linear layout ([out, in], row-major). */
export interface VariatorWeights {
  /** [k, k·d] and [k]: scores the k vectors of a group */
  mergeWeight: Float32Array;
  mergeBias: Float32Array;
  /** [bottleneck, 2d] and [bottleneck] */
  adapterInWeight: Float32Array;
  adapterInBias: Float32Array;
  /** [d, bottleneck] and [d] */
  adapterOutWeight: Float32Array;
  adapterOutBias: Float32Array;
}

export const VARIATOR_BOTTLENECK = 64;

export function buildMeanPlugin(shape: PluginShape): Model {
  return buildPlugin(shape, 'mean', meanCompress(shape), (b, ops, io) => baseRestore(b, ops, io, shape));
}

/** The mean of each group's real positions. */
function meanCompress(shape: PluginShape): Compress {
  const { ratio: k, hidden: d } = shape;
  return (b, ops, { hidden, keep }) => {
    // each group's sum of real positions as one product [1, k] x [k, d] per group: keep weighs the positions
    // as it reads them, so the masked copy of hidden a Mul and a ReduceSum would write is never made
    const weights = b.op.Reshape(keep!, b.int64s('keep_row_shape', [0, -1, 1, k]));
    const groups = b.op.Reshape(hidden, b.int64s('group_shape', [0, -1, k, d]));
    const sums = b.op.Reshape(b.op.MatMul(weights, groups), b.int64s('sum_shape', [0, -1, d]));
    const counts = ops.reduce('ReduceSum', b.op.Reshape(keep!, b.int64s('keep_group_shape', [0, -1, k])), [2], true);
    // a group without a real position sums to 0, and stays 0
    return b.op.Div(sums, b.op.Max(counts, b.scalar('min_count', MIN_COUNT)));
  };
}

export function buildIdentityPlugin(shape: PluginShape): Model {
  if (shape.ratio !== 1) throw new Error('the identity plugin has ratio 1');
  return buildPlugin(
    shape,
    'identity',
    (b, _ops, { hidden }) => b.op.Identity(hidden),
    (b, _ops, { inner }) => b.op.Identity(inner),
    false,
  );
}

export function buildVariatorPlugin(shape: PluginShape, weights: VariatorWeights): Model {
  const { ratio: k, hidden: d } = shape;
  const bottleneck = weights.adapterInBias.length;
  checkLength('mergeWeight', weights.mergeWeight, k * k * d);
  checkLength('mergeBias', weights.mergeBias, k);
  checkLength('adapterInWeight', weights.adapterInWeight, bottleneck * 2 * d);
  checkLength('adapterOutWeight', weights.adapterOutWeight, d * bottleneck);
  checkLength('adapterOutBias', weights.adapterOutBias, d);
  return buildPlugin(
    shape,
    'variator',
    (b, ops, { hidden, keep }) => {
      // Padded positions are zeroed before they are scored, so that what fills them cannot change the merge.
      const kept = b.op.Mul(hidden, ops.unsqueeze(keep!, [2]));
      const concatenated = b.op.Reshape(kept, b.int64s('concat_shape', [0, -1, k * d]));
      const scores = b.op.Add(
        b.op.MatMul(concatenated, b.floats('merge_weight_t', [k * d, k], transpose(weights.mergeWeight, k, k * d))),
        b.floats('merge_bias', [k], weights.mergeBias),
      );
      // (keep - 1) * 1e9: padded positions get no weight; in a group with no real position every vector is 0
      const excluded = b.op.Mul(
        b.op.Sub(b.op.Reshape(keep!, b.int64s('keep_group_shape', [0, -1, k])), b.scalar('one', 1)),
        b.scalar('excluded_score', EXCLUDED_SCORE),
      );
      const mix = b.op.Reshape(ops.softmaxLastAxis(b.op.Add(scores, excluded), 3), b.int64s('mix_shape', [0, -1, 1, k]));
      const groups = b.op.Reshape(kept, b.int64s('group_shape', [0, -1, k, d]));
      return b.op.Reshape(b.op.MatMul(mix, groups), b.int64s('merged_shape', [0, -1, d]));
    },
    (b, ops, io) => {
      // [repeat(inner) ; hidden] W_in = repeat(inner W_u) + hidden W_x (W_u, W_x: W_in's two halves of rows):
      // no concatenation, the repeated half multiplied before it is repeated, on k times fewer rows, and
      // added to its group by broadcasting with the bias, which is constant along the group
      const adapterIn = transpose(weights.adapterInWeight, bottleneck, 2 * d);
      const fromRestored = b.floats('adapter_in_from_restored', [d, bottleneck], adapterIn.subarray(0, d * bottleneck));
      const fromHidden = b.floats('adapter_in_from_hidden', [d, bottleneck], adapterIn.subarray(d * bottleneck));
      const shortDown = b.op.Add(b.op.MatMul(io.inner, fromRestored), b.floats('adapter_in_bias', [bottleneck], weights.adapterInBias));
      const down = addRepeated(b, ops, b.op.MatMul(io.hidden, fromHidden), shortDown, { ...shape, hidden: bottleneck });
      const up = b.op.MatMul(
        b.op.Tanh(down),
        b.floats('adapter_out_weight_t', [bottleneck, d], transpose(weights.adapterOutWeight, d, bottleneck)),
      );
      // the restore's repeat and the adapter's output bias, both constant along a group, added once per group
      const outBias = b.floats('adapter_out_bias', [d], weights.adapterOutBias);
      return shape.scope === 'layer'
        ? addRepeated(b, ops, b.op.Add(io.hidden, up), b.op.Add(b.op.Sub(io.inner, io.compressed), outBias), shape)
        : addRepeated(b, ops, up, b.op.Add(io.inner, outBias), shape);
    },
  );
}

/**
 * A fitted restore's adapter z = u A_u + hidden A_x + a (rank r), then z B (B: [r, d]; absent when the fit
 * is full rank, r = d), added to the mean's restore u. Row-major, [in, out] as MatMul takes them.
 */
export interface FittedWeights {
  /** [d, r] */
  fromRestored: Float32Array;
  /** [d, r] */
  fromHidden: Float32Array;
  /** [r] */
  bias: Float32Array;
  /** [r, d], or undefined for a full-rank fit */
  up?: Float32Array;
  /** FFN scope: the block's full-length units g and their coefficients A_g ([m, r]) */
  units?: { units: Units; fromUnits: Float32Array };
}

export function buildFittedPlugin(shape: PluginShape, weights: FittedWeights, metadata: [string, string][] = []): Model {
  const { hidden: d } = shape;
  const rank = weights.bias.length;
  checkLength('fromRestored', weights.fromRestored, d * rank);
  checkLength('fromHidden', weights.fromHidden, d * rank);
  if (weights.up) checkLength('up', weights.up, rank * d);
  else if (rank !== d) throw new Error(`fitted weights: a full-rank fit has rank ${d}, got ${rank}`);
  if (weights.units && shape.scope !== 'ffn') throw new Error(`fitted weights: units at ${shape.scope} scope`);
  if (weights.units) checkLength('fromUnits', weights.units.fromUnits, weights.units.units.indices.length * rank);
  const model = buildPlugin(shape, 'fitted', meanCompress(shape), (b, ops, io) => {
    const u = b.floats('adapter_from_restored', [d, rank], weights.fromRestored);
    const x = b.floats('adapter_from_hidden', [d, rank], weights.fromHidden);
    // u A_u is computed on the short sequence and repeated (u is a repeat there): k times fewer MACs
    const byRank = { ...shape, hidden: rank };
    let z: Value;
    if (shape.scope === 'layer') {
      // u = hidden + repeat(inner - compressed), so u A_u + hidden A_x = hidden (A_u + A_x) + repeat((inner - compressed) A_u)
      const change = b.op.MatMul(b.op.Sub(io.inner, io.compressed), u);
      z = addRepeated(b, ops, b.op.MatMul(io.hidden, b.op.Add(u, x)), change, byRank);
    } else {
      z = addRepeated(b, ops, b.op.MatMul(io.hidden, x), b.op.MatMul(io.inner, u), byRank);
    }
    if (weights.units) {
      const { units, fromUnits } = weights.units;
      const g = b.floats('adapter_from_units', [units.indices.length, rank], fromUnits);
      z = b.op.Add(z, b.op.MatMul(buildUnits(b, io.hidden, units), g));
    }
    z = b.op.Add(z, b.floats('adapter_bias', [rank], weights.bias));
    const adapter = weights.up ? b.op.MatMul(z, b.floats('adapter_up', [rank, d], weights.up)) : z;
    return shape.scope === 'layer'
      ? addRepeated(b, ops, b.op.Add(io.hidden, adapter), b.op.Sub(io.inner, io.compressed), shape)
      : addRepeated(b, ops, adapter, io.inner, shape);
  });
  model.metadataProps = [...(model.metadataProps ?? []), ...metadata];
  return model;
}

/**
 * Variator weights drawn from a seeded generator (PyTorch's Linear init range); `zeroAdapter` makes restore
 * the mean plugin's (a plain repeat; at layer scope hidden + repeat(inner - compressed)).
 */
export function initVariatorWeights(
  ratio: number,
  hidden: number,
  options: { seed?: number; zeroAdapter?: boolean; bottleneck?: number } = {},
): VariatorWeights {
  const rng = new Rng(options.seed ?? 0, 'variator');
  const bottleneck = options.bottleneck ?? VARIATOR_BOTTLENECK;
  const uniform = (n: number, fanIn: number) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) / Math.sqrt(fanIn));
  const adapterOut = (n: number) => (options.zeroAdapter ? new Float32Array(n) : uniform(n, bottleneck));
  return {
    mergeWeight: uniform(ratio * ratio * hidden, ratio * hidden),
    mergeBias: uniform(ratio, ratio * hidden),
    adapterInWeight: uniform(bottleneck * 2 * hidden, 2 * hidden),
    adapterInBias: uniform(bottleneck, 2 * hidden),
    adapterOutWeight: adapterOut(hidden * bottleneck),
    adapterOutBias: adapterOut(hidden),
  };
}

/** The denominator's floor in the mean of a group's real positions (their count is 0 or at least 1). */
const MIN_COUNT = 1e-6;
/** Added to a padded position's merge score: exp of it is 0 in float32. */
const EXCLUDED_SCORE = 1e9;

interface CompressInputs {
  hidden: Value;
  /** [batch, seq] float, 1 at real positions; declared by plugins built with `keep` */
  keep?: Value;
}

interface RestoreInputs {
  inner: Value;
  hidden: Value;
  /** the plugin's own `compressed` output */
  compressed: Value;
}

type Compress = (b: GraphBuilder, ops: VersionedOps, io: CompressInputs) => Value;
type Restore = (b: GraphBuilder, ops: VersionedOps, io: RestoreInputs) => Value;

function buildPlugin(shape: PluginShape, kind: PluginKind, compress: Compress, restore: Restore, withKeep = true): Model {
  const { ratio, hidden: d, scope } = shape;
  if (!Number.isInteger(ratio) || ratio < 1) throw new Error(`ratio must be an integer >= 1, got ${ratio}`);
  const b = new ModelBuilder(shape.opset ?? 17, `vcompile_${kind}_plugin`);
  const ops = new VersionedOps(b, shape.opset ?? 17);
  const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
  const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'compressed_seq', d]));
  const keep = withKeep ? b.input('keep', tensorType(DataType.FLOAT, ['batch', 'seq'])) : undefined;
  const compressed = compress(b, ops, { hidden, keep });
  const restored = restore(b, ops, { inner, hidden, compressed });
  b.output(compressed, 'compressed', tensorType(DataType.FLOAT, ['batch', 'compressed_seq', d]));
  b.output(restored, 'restored', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
  b.model.metadataProps = [
    ['vcompile.ratio', String(ratio)],
    ['vcompile.scope', scope],
    ['vcompile.kind', kind],
  ];
  return b.model;
}

/**
 * What the block's result becomes at full length: repeat(inner) where a block's increment is restored
 * (ffn, attention: the residual add follows); at layer scope, hidden + repeat(inner - compressed).
 */
function baseRestore(b: GraphBuilder, ops: VersionedOps, io: RestoreInputs, shape: PluginShape): Value {
  if (shape.scope !== 'layer') return repeatGroups(b, ops, io.inner, shape);
  return addRepeated(b, ops, io.hidden, b.op.Sub(io.inner, io.compressed), shape);
}

/** full [b, n, w] + repeat(short [b, n/k, w]), short's vectors added to their groups by broadcasting. */
function addRepeated(b: GraphBuilder, ops: VersionedOps, full: Value, short: Value, shape: PluginShape): Value {
  return addToGroups(b, ops, full, ops.unsqueeze(short, [2]), shape.ratio, shape.hidden);
}

/** [b, n/k, d] -> [b, n, d], each vector repeated k times in place. */
function repeatGroups(b: GraphBuilder, ops: VersionedOps, inner: Value, shape: PluginShape): Value {
  const expanded = b.op.Expand(ops.unsqueeze(inner, [2]), b.int64s('repeat_shape', [1, 1, shape.ratio, 1]));
  return b.op.Reshape(expanded, b.int64s('restored_shape', [0, -1, shape.hidden]));
}

function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c];
  return out;
}

function checkLength(name: string, values: Float32Array, expected: number): void {
  if (values.length !== expected) throw new Error(`variator weights: ${name} has ${values.length} values, expected ${expected}`);
}
