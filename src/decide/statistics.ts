// The normal equations of a fitted restore, accumulated batch by batch. The heavy products run in ONNX
// Runtime, inside the capture model (nodes appended to it), in float32 over one batch's tokens; the sums
// over batches are kept in float64 here. Features per real position: f = [u ; x ; g ; 1] (n = 2d + m + 1;
// g: the m full-length units of an FFN-scope fit, passes/plugin/units.ts, none elsewhere), target
// r = y - u (what the mean plugin's restore misses). Per batch the model returns
//   G = F^T F (n x n), H = F^T R (n x d), C = R^T R (d x d), sum y (d), sum y^2 (d), the real positions;
// padded positions have their rows zeroed (keep = 0), so they add nothing.
//
// Conditioning: u, y and x carry large common offsets (a bias the whole block adds), which float32 sums of
// products would swamp. The model takes shift vectors as inputs (s for u and y, sx for x: the means of the
// first batch) and works on u - s, y - s, x - sx; r = y - u is unchanged and the constant feature absorbs
// the shift (`unshift` maps the fitted bias back). Models of hidden size up to DOUBLE_UP_TO sum the
// products in float64 (cheap at that size); larger ones in float32, where the shifts keep them accurate.
import type { GraphBuilder } from '../ir/builder.js';
import { GraphBuilder as Builder } from '../ir/builder.js';
import { Value as IrValue, type Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { NameAuthority } from '../ir/names.js';
import { VersionedOps } from '../ir/ops.js';
import type { Tensor } from '../ir/tensor.js';
import { DataType, tensorType } from '../ir/types.js';

export const STATISTICS = [
  'vcompile_fit_g',
  'vcompile_fit_h',
  'vcompile_fit_c',
  'vcompile_fit_sum_y',
  'vcompile_fit_sum_yy',
  'vcompile_fit_count',
  'vcompile_fit_sum_u',
  'vcompile_fit_sum_x',
] as const;
/** The shift inputs of the statistics model: [d] and [d + m]. */
export const SHIFTS = ['vcompile_fit_shift', 'vcompile_fit_shift_x'] as const;
/** Hidden sizes up to this get float64 products (n = 2d + 1 <= 1025: ~1 GFlop a batch of 1024 positions). */
export const DOUBLE_UP_TO = 512;

/**
 * Append the statistics of the header to a capture model whose outputs are x, u, y, keep (and g, the m
 * units, when m > 0); they become its only outputs.
 */
export function appendStatistics(model: Model, captured: { x: Value; u: Value; y: Value; keep: Value; g?: Value }, d: number, m = 0): void {
  const b = new Builder(model.graph, NameAuthority.forModel(model), { prefix: 'vcompile/fit/' });
  const ops = new VersionedOps(b, model.opsetVersion('') ?? 17);
  const n = 2 * d + m + 1;
  const [shift, shiftX] = SHIFTS.map((name, i) => {
    b.names.claim(name);
    return model.graph.addInput(new IrValue(name, tensorType(DataType.FLOAT, [i === 0 ? d : d + m])));
  });
  if (m > 0 !== (captured.g !== undefined)) throw new Error(`internal: statistics of ${m} units`);
  const hidden = captured.g ? b.op.Concat(captured.x, captured.g, { axis: -1 }) : captured.x;
  const u = b.op.Sub(captured.u, shift);
  const x = b.op.Sub(hidden, shiftX);
  const yShifted = b.op.Sub(captured.y, shift);
  const w = b.op.Reshape(captured.keep, b.int64s('column', [-1, 1]));
  const ones = b.op.Expand(
    b.floats('one', [1, 1, 1], [1]),
    b.op.Concat(ops.slice(b.op.Shape(captured.keep), b.int64s('s', [0]), b.int64s('e', [2]), 0), b.int64s('last', [1]), { axis: 0 }),
  );
  const precise = (v: Value) => (d <= DOUBLE_UP_TO ? b.op.Cast(v, { to: DataType.DOUBLE }) : v);
  const features = precise(b.op.Mul(b.op.Reshape(b.op.Concat(u, x, ones, { axis: -1 }), b.int64s('rows_n', [-1, n])), w));
  const residual = precise(b.op.Mul(b.op.Reshape(b.op.Sub(captured.y, captured.u), b.int64s('rows_d', [-1, d])), w));
  const y = precise(b.op.Mul(b.op.Reshape(yShifted, b.int64s('rows_y', [-1, d])), w));
  const outputs = [
    gram(b, features, features),
    gram(b, features, residual),
    gram(b, residual, residual),
    ops.reduce('ReduceSum', y, [0], false),
    ops.reduce('ReduceSum', b.op.Mul(y, y), [0], false),
    ops.reduce('ReduceSum', w, [0, 1], false),
    ops.reduce('ReduceSum', b.op.Mul(b.op.Reshape(captured.u, b.int64s('rows_u', [-1, d])), w), [0], false),
    ops.reduce('ReduceSum', b.op.Mul(b.op.Reshape(hidden, b.int64s('rows_x', [-1, d + m])), w), [0], false),
  ];
  model.graph.outputs = outputs.map((v, i) => {
    b.names.claim(STATISTICS[i]);
    v.name = STATISTICS[i];
    v.type = tensorType(i < 5 && d <= DOUBLE_UP_TO ? DataType.DOUBLE : DataType.FLOAT);
    return v;
  });
}

/** a^T b for [tokens, p] and [tokens, q]. */
function gram(b: GraphBuilder, a: Value, c: Value): Value {
  return b.op.Gemm(a, c, { transA: 1 });
}

/** One split's sums (float64), over every batch added. */
export class NormalEquations {
  readonly g: Float64Array;
  readonly h: Float64Array;
  readonly c: Float64Array;
  readonly sumY: Float64Array;
  readonly sumYY: Float64Array;
  count = 0;

  /** d: the hidden size; m: the units */
  constructor(
    readonly d: number,
    readonly m = 0,
  ) {
    const n = 2 * d + m + 1;
    this.g = new Float64Array(n * n);
    this.h = new Float64Array(n * d);
    this.c = new Float64Array(d * d);
    this.sumY = new Float64Array(d);
    this.sumYY = new Float64Array(d);
  }

  get n(): number {
    return 2 * this.d + this.m + 1;
  }

  /** Add one batch's outputs of the statistics model. */
  add(outputs: Record<string, Tensor>): void {
    const [g, h, c, sumY, sumYY, count] = STATISTICS.slice(0, 6).map((name) => valuesOf(outputs[name]));
    addInto(this.g, g);
    addInto(this.h, h);
    addInto(this.c, c);
    addInto(this.sumY, sumY);
    addInto(this.sumYY, sumYY);
    this.count += count[0];
  }

  /** Sum over positions of ||y - mean(y)||^2: the target's variance times the positions. */
  targetVariance(): number {
    let total = 0;
    for (let j = 0; j < this.d; j++) total += this.sumYY[j] - (this.sumY[j] * this.sumY[j]) / Math.max(this.count, 1);
    return total;
  }

  /** tr(R^T R): what the mean plugin's restore leaves unexplained. */
  meanError(): number {
    let total = 0;
    for (let j = 0; j < this.d; j++) total += this.c[j * this.d + j];
    return total;
  }
}

/** The shifts from one batch's outputs (run with zero shifts): the means of u and [x ; g] over its real positions. */
export function shiftsOf(outputs: Record<string, Tensor>): { shift: Float32Array; shiftX: Float32Array } {
  const count = Math.max(outputs.vcompile_fit_count.toFloat32()[0], 1);
  const mean = (name: string) => outputs[name].toFloat32().map((v) => v / count);
  return { shift: mean('vcompile_fit_sum_u'), shiftX: mean('vcompile_fit_sum_x') };
}

/**
 * The bias of a fit made on shifted features, for the unshifted ones: r ~ (u - s) A_u + (x - sx) A_x + b'
 * is r ~ u A_u + x A_x + (b' - s A_u - sx A_x), x standing for [x ; g]. `a` is the n x r coefficient matrix
 * (rows u, [x ; g], 1).
 */
export function unshift(a: Float64Array, r: number, d: number, shift: Float32Array, shiftX: Float32Array): void {
  const bias = (d + shiftX.length) * r;
  for (let c = 0; c < r; c++) {
    let total = 0;
    for (let i = 0; i < d; i++) total += shift[i] * a[i * r + c];
    for (let i = 0; i < shiftX.length; i++) total += shiftX[i] * a[(d + i) * r + c];
    a[bias + c] -= total;
  }
}

export function valuesOf(t: Tensor): Float32Array | Float64Array {
  if (t.dataType !== DataType.DOUBLE) return t.toFloat32();
  const bytes = t.bytes();
  return new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

function addInto(sum: Float64Array, values: Float32Array | Float64Array): void {
  for (let i = 0; i < sum.length; i++) sum[i] += values[i];
}
