// The normal equations of a fitted restore, accumulated batch by batch. The heavy products run in ONNX
// Runtime, inside the capture model (nodes appended to it), in float32 over one batch's tokens; the sums
// over batches are kept in float64 here. Features per real position: f = [u ; x ; 1] (n = 2d + 1), target
// r = y - u (what the mean plugin's restore misses). Per batch the model returns
//   G = F^T F (n x n), H = F^T R (n x d), C = R^T R (d x d), sum y (d), sum y^2 (d), the real positions;
// padded positions have their rows zeroed (keep = 0), so they add nothing.
import type { GraphBuilder } from '../ir/builder.js';
import { GraphBuilder as Builder } from '../ir/builder.js';
import type { Value } from '../ir/graph.js';
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
] as const;

/** Append the statistics of the header to a capture model whose outputs are x, u, y, keep; they become its only outputs. */
export function appendStatistics(model: Model, captured: { x: Value; u: Value; y: Value; keep: Value }, d: number): void {
  const b = new Builder(model.graph, NameAuthority.forModel(model), { prefix: 'vcompile/fit/' });
  const ops = new VersionedOps(b, model.opsetVersion('') ?? 17);
  const n = 2 * d + 1;
  const w = b.op.Reshape(captured.keep, b.int64s('column', [-1, 1]));
  const ones = b.op.Expand(
    b.floats('one', [1, 1, 1], [1]),
    b.op.Concat(ops.slice(b.op.Shape(captured.keep), b.int64s('s', [0]), b.int64s('e', [2]), 0), b.int64s('last', [1]), { axis: 0 }),
  );
  const features = b.op.Mul(b.op.Reshape(b.op.Concat(captured.u, captured.x, ones, { axis: -1 }), b.int64s('rows_n', [-1, n])), w);
  const residual = b.op.Mul(b.op.Reshape(b.op.Sub(captured.y, captured.u), b.int64s('rows_d', [-1, d])), w);
  const y = b.op.Mul(b.op.Reshape(captured.y, b.int64s('rows_y', [-1, d])), w);
  const outputs = [
    gram(b, features, features),
    gram(b, features, residual),
    gram(b, residual, residual),
    ops.reduce('ReduceSum', y, [0], false),
    ops.reduce('ReduceSum', b.op.Mul(y, y), [0], false),
    ops.reduce('ReduceSum', w, [0, 1], false),
  ];
  model.graph.outputs = outputs.map((v, i) => {
    b.names.claim(STATISTICS[i]);
    v.name = STATISTICS[i];
    v.type = tensorType(DataType.FLOAT);
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

  constructor(readonly d: number) {
    const n = 2 * d + 1;
    this.g = new Float64Array(n * n);
    this.h = new Float64Array(n * d);
    this.c = new Float64Array(d * d);
    this.sumY = new Float64Array(d);
    this.sumYY = new Float64Array(d);
  }

  get n(): number {
    return 2 * this.d + 1;
  }

  /** Add one batch's outputs of the statistics model. */
  add(outputs: Record<string, Tensor>): void {
    const [g, h, c, sumY, sumYY, count] = STATISTICS.map((name) => outputs[name].toFloat32());
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

function addInto(sum: Float64Array, values: Float32Array): void {
  for (let i = 0; i < sum.length; i++) sum[i] += values[i];
}
