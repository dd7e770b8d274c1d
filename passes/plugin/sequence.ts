// Sequence-length plumbing around a compressed block, in ONNX ops that keep every dim dynamic:
// pad an axis up to a multiple of k, crop it back, and pool a mask or bias over groups of k positions
// (a position bias over the real positions of each group only, when the plugin is told which are real).
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { VersionedOps } from '../../src/ir/ops.js';
import { DataType } from '../../src/ir/types.js';

const LOWEST_FLOAT = -3.4028234663852886e38;
const HIGHEST_FLOAT = 3.4028234663852886e38;

export interface Padded {
  value: Value;
  /** the axis length before padding, int64 [1] */
  length: Value;
}

/** Pad `axis` of a rank-`rank` tensor at its end with `fill` up to a multiple of k. */
export function padToMultiple(b: GraphBuilder, ops: VersionedOps, x: Value, axis: number, rank: number, k: number, fill: Value): Padded {
  const length = ops.slice(b.op.Shape(x), b.int64s('axis', [axis]), b.int64s('axis_end', [axis + 1]), 0);
  const kValue = b.int64s('ratio', [k]);
  const padAmount = b.op.Mod(b.op.Sub(kValue, b.op.Mod(length, kValue)), kValue);
  const pieces: Value[] = [];
  if (rank + axis > 0) pieces.push(b.int64s('no_pad', new Array(rank + axis).fill(0)));
  pieces.push(padAmount);
  if (rank - axis - 1 > 0) pieces.push(b.int64s('no_pad', new Array(rank - axis - 1).fill(0)));
  const pads = b.op.Concat(...pieces, { axis: 0 });
  return { value: ops.padConstant(x, pads, fill), length };
}

/** x[:, :length] along `axis`. */
export function cropTo(b: GraphBuilder, ops: VersionedOps, x: Value, axis: number, length: Value): Value {
  return ops.slice(x, b.int64s('start', [0]), length, axis);
}

export interface PoolSpec {
  /** how the term acts on the scores: added, subtracted, or a Where condition */
  mode: 'add' | 'subtract' | 'select';
  /** select: whether scores are kept where the condition is true */
  keepWhen?: boolean;
  /** the element type of the term (bool for select masks) */
  elemType: number;
}

/**
 * Pool a score term over groups of k positions along `axes` (negative: from the end), so that a group may
 * be attended to when any of its positions may: the max of an additive term, the min of a subtracted one,
 * OR of a keep-condition, AND of a mask-condition. Padded positions take the value that never wins.
 */
export function poolGroups(
  b: GraphBuilder,
  ops: VersionedOps,
  term: Value,
  rank: number,
  axes: number[],
  k: number,
  spec: PoolSpec,
): Value {
  const asFloat = spec.elemType !== DataType.FLOAT;
  let x = asFloat ? b.op.Cast(term, { to: DataType.FLOAT }) : term;
  const keepMax = spec.mode === 'add' || (spec.mode === 'select' && spec.keepWhen !== false);
  const fill = spec.mode === 'add' ? LOWEST_FLOAT : spec.mode === 'subtract' ? HIGHEST_FLOAT : keepMax ? 0 : 1;
  for (const axis of axes) {
    const positive = axis < 0 ? rank + axis : axis;
    const padded = padToMultiple(b, ops, x, positive, rank, k, b.scalar('pool_fill', fill)).value;
    const grouped = b.op.Reshape(padded, groupedShape(b, ops, padded, positive, rank, k));
    x = ops.reduce(keepMax ? 'ReduceMax' : 'ReduceMin', grouped, [positive + 1], false);
  }
  return asFloat ? b.op.Cast(x, { to: spec.elemType }) : x;
}

/**
 * Pool an additive (or subtracted) position bias as `poolGroups` does, but over each block's real positions
 * only: `keep` [batch, seq] (1 = real) marks them along every pooled axis, the term's axis 0 being its batch
 * (or 1). A block without a real pair (padding only: masked anyway) keeps the plain pooled value, so no
 * value becomes infinite. The result has the batch dim of `keep`.
 */
export function poolGroupsOverReal(
  b: GraphBuilder,
  ops: VersionedOps,
  term: Value,
  rank: number,
  axes: number[],
  k: number,
  spec: PoolSpec & { mode: 'add' | 'subtract' },
  keep: Value,
): Value {
  let real: Value | undefined;
  for (const axis of axes) {
    const positive = axis < 0 ? rank + axis : axis;
    const dims = Array.from({ length: rank }, (_, i) => (i === 0 ? 0 : i === positive ? -1 : 1));
    const along = b.op.Reshape(keep, b.int64s('keep_shape', dims));
    real = real ? b.op.Mul(real, along) : along;
  }
  const fill = b.scalar('pool_fill', spec.mode === 'add' ? LOWEST_FLOAT : HIGHEST_FLOAT);
  const x = spec.elemType !== DataType.FLOAT ? b.op.Cast(term, { to: DataType.FLOAT }) : term;
  const overReal = poolGroups(b, ops, b.op.Where(b.op.Cast(real!, { to: DataType.BOOL }), x, fill), rank, axes, k, {
    ...spec,
    elemType: DataType.FLOAT,
  });
  const anyReal = poolGroups(b, ops, real!, rank, axes, k, { mode: 'select', keepWhen: true, elemType: DataType.FLOAT });
  const plain = poolGroups(b, ops, x, rank, axes, k, { ...spec, elemType: DataType.FLOAT });
  const pooled = b.op.Where(b.op.Cast(anyReal, { to: DataType.BOOL }), overReal, plain);
  return spec.elemType !== DataType.FLOAT ? b.op.Cast(pooled, { to: spec.elemType }) : pooled;
}

/** Shape(x) with dim `axis` split into [-1, k]. */
function groupedShape(b: GraphBuilder, ops: VersionedOps, x: Value, axis: number, rank: number, k: number): Value {
  const shape = b.op.Shape(x);
  const pieces: Value[] = [];
  if (axis > 0) pieces.push(ops.slice(shape, b.int64s('start', [0]), b.int64s('end', [axis]), 0));
  pieces.push(b.int64s('grouped', [-1, k]));
  if (axis < rank - 1) pieces.push(ops.slice(shape, b.int64s('start', [axis + 1]), b.int64s('end', [rank]), 0));
  return b.op.Concat(...pieces, { axis: 0 });
}
