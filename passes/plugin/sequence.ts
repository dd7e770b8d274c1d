// Sequence-length plumbing around a compressed block, in ONNX ops that keep every dim dynamic:
// pad an axis up to a multiple of k, crop it back, and pool a mask or bias over groups of k positions
// (a position bias over the real positions of each group only, when the plugin is told which are real).
// `SequencePadding` computes the padding of one sequence length once (its length, pad amount, pads and
// tail mask) for every tensor of the model padded alike.
import type { Attrs, GraphBuilder } from '../../src/ir/builder.js';
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
  const padding = new SequencePadding(b, ops, x, axis, k);
  return { value: padding.pad(ops, x, axis, rank, fill), length: padding.length };
}

/**
 * The padding of one sequence length to a multiple of k, computed once (from the shape of the tensor it
 * is made for) with the builder it is made with, and shared by every tensor of that length: the padded
 * tensors themselves are built with the caller's builder (the main graph or an If branch).
 */
export class SequencePadding {
  /** the length before padding, int64 [1] */
  readonly length: Value;
  /** positions padding adds, int64 [1]: (k - length % k) % k */
  private readonly amount: Value;
  private readonly pads = new Map<string, Value>();
  private tail?: Value;

  constructor(
    private readonly b: GraphBuilder,
    private readonly ops: VersionedOps,
    source: Value,
    axis: number,
    readonly k: number,
  ) {
    this.length = ops.slice(b.op.Shape(source), b.int64s('axis', [axis]), b.int64s('axis_end', [axis + 1]), 0);
    const kValue = b.int64s('ratio', [k]);
    this.amount = b.op.Mod(b.op.Sub(kValue, b.op.Mod(this.length, kValue)), kValue);
  }

  /** `x` (of rank `rank`, this length along `axis`) padded at the end of `axis` with `fill`, built with `ops`' builder. */
  pad(ops: VersionedOps, x: Value, axis: number, rank: number, fill: Value): Value {
    return ops.padConstant(x, this.padsFor(axis, rank), fill);
  }

  /** x[:, :length] along `axis`, built with `b`. */
  crop(b: GraphBuilder, ops: VersionedOps, x: Value, axis: number): Value {
    return cropTo(b, ops, x, axis, this.length);
  }

  /**
   * `x` [batch, padded length, d] with the positions padding added set to 0, built with `b`: what padding
   * the cropped `x` gives, without the crop and the copy back.
   */
  zeroTail(b: GraphBuilder, x: Value): Value {
    return b.op.Where(this.realPositions(), x, this.b.scalar('zero', 0));
  }

  /** The Pad input: zeros but for the amount at the end of `axis`. */
  private padsFor(axis: number, rank: number): Value {
    const key = `${axis}/${rank}`;
    const cached = this.pads.get(key);
    if (cached) return cached;
    const b = this.b;
    const pieces: Value[] = [];
    if (rank + axis > 0) pieces.push(b.int64s('no_pad', new Array(rank + axis).fill(0)));
    pieces.push(this.amount);
    if (rank - axis - 1 > 0) pieces.push(b.int64s('no_pad', new Array(rank - axis - 1).fill(0)));
    const pads = b.op.Concat(...pieces, { axis: 0 });
    this.pads.set(key, pads);
    return pads;
  }

  /** bool [1, padded length, 1]: true before `length`. */
  private realPositions(): Value {
    if (this.tail) return this.tail;
    const b = this.b;
    const scalar = (v: Value) => b.op.Squeeze(v, ...this.squeezeAxes());
    const padded = b.op.Add(this.length, this.amount);
    const positions = b.op.Range(b.int64s('start', [0], []), scalar(padded), b.int64s('step', [1], []));
    const real = b.op.Less(positions, this.length);
    this.tail = b.op.Reshape(real, b.int64s('tail_shape', [1, -1, 1]));
    return this.tail;
  }

  /** Squeeze's axes [0], as an input (opset 13) or an attribute. */
  private squeezeAxes(): (Value | Attrs)[] {
    return this.ops.opset >= 13 ? [this.b.int64s('axes', [0])] : [{ axes: [0] }];
  }
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

/** The first `count` dims of x's shape, int64 [count]. */
export function leadingDims(b: GraphBuilder, ops: VersionedOps, x: Value, count: number): Value {
  return ops.slice(b.op.Shape(x), b.int64s('start', [0]), b.int64s('end', [count]), 0);
}

/**
 * full + each row of `rows` repeated over its group: full [b, g * k, w] viewed as [b, g, k, w] plus rows
 * [b, g, 1, w] by broadcasting, then viewed back. The repeat is never written out; the sums are those of
 * adding a repeated copy, bit for bit. Shapes are read off the tensors (no -1: empty tensors reshape too).
 */
export function addToGroups(b: GraphBuilder, ops: VersionedOps, full: Value, rows: Value, k: number, width: number): Value {
  const grouped = b.op.Concat(leadingDims(b, ops, rows, 2), b.int64s('group_dims', [k, width]), { axis: 0 });
  return b.op.Reshape(b.op.Add(b.op.Reshape(full, grouped), rows), b.op.Shape(full));
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
