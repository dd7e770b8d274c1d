// Context maps of a fitted module (variant `context` of src/decide/fit-modules.ts): some of the position
// mixing of the layers a module drops, at per-token cost. A module keeps one layer's attention; what the
// other layers' attention mixed across positions no per-token map of the module's stream brings back
// (bench/probe_modules.py measured it: the refit stops near half of the loss gap). The context variant adds
// to the feed-forward increment
//   c(t) C,   c(t) = [h(t-1) ; h(t+1) ; mean(h)],   C = [C_prev ; C_next ; C_mean]  ([3d, d])
// with h the feed-forward sublayer's residual input, taken at real positions only (0 at padding and past
// the sequence's ends), and mean(h) its mean over the sequence's real positions. In the module the
// neighbours' part runs as one MatMul of h·keep by [C_prev | C_next] ([d, 2d]: 2d² MACs per position), padded
// by one position at both ends of the sequence and sliced back shifted (a shift commutes with a per-position
// map); the mean's part maps the mean itself (d² MACs per sequence) and is broadcast over the positions.
// What runs besides the products is a few passes over [batch, seq, d] tensors: for a small d they cost more
// than the products (BENCHMARKS.md, modules fitted from data).
//
// Real positions: the capture model has the model's padding mask (passes/plugin/keep.ts, `keepOf`); a
// module has only attention_bias and reads them off it by a rule checked on the model (`biasKeepRule`).
// A span without an attention bias has every position real.
import type { GraphBuilder } from '../../src/ir/builder.js';
import { GraphBuilder as Builder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { VersionedOps } from '../../src/ir/ops.js';
import { Tensor } from '../../src/ir/tensor.js';
import { toposort } from '../../src/ir/transforms.js';
import { DataType } from '../../src/ir/types.js';
import { type BiasKeep, keepFromBias, keepOf } from '../plugin/keep.js';
import { ATTENTION_BIAS } from './contract.js';
import type { FitSite } from './fitted.js';

/** How many d-wide parts c(t) has: the previous position, the next, the mean. */
export const CONTEXT_PARTS = 3;

/** How a module finds its real positions: from attention_bias by a rule, or all of them (no bias). */
export type ContextKeep = BiasKeep | 'all';

/** c(t) as [batch, seq, 3d], from h [batch, seq, d] and keep [batch, seq] (1 at real positions). */
export function contextFeatures(b: GraphBuilder, ops: VersionedOps, h: Value, keep: Value, d: number): Value {
  const real = ops.unsqueeze(keep, [-1]);
  const hk = b.op.Mul(h, real);
  const { previous, next } = neighbours(b, ops, hk, [0, d], [0, d]);
  return b.op.Concat(previous, next, b.op.Expand(meanOverReal(b, ops, hk, real), b.op.Shape(h)), { axis: -1 });
}

/**
 * Add c(t) C to the feed-forward increment of `module` (a copy of the site's layer; `values` maps the
 * model's values to the module's), `weights` being C as [3d][d] row-major. The residual Add after the block
 * then reads block + context.
 */
export function addContextMaps(
  module: Model,
  values: ReadonlyMap<Value, Value>,
  site: FitSite,
  weights: Float32Array,
  keep: ContextKeep,
): void {
  const d = site.hidden;
  if (weights.length !== CONTEXT_PARTS * d * d) throw new Error(`internal: context maps of ${weights.length} values for d = ${d}`);
  const add = values.get(site.ffn.residualAdd.outputs[0]!)?.producer;
  const h = values.get(site.ffn.streamIn);
  if (!add || !h) throw new Error('internal: the module does not compute the feed-forward residual');
  const b = new Builder(module.graph, NameAuthority.forModel(module), { prefix: 'vcompile/context/' });
  const ops = new VersionedOps(b, module.opsetVersion('') ?? 17);
  const real = moduleKeep(b, ops, module, h, keep);
  const hk = b.op.Mul(h, real);
  // [d, 2d]: C_prev's columns, then C_next's, so that one product serves both neighbours
  const pair = new Float32Array(d * 2 * d);
  for (let i = 0; i < d; i++)
    for (let p = 0; p < 2; p++) pair.set(weights.subarray((p * d + i) * d, (p * d + i + 1) * d), i * 2 * d + p * d);
  const products = b.op.MatMul(hk, b.initializer('neighbour_maps', Tensor.fromArray('neighbour_maps', DataType.FLOAT, [d, 2 * d], pair)));
  const { previous, next } = neighbours(b, ops, products, [0, d], [d, 2 * d]);
  const meanMap = Tensor.fromArray('mean_map', DataType.FLOAT, [d, d], weights.subarray(2 * d * d));
  const mean = b.op.MatMul(meanOverReal(b, ops, hk, real), b.initializer('mean_map', meanMap));
  const context = b.op.Add(b.op.Add(previous, next), mean);
  const index = add.inputs.findIndex((v) => v !== h);
  if (index < 0) throw new Error('internal: the residual Add reads the stream twice');
  add.setInput(index, b.op.Add(add.inputs[index]!, context));
  toposort(module.graph);
}

/** MACs the context maps add: per position (the neighbours' product), and per sequence (the mean's). */
export function contextMacs(d: number): { perPosition: number; perSequence: number } {
  return { perPosition: 2 * d * d, perSequence: d * d };
}

/** keep [batch, seq, 1] in the module: from attention_bias by `rule`, or ones shaped like h (no mask). */
function moduleKeep(b: GraphBuilder, ops: VersionedOps, module: Model, h: Value, rule: ContextKeep): Value {
  if (rule === 'all') return ops.unsqueeze(keepOf(b, ops, undefined, h), [-1]);
  const bias = module.graph.inputs.find((v) => v.name === ATTENTION_BIAS);
  if (!bias) throw new Error(`internal: context maps read real positions off ${ATTENTION_BIAS}, which the module does not take`);
  return keepFromBias(b, bias, rule);
}

/**
 * From x [batch, seq, w]: x(t-1) in columns `previous` and x(t+1) in columns `next`, at every t (0 past the
 * ends). x is padded by one position at each end of seq (position t of the padded tensor is x(t-1)) and
 * sliced twice.
 */
function neighbours(
  b: GraphBuilder,
  ops: VersionedOps,
  x: Value,
  previous: [number, number],
  next: [number, number],
): { previous: Value; next: Value } {
  const padded = ops.padConstant(x, b.int64s('pads', [0, 1, 0, 0, 1, 0]), b.scalar('zero', 0));
  const axes = b.int64s('axes', [1, 2]);
  return {
    previous: b.op.Slice(padded, b.int64s('start', [0, previous[0]]), b.int64s('end', [-2, previous[1]]), axes),
    next: b.op.Slice(padded, b.int64s('start', [2, next[0]]), b.int64s('end', [Number.MAX_SAFE_INTEGER, next[1]]), axes),
  };
}

/** The mean over real positions of xk [batch, seq, w] (already 0 elsewhere), as [batch, 1, w]; keep [batch, seq, 1]. */
function meanOverReal(b: GraphBuilder, ops: VersionedOps, xk: Value, keep: Value): Value {
  const count = b.op.Max(ops.reduce('ReduceSum', keep, [1], true), b.scalar('one', 1));
  return b.op.Div(ops.reduce('ReduceSum', xk, [1], true), count);
}
