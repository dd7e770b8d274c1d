// The normal equations of a fitted module and their solutions (the driver: fit-modules.ts). Per real
// position the capture model (passes/modular/capture.ts) gives a (the down projection's input, f wide),
// inc = a W + b (its output, d wide) and the target t (d wide). Two regressions share t:
//   refit  t ~ [a ; 1]    (f + 1 features): the down projection's new weight and bias, directly;
//   map    t ~ [inc ; 1]  (d + 1 features): T and t0 of the linear map inc T + t0 (ReplaceMe-style), folded
//          into the projection: W' = W T, b' = b T + t0 (no extra MatMul); with a rank, T is the
//          reduced-rank regression (the full fit projected on the top principal directions of its
//          fitted values).
// As for plugins (statistics.ts), the heavy products run in ONNX Runtime, appended to the capture model,
// batch by batch; the sums over batches are float64 here; padded positions have their rows zeroed. The
// features are shifted by the first batch's means (inputs of the statistics model) so that float32 sums
// of products keep their precision; the constant feature absorbs the shift and `unshift` maps it back.
// Feature sets of up to DOUBLE_UP_TO columns are multiplied in float64 (the map's always, up to d = 1024;
// the refit's up to f = 1024), larger ones in float32 on the shifted features.
//
// The context variant (passes/modular/context.ts) adds the context features c (3d wide): the ridge of t
// on [a ; 1 ; c] with one penalty per block (solveContext). Its normal equations come from the same capture,
// which adds [c;1]^T [c;1], [c;1]^T [a;1] and [c;1]^T t. Penalties are chosen by stages (the refit's for a,
// then for c the ridge of what the refit leaves) so that each penalty tried costs a factorization at f + 1 or
// 3d + 1, not at f + 3d + 1 (5377 at BERT-base size: minutes per penalty); the blocks are then solved together.

import { CONTEXT_PARTS } from '../../passes/modular/context.js';
import { GraphBuilder } from '../ir/builder.js';
import { Value as IrValue, type Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { NameAuthority } from '../ir/names.js';
import { VersionedOps } from '../ir/ops.js';
import type { Tensor } from '../ir/tensor.js';
import { DataType, tensorType } from '../ir/types.js';
import { block, dot, product } from './gemm.js';
import { cholesky, choleskySolve, gemm, type Matrix, matrix, reducedRank, ridge, transpose } from './linalg.js';
import { valuesOf } from './statistics.js';

export const MODULE_STATISTICS = [
  'vcompile_fit_refit_g',
  'vcompile_fit_refit_h',
  'vcompile_fit_map_g',
  'vcompile_fit_map_h',
  'vcompile_fit_tt',
  'vcompile_fit_count',
  'vcompile_fit_sum_a',
  'vcompile_fit_sum_inc',
] as const;
/** With context features: [c;1]^T [c;1], [c;1]^T [a;1], [c;1]^T t and the sum of c. */
export const CONTEXT_STATISTICS = [
  'vcompile_fit_context_g',
  'vcompile_fit_context_cross',
  'vcompile_fit_context_h',
  'vcompile_fit_sum_context',
] as const;
/** The shift inputs of the statistics model: [f] for a, [d] for inc (and [3d] for c, with context). */
export const MODULE_SHIFTS = ['vcompile_fit_shift_a', 'vcompile_fit_shift_inc'] as const;
export const CONTEXT_SHIFT = 'vcompile_fit_shift_context';
/** Feature sets up to this many columns (the constant included) are multiplied in float64. */
export const DOUBLE_UP_TO = 1025;

/**
 * Append the statistics to a capture model (outputs a, inc, target, y, keep); they become its outputs,
 * followed by y (kept for measuring candidates on held-out positions).
 */
export function appendModuleStatistics(
  model: Model,
  captured: { a: Value; inc: Value; target: Value; y: Value; keep: Value; context?: Value },
  f: number,
  d: number,
): void {
  const b = new GraphBuilder(model.graph, NameAuthority.forModel(model), { prefix: 'vcompile/fit/' });
  const ops = new VersionedOps(b, model.opsetVersion('') ?? 17);
  const [shiftA, shiftInc] = MODULE_SHIFTS.map((name, i) => {
    b.names.claim(name);
    return model.graph.addInput(new IrValue(name, tensorType(DataType.FLOAT, [i === 0 ? f : d])));
  });
  const w = b.op.Reshape(captured.keep, b.int64s('column', [-1, 1]));
  const ones = b.op.Expand(
    b.floats('one', [1, 1, 1], [1]),
    b.op.Concat(ops.slice(b.op.Shape(captured.keep), b.int64s('s', [0]), b.int64s('e', [2]), 0), b.int64s('last', [1]), { axis: 0 }),
  );
  const rows = (v: Value, width: number) => b.op.Mul(b.op.Reshape(v, b.int64s('rows', [-1, width])), w);
  const features = (v: Value, shift: Value, width: number) => rows(b.op.Concat(b.op.Sub(v, shift), ones, { axis: -1 }), width + 1);
  const precise = (v: Value, columns: number) => (columns <= DOUBLE_UP_TO ? b.op.Cast(v, { to: DataType.DOUBLE }) : v);
  const target = rows(captured.target, d);
  const rawA = features(captured.a, shiftA, f);
  const fa = precise(rawA, f + 1);
  const ta = precise(target, f + 1);
  const fi = precise(features(captured.inc, shiftInc, d), d + 1);
  const ti = precise(target, d + 1);
  const gram = (x: Value, y: Value) => b.op.Gemm(x, y, { transA: 1 });
  const outputs = [
    gram(fa, fa),
    gram(fa, ta),
    gram(fi, fi),
    gram(fi, ti),
    ops.reduce('ReduceSum', b.op.Mul(ti, ti), [0, 1], false),
    ops.reduce('ReduceSum', w, [0, 1], false),
    ops.reduce('ReduceSum', rows(captured.a, f), [0], false),
    ops.reduce('ReduceSum', rows(captured.inc, d), [0], false),
  ];
  // which outputs are float64: the products of features of up to DOUBLE_UP_TO columns (not the count and sums)
  const doubles = [f + 1, f + 1, d + 1, d + 1, d + 1].map((n) => n <= DOUBLE_UP_TO).concat([false, false, false]);
  const names: string[] = [...MODULE_STATISTICS];
  if (captured.context) {
    const c = CONTEXT_PARTS * d;
    b.names.claim(CONTEXT_SHIFT);
    const shiftC = model.graph.addInput(new IrValue(CONTEXT_SHIFT, tensorType(DataType.FLOAT, [c])));
    const rawC = features(captured.context, shiftC, c);
    const fc = precise(rawC, c + 1);
    const both = c + 1 <= DOUBLE_UP_TO && f + 1 <= DOUBLE_UP_TO;
    outputs.push(
      gram(fc, fc),
      both ? gram(fc, fa) : gram(rawC, rawA),
      gram(fc, precise(target, c + 1)),
      ops.reduce('ReduceSum', rows(captured.context, c), [0], false),
    );
    doubles.push(c + 1 <= DOUBLE_UP_TO, both, c + 1 <= DOUBLE_UP_TO, false);
    names.push(...CONTEXT_STATISTICS);
  }
  model.graph.outputs = [
    ...outputs.map((v, i) => {
      b.names.claim(names[i]);
      v.name = names[i];
      v.type = tensorType(doubles[i] ? DataType.DOUBLE : DataType.FLOAT);
      return v;
    }),
    captured.y,
  ];
}

/** One split's sums (float64), over every batch added. */
export class ModuleEquations {
  readonly refitG: Float64Array;
  readonly refitH: Float64Array;
  readonly mapG: Float64Array;
  readonly mapH: Float64Array;
  /** with context features: [c;1]^T [c;1], [c;1]^T [a;1], [c;1]^T t */
  readonly context?: { g: Float64Array; cross: Float64Array; h: Float64Array };
  /** sum over positions of ||t||^2 */
  tt = 0;
  count = 0;

  constructor(
    readonly f: number,
    readonly d: number,
    context = false,
  ) {
    this.refitG = new Float64Array((f + 1) * (f + 1));
    this.refitH = new Float64Array((f + 1) * d);
    this.mapG = new Float64Array((d + 1) * (d + 1));
    this.mapH = new Float64Array((d + 1) * d);
    const n = CONTEXT_PARTS * d + 1;
    if (context) this.context = { g: new Float64Array(n * n), cross: new Float64Array(n * (f + 1)), h: new Float64Array(n * d) };
  }

  /** Add one batch's outputs of the statistics model. */
  add(outputs: Record<string, Tensor>): void {
    const [rg, rh, mg, mh, tt, count] = MODULE_STATISTICS.slice(0, 6).map((name) => valuesOf(outputs[name]));
    addInto(this.refitG, rg);
    addInto(this.refitH, rh);
    addInto(this.mapG, mg);
    addInto(this.mapH, mh);
    this.tt += tt[0];
    this.count += count[0];
    if (this.context) {
      const [cg, cross, ch] = CONTEXT_STATISTICS.slice(0, 3).map((name) => valuesOf(outputs[name]));
      addInto(this.context.g, cg);
      addInto(this.context.cross, cross);
      addInto(this.context.h, ch);
    }
  }

  /** Sum over positions of ||t - mean(t)||^2 (the constant feature's row of H holds sum t). */
  targetVariance(): number {
    const sums = this.mapH.subarray(this.d * this.d);
    let centered = this.tt;
    for (const s of sums) centered -= (s * s) / Math.max(this.count, 1);
    return centered;
  }
}

export interface ModuleShifts {
  a: Float32Array;
  inc: Float32Array;
  context?: Float32Array;
}

/** The shifts from one batch's outputs (run with zero shifts): the means of a, inc (and c) over its real positions. */
export function moduleShiftsOf(outputs: Record<string, Tensor>): ModuleShifts {
  const count = Math.max(valuesOf(outputs.vcompile_fit_count)[0], 1);
  const mean = (name: string) => Float32Array.from(valuesOf(outputs[name]), (v) => v / count);
  const context = outputs[CONTEXT_STATISTICS[3]] ? mean(CONTEXT_STATISTICS[3]) : undefined;
  return { a: mean('vcompile_fit_sum_a'), inc: mean('vcompile_fit_sum_inc'), ...(context ? { context } : {}) };
}

/** A new down projection: W [f][d] row-major and b [d]. */
export interface Projection {
  weight: Float32Array;
  bias: Float32Array;
}

export interface SolvedVariant extends Projection {
  lambda: number;
  /** held-out unexplained variance of the target */
  unexplained: number;
}

interface Splits {
  fit: ModuleEquations;
  held: ModuleEquations;
}

/** Ridge of t on [a ; 1], lambda by held-out error: the down projection's weight and bias. */
export async function solveRefit(s: Splits, shiftA: Float32Array): Promise<SolvedVariant & { shifted: Matrix }> {
  const { f, d } = s.fit;
  const n = f + 1;
  const solved = await ridge(
    {
      g: matrix(n, n, s.fit.refitG),
      h: matrix(n, d, s.fit.refitH),
      gHeld: matrix(n, n, s.held.refitG),
      hHeld: matrix(n, d, s.held.refitH),
      yyHeld: s.held.tt,
    },
    { unpenalized: [f] },
  );
  const coefficients = Float64Array.from(solved.w.data);
  unshift(coefficients, f, d, shiftA);
  return {
    weight: Float32Array.from(coefficients.subarray(0, f * d)),
    bias: Float32Array.from(coefficients.subarray(f * d)),
    lambda: solved.lambda,
    unexplained: solved.heldOutError / s.held.targetVariance(),
    shifted: solved.w,
  };
}

/**
 * The context variant, the ridge of t on [a ; 1 ; c] with one penalty per block: lambda_a is the refit's;
 * lambda_c is chosen on held-out positions for the ridge of what the refit leaves on [c ; 1] (a second stage
 * that costs one factorization per penalty tried at 3d + 1, not at f + 3d + 1); then the two blocks are solved
 * together at those penalties by the Schur complement of the [a ; 1] block. The projection gets the [a ; 1]
 * block's weights and constant; `maps` is C ([3d][d] row-major).
 */
export async function solveContext(
  s: Splits,
  refit: SolvedVariant & { shifted: Matrix },
  shiftA: Float32Array,
  shiftContext: Float32Array,
): Promise<SolvedVariant & { maps: Float32Array }> {
  const { f, d } = s.fit;
  const c = CONTEXT_PARTS * d;
  const blocks = (e: ModuleEquations) => {
    if (!e.context) throw new Error('internal: the capture has no context statistics');
    return {
      gA: matrix(f + 1, f + 1, e.refitG),
      hA: matrix(f + 1, d, e.refitH),
      gC: matrix(c + 1, c + 1, e.context.g),
      hC: matrix(c + 1, d, e.context.h),
      cross: matrix(c + 1, f + 1, e.context.cross),
      tt: e.tt,
    };
  };
  const fit = blocks(s.fit);
  const held = blocks(s.held);
  // [c;1]^T r and |r|^2 for r = t - [a;1] w1
  const leftByA = async (e: typeof fit, w1: Matrix) => ({
    h: await product(e.cross, w1, {}, e.hC),
    rr: e.tt - 2 * dotOf(w1, e.hA) + dotOf(w1, await gemm(e.gA, w1)),
  });
  const left = await leftByA(fit, refit.shifted);
  const heldLeft = await leftByA(held, refit.shifted);
  const staged = await ridge({ g: fit.gC, h: left.h, gHeld: held.gC, hHeld: heldLeft.h, yyHeld: heldLeft.rr }, { unpenalized: [c] });
  // together: [A B; B^T C] [w1; w2] = [hA; hC] with A = G_a + lambda_a, C = G_c + lambda_c (c without its
  // constant, which the [a ; 1] block has), B = cross^T; w2 = S^-1 (hC - B^T A^-1 hA), S = C - B^T A^-1 B
  const factorA = await cholesky(penalized(fit.gA, refit.lambda, f), 'the refit block');
  const crossC = block(fit.cross, 0, 0, c, f + 1);
  const aInvB = await choleskySolve(factorA, transpose(crossC));
  const aInvH = await choleskySolve(factorA, fit.hA);
  const schur = await product(crossC, aInvB, {}, penalized(block(fit.gC, 0, 0, c, c), staged.lambda, c));
  const rhs = await product(crossC, aInvH, {}, block(fit.hC, 0, 0, c, d));
  const w2 = await choleskySolve(await cholesky(schur, 'the context block'), rhs);
  const w1 = await product(aInvB, w2, {}, aInvH);
  // held-out |t - [a;1] w1 - c w2|^2
  const r = await leftByA(held, w1);
  const error = r.rr - 2 * dotOf(w2, block(r.h, 0, 0, c, d)) + dotOf(w2, await gemm(block(held.gC, 0, 0, c, c), w2));
  const projection = Float64Array.from(w1.data);
  unshift(projection, f, d, shiftA);
  // the maps were fitted on c - shift: as rows above the projection's bias, unshift moves their constant into it
  const maps = new Float64Array((c + 1) * d);
  maps.set(w2.data);
  maps.set(projection.subarray(f * d), c * d);
  unshift(maps, c, d, shiftContext);
  return {
    weight: Float32Array.from(projection.subarray(0, f * d)),
    bias: Float32Array.from(maps.subarray(c * d)),
    maps: Float32Array.from(maps.subarray(0, c * d)),
    lambda: staged.lambda,
    unexplained: error / s.held.targetVariance(),
  };
}

/** g + lambda I over the first n features (the rest, the constant, unpenalized). */
function penalized(g: Matrix, lambda: number, n: number): Matrix {
  const out = matrix(g.rows, g.cols, g.data.slice());
  for (let i = 0; i < n; i++) out.data[i * g.cols + i] += lambda;
  return out;
}

/** The sum of products of two matrices' elements (tr(x^T y)). */
function dotOf(x: Matrix, y: Matrix): number {
  return dot(x.data, 0, y.data, 0, x.data.length);
}

/** The map (T, t0) of inc, fitted by ridge (and reduced to `rank`), folded into `down`. */
export async function solveMap(
  s: Splits,
  shiftInc: Float32Array,
  down: Projection,
  rank: number | undefined,
): Promise<SolvedVariant & { map: { t: Float64Array; t0: Float64Array } }> {
  const { d } = s.fit;
  const n = d + 1;
  const g = matrix(n, n, s.fit.mapG);
  const held = { gHeld: matrix(n, n, s.held.mapG), hHeld: matrix(n, d, s.held.mapH), yyHeld: s.held.tt };
  const solved = await ridge({ g, h: matrix(n, d, s.fit.mapH), ...held }, { unpenalized: [d] });
  let coefficients = Float64Array.from(solved.w.data);
  let error = solved.heldOutError;
  if (rank !== undefined && rank < d) {
    const reduced = await reducedRank(solved.w, g, rank, held);
    coefficients = Float64Array.from((await gemm(reduced.a, reduced.b)).data);
    error = reduced.heldOutError!;
  }
  unshift(coefficients, d, d, shiftInc);
  const t = coefficients.slice(0, d * d);
  const t0 = coefficients.slice(d * d);
  return { ...(await foldMap(down, t, t0)), lambda: solved.lambda, unexplained: error / s.held.targetVariance(), map: { t, t0 } };
}

/** (a W + b) T + t0 as one projection: W' = W T, b' = b T + t0. */
export async function foldMap(down: Projection, t: Float64Array, t0: Float64Array): Promise<Projection> {
  const d = t0.length;
  const f = down.weight.length / d;
  const tm = matrix(d, d, t);
  const weight = await gemm(matrix(f, d, Float64Array.from(down.weight)), tm);
  const bias = await gemm(matrix(1, d, Float64Array.from(down.bias)), tm);
  return { weight: Float32Array.from(weight.data), bias: Float32Array.from(bias.data, (v, j) => v + t0[j]) };
}

/** Coefficients fitted on features x - s (rows 0..n-1, then the constant's row) for the unshifted x. */
function unshift(coefficients: Float64Array, n: number, d: number, shift: Float32Array): void {
  for (let c = 0; c < d; c++) {
    let total = 0;
    for (let i = 0; i < n; i++) total += shift[i] * coefficients[i * d + c];
    coefficients[n * d + c] -= total;
  }
}

function addInto(sum: Float64Array, values: Float32Array | Float64Array): void {
  for (let i = 0; i < sum.length; i++) sum[i] += values[i];
}
