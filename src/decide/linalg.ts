// Dense float64 linear algebra for fitting compression plugins in closed form from calibration
// statistics: Cholesky factorization and solves, a symmetric eigensolver, ridge regression with the
// penalty chosen on held-out statistics, and reduced-rank regression. Matrices are row-major Float64Array
// (gemm.ts has the type, the products and the settings).
//
// Where the time goes: every O(n^3) step is written as matrix products, which gemm.ts runs in onnxruntime
// when they are large (20-30 GFlop/s on two cores, against 1-2.5 GFlop/s for JavaScript loops):
// - Cholesky is recursive and in place (factor the top-left half; the bottom-left block by a triangular
//   solve; the Schur complement by a product; factor it) while those products are large enough for
//   onnxruntime, down to blocks of 64; below, plain row-oriented loops;
// - triangular solves with many right-hand sides are recursive the same way, on contiguous rows;
// - the eigensolver reduces to tridiagonal form with Householder reflections, blocked as LAPACK's dsytrd
//   (matrix-vector products in JavaScript, the trailing updates as one product per panel of 32 columns),
//   finds the tridiagonal eigenvalues by the implicit QL method (O(n^2)) and its eigenvectors by inverse
//   iteration (LAPACK's dstein: O(n) per vector, reorthogonalized within clusters), or, where a vector does
//   not converge, by accumulating the QL rotations (O(n^3) in JavaScript); the reflections are applied
//   back to the eigenvectors in blocks of 64, as products.
// Accuracy: backward stable algorithms throughout, no explicit inverses; relative residuals ~1e-15..1e-13
// on well-conditioned problems (BENCHMARKS.md lists them at n = 1537).
//
// Everything is deterministic: the same inputs and settings give the same bits (seeded randomness only).
// Memory: a few n x n float64 matrices at a time (33.6 MB each at n = 2049).
import { type MessagePart, VcompileError } from '../errors.js';
import { Rng } from '../random.js';
import { block, dot, identity, type Matrix, matrix, product, runsInOrt, setBlock, transpose } from './gemm.js';

export {
  configureLinalg,
  gemm,
  identity,
  type LinalgSettings,
  type Matrix,
  matrix,
  type ProductOptions,
  productCounts,
  releaseLinalg,
  transpose,
} from './gemm.js';

const EPS = 2 ** -52;

/** Diagonal blocks up to this size are factored (and triangular solves done) by plain loops. */
const BASE = 64;

/** A matrix that should be positive definite is not (numerically): the pivot where factoring stopped. */
export class SingularMatrixError extends VcompileError {
  /** 0-based index of the failing pivot */
  readonly pivot: number;
  /** its value: the diagonal entry less what the previous columns explain (at most the tolerance, or NaN) */
  readonly value: number;
  /** the matrix's own diagonal entry there */
  readonly diagonal: number;
  /** the matrix's order */
  readonly size: number;

  constructor(pivot: number, value: number, diagonal: number, size: number, what = 'matrix', parts?: readonly MessagePart[]) {
    super(
      parts ?? [
        `${what} is not positive definite: pivot ${pivot} of ${size} is ${formatNumber(value)} (its diagonal entry is ${formatNumber(diagonal)}); ` +
          'the features are linearly dependent or the matrix is not a Gram matrix: add a ridge penalty or drop the redundant features',
      ],
    );
    this.pivot = pivot;
    this.value = value;
    this.diagonal = diagonal;
    this.size = size;
  }

  override wrapped(before: string, after = ''): SingularMatrixError {
    const parts = [before, ...this.parts, after].filter((p) => p !== '');
    return new SingularMatrixError(this.pivot, this.value, this.diagonal, this.size, '', parts);
  }
}

function formatNumber(x: number): string {
  return Number.isFinite(x) && x !== 0 && (Math.abs(x) >= 1e6 || Math.abs(x) < 1e-4)
    ? x.toExponential(3)
    : String(Number(x.toPrecision(6)));
}

function checkSquare(a: Matrix, what: string): void {
  if (a.rows !== a.cols) throw new VcompileError(`${what} must be square, got ${a.rows} x ${a.cols}`);
}

// ------------------------------------------------------------------------------------------ Cholesky

/**
 * Lower-triangular L with A = L L^T, for A symmetric positive definite (only its lower triangle is read).
 * Throws SingularMatrixError naming the pivot when A is not numerically positive definite: a pivot at most
 * n·eps times the matrix's own diagonal entry there, or not a number. `what` names A in that message.
 */
export async function cholesky(a: Matrix, what = 'matrix'): Promise<Matrix> {
  checkSquare(a, `cholesky: ${what}`);
  const n = a.rows;
  const work = a.data.slice();
  const diagonal = new Float64Array(n);
  for (let i = 0; i < n; i++) diagonal[i] = work[i * n + i];
  await choleskyInPlace(work, n, 0, n, { diagonal, what });
  for (let i = 0; i < n; i++) work.fill(0, i * n + i + 1, (i + 1) * n);
  return { rows: n, cols: n, data: work };
}

interface PivotContext {
  /** the original matrix's diagonal, for the pivot test */
  diagonal: Float64Array;
  what: string;
}

/** A triangular matrix inside a larger row-major array: element (i, j) is data[offset + i * stride + j]. */
interface View {
  data: Float64Array;
  stride: number;
  offset: number;
}

/** A contiguous copy of rows [r0, r0 + rows) and columns [c0, c0 + cols) of a view. */
function gather(v: View, r0: number, c0: number, rows: number, cols: number): Matrix {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const from = v.offset + (r0 + i) * v.stride + c0;
    out.set(v.data.subarray(from, from + cols), i * cols);
  }
  return { rows, cols, data: out };
}

/**
 * The lower triangle of rows/columns [r0, r1) of `w` (n x n) becomes its Cholesky factor, in place; entries
 * left of r0 are already final and subtracted. Recursively: [A11 .; A21 A22] = [L11 0; L21 L22] [...]^T:
 * L11 from A11; L21^T = L11^-1 A21^T (a forward solve on contiguous rows); A22 -= L21 L21^T (a product);
 * L22 from A22.
 */
async function choleskyInPlace(w: Float64Array, n: number, r0: number, r1: number, at: PivotContext): Promise<void> {
  const h = (r0 + r1) >> 1;
  // In JavaScript the plain loops beat the recursion, whose Schur complement is a full product (twice the
  // flops of the symmetric update) on copies: recurse only while that product runs in onnxruntime.
  if (r1 - r0 <= BASE || !runsInOrt((r1 - h) ** 2 * (h - r0))) return choleskyBase(w, n, r0, r1, at);
  await choleskyInPlace(w, n, r0, h, at);
  const width = h - r0;
  const rest = r1 - h;
  const whole: View = { data: w, stride: n, offset: 0 };
  const l21t = transpose(gather(whole, h, r0, rest, width)); // width x rest
  await forwardInPlace({ data: w, stride: n, offset: r0 * n + r0 }, l21t, 0, width);
  const schur = (await product(l21t, l21t, { transA: true })).data; // rest x rest
  for (let i = 0; i < rest; i++) {
    const row = (h + i) * n;
    for (let j = 0; j < width; j++) w[row + r0 + j] = l21t.data[j * rest + i];
    for (let j = 0; j <= i; j++) w[row + h + j] -= schur[i * rest + j];
  }
  return choleskyInPlace(w, n, h, r1, at);
}

/** Row-oriented Cholesky of rows/columns [r0, r1) of w (every step a dot product of two contiguous rows of L). */
function choleskyBase(w: Float64Array, n: number, r0: number, r1: number, at: PivotContext): void {
  const tolerance = n * EPS;
  for (let i = r0; i < r1; i++) {
    const ri = i * n;
    for (let j = r0; j < i; j++) w[ri + j] = (w[ri + j] - dot(w, ri + r0, w, j * n + r0, j - r0)) / w[j * n + j];
    const pivot = w[ri + i] - dot(w, ri + r0, w, ri + r0, i - r0);
    const original = at.diagonal[i];
    if (!(pivot > tolerance * original) || !(original > 0)) throw new SingularMatrixError(i, pivot, original, n, at.what);
    w[ri + i] = Math.sqrt(pivot);
  }
}

/** X with (L L^T) X = B, for L from `cholesky` (its upper triangle is not read). */
export async function choleskySolve(l: Matrix, b: Matrix): Promise<Matrix> {
  checkSquare(l, 'choleskySolve: L');
  if (b.rows !== l.rows) throw new VcompileError(`choleskySolve: B is ${b.rows} x ${b.cols}, L is ${l.rows} x ${l.cols}`);
  const x = matrix(b.rows, b.cols, b.data.slice());
  const view = { data: l.data, stride: l.cols, offset: 0 };
  await forwardInPlace(view, x, 0, l.rows);
  await backwardInPlace(view, x, 0, l.rows);
  return x;
}

/** Rows [r0, r1) of `y` as a matrix sharing its storage. */
function rowsOf(y: Matrix, r0: number, r1: number): Matrix {
  return { rows: r1 - r0, cols: y.cols, data: y.data.subarray(r0 * y.cols, r1 * y.cols) };
}

/**
 * Rows [r0, r1) of Y := L[r0:r1, r0:r1]^-1 Y[r0:r1] (forward substitution, in place), recursively:
 * Y1 := L11^-1 Y1; Y2 -= L21 Y1 (a product); Y2 := L22^-1 Y2.
 */
async function forwardInPlace(l: View, y: Matrix, r0: number, r1: number): Promise<void> {
  const m = y.cols;
  if (r1 - r0 > BASE) {
    const h = (r0 + r1) >> 1;
    await forwardInPlace(l, y, r0, h);
    const update = await product(gather(l, h, r0, r1 - h, h - r0), rowsOf(y, r0, h), {}, rowsOf(y, h, r1));
    y.data.set(update.data, h * m);
    return forwardInPlace(l, y, h, r1);
  }
  const { data: L, stride: n, offset } = l;
  const Y = y.data;
  for (let i = r0; i < r1; i++) {
    const yi = i * m;
    const li = offset + i * n;
    let j = r0;
    for (; j + 4 <= i; j += 4) {
      const l0 = L[li + j];
      const l1 = L[li + j + 1];
      const l2 = L[li + j + 2];
      const l3 = L[li + j + 3];
      const y0 = j * m;
      const y1 = y0 + m;
      const y2 = y1 + m;
      const y3 = y2 + m;
      for (let c = 0; c < m; c++) Y[yi + c] -= l0 * Y[y0 + c] + l1 * Y[y1 + c] + l2 * Y[y2 + c] + l3 * Y[y3 + c];
    }
    for (; j < i; j++) {
      const lij = L[li + j];
      const yj = j * m;
      for (let c = 0; c < m; c++) Y[yi + c] -= lij * Y[yj + c];
    }
    const inverse = 1 / L[li + i];
    for (let c = 0; c < m; c++) Y[yi + c] *= inverse;
  }
}

/**
 * Rows [r0, r1) of Y := L[r0:r1, r0:r1]^-T Y[r0:r1] (back substitution with L^T, in place), recursively:
 * Y2 := L22^-T Y2; Y1 -= L21^T Y2 (a product); Y1 := L11^-T Y1.
 */
async function backwardInPlace(l: View, y: Matrix, r0: number, r1: number): Promise<void> {
  const m = y.cols;
  if (r1 - r0 > BASE) {
    const h = (r0 + r1) >> 1;
    await backwardInPlace(l, y, h, r1);
    const update = await product(gather(l, h, r0, r1 - h, h - r0), rowsOf(y, h, r1), { transA: true }, rowsOf(y, r0, h));
    y.data.set(update.data, r0 * m);
    return backwardInPlace(l, y, r0, h);
  }
  const { data: L, stride: n, offset } = l;
  const Y = y.data;
  for (let i = r1 - 1; i >= r0; i--) {
    const yi = i * m;
    let j = i + 1;
    for (; j + 4 <= r1; j += 4) {
      const l0 = L[offset + j * n + i];
      const l1 = L[offset + (j + 1) * n + i];
      const l2 = L[offset + (j + 2) * n + i];
      const l3 = L[offset + (j + 3) * n + i];
      const y0 = j * m;
      const y1 = y0 + m;
      const y2 = y1 + m;
      const y3 = y2 + m;
      for (let c = 0; c < m; c++) Y[yi + c] -= l0 * Y[y0 + c] + l1 * Y[y1 + c] + l2 * Y[y2 + c] + l3 * Y[y3 + c];
    }
    for (; j < r1; j++) {
      const lji = L[offset + j * n + i];
      const yj = j * m;
      for (let c = 0; c < m; c++) Y[yi + c] -= lji * Y[yj + c];
    }
    const inverse = 1 / L[offset + i * n + i];
    for (let c = 0; c < m; c++) Y[yi + c] *= inverse;
  }
}

// ------------------------------------------------------------------------------------------ eigen

export interface EigenOptions {
  /** only the largest `top` eigenpairs (1..n); default all */
  top?: number;
  /**
   * how the tridiagonal eigenvectors are found: 'auto' (default) inverse iteration, falling back to 'ql'
   * when a vector does not converge; 'ql' accumulates the QL rotations (O(n^3) in JavaScript)
   */
  method?: 'auto' | 'ql';
}

export interface Eigen {
  /** eigenvalues, largest first */
  values: Float64Array;
  /** n x k: column j is the unit eigenvector of values[j], its largest-magnitude entry positive */
  vectors: Matrix;
}

/** Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix; only its lower triangle is read. */
export async function symmetricEigen(a: Matrix, options: EigenOptions = {}): Promise<Eigen> {
  checkSquare(a, 'symmetricEigen: the matrix');
  const n = a.rows;
  const k = options.top ?? n;
  if (!Number.isSafeInteger(k) || k < 1 || k > n) throw new VcompileError(`symmetricEigen: top must be an integer in 1..${n}, got ${k}`);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++)
      if (!Number.isFinite(a.data[i * n + j])) throw new VcompileError(`symmetricEigen: entry (${i}, ${j}) is ${a.data[i * n + j]}`);
  const { d, e, reflectors, tau } = await tridiagonalize(a);
  let rows: Float64Array | undefined; // k x n: the eigenvectors of the tridiagonal matrix, as rows
  let values: Float64Array;
  if (options.method !== 'ql') {
    const ascending = qlEigenvalues(d, e);
    ascending.sort();
    values = ascending.slice(n - k).reverse();
    rows = inverseIteration(d, e, values);
  }
  if (!rows) {
    const all = qlEigenpairs(d, e);
    values = all.values.slice(0, k);
    rows = all.rows.slice(0, k * n);
  }
  const vectors = await applyReflectors(reflectors, tau, { rows: k, cols: n, data: rows });
  normalizeSigns(vectors);
  return { values: values!, vectors: transpose(vectors) };
}

/** Columns reduced per panel before the trailing matrix is updated by one product. */
const PANEL = 32;

/**
 * Householder reduction A = Q T Q^T, T tridiagonal (diagonal d, off-diagonal e[i] between i and i+1),
 * Q = H_0 H_1 ... H_{n-3}, H_k = I - tau_k v_k v_k^T with v_k in row k of `reflectors` (entries k+1..n-1,
 * the first one 1). Blocked as LAPACK's dsytrd/dlatrd: within a panel of columns the trailing matrix is
 * not updated, its products with v are corrected by the panel's V and W instead; after the panel one
 * product does A22 -= V W^T + W V^T (both triangles, so the product's blocks need no symmetric form).
 */
async function tridiagonalize(a: Matrix): Promise<{ d: Float64Array; e: Float64Array; reflectors: Float64Array; tau: Float64Array }> {
  const n = a.rows;
  const S = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      const x = a.data[i * n + j];
      S[i * n + j] = x;
      S[j * n + i] = x;
    }
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(0, n - 1));
  const reflectors = new Float64Array(n * n);
  const tau = new Float64Array(n);
  // the panel's reflectors v and the vectors w of A22 -= v w^T + w v^T, one per row, full length
  const V = new Float64Array(PANEL * n);
  const W = new Float64Array(PANEL * n);
  for (let k0 = 0; k0 < n - 2; k0 += PANEL) {
    const k1 = Math.min(n - 2, k0 + PANEL);
    V.fill(0);
    W.fill(0);
    for (let c = 0; c < k1 - k0; c++) {
      const k = k0 + c;
      const rk = k * n;
      // row k brought up to date with the panel's earlier reflectors
      for (let q = 0; q < c; q++) {
        const vk = V[q * n + k];
        const wk = W[q * n + k];
        for (let j = k; j < n; j++) S[rk + j] -= vk * W[q * n + j] + wk * V[q * n + j];
      }
      d[k] = S[rk + k];
      const s = n - k - 1;
      const alpha = S[rk + k + 1];
      const xnorm = Math.sqrt(dot(S, rk + k + 2, S, rk + k + 2, s - 1));
      if (xnorm === 0) {
        e[k] = alpha;
        continue;
      }
      const beta = alpha >= 0 ? -Math.hypot(alpha, xnorm) : Math.hypot(alpha, xnorm);
      const t = (beta - alpha) / beta;
      e[k] = beta;
      tau[k] = t;
      const v = q0(V, c, n);
      const scale = 1 / (alpha - beta);
      v[k + 1] = 1;
      for (let j = k + 2; j < n; j++) v[j] = S[rk + j] * scale;
      reflectors.set(v.subarray(k + 1), rk + k + 1);
      // p = t (A22 v - V (W^T v) - W (V^T v)), A22 as at the panel's start
      const p = q0(W, c, n);
      symmetricTimesVector(S, n, k + 1, v, p);
      for (let q = 0; q < c; q++) {
        const wv = dot(W, q * n + k + 1, v, k + 1, s);
        const vv = dot(V, q * n + k + 1, v, k + 1, s);
        for (let i = k + 1; i < n; i++) p[i] -= V[q * n + i] * wv + W[q * n + i] * vv;
      }
      for (let i = k + 1; i < n; i++) p[i] *= t;
      // w = p - (t/2)(p·v) v
      const correction = -0.5 * t * dot(p, k + 1, v, k + 1, s);
      for (let i = k + 1; i < n; i++) p[i] += correction * v[i];
    }
    // A22 -= V W^T + W V^T on the rows and columns after the panel: [V W] [W V]^T as one product
    const nb = k1 - k0;
    const size = n - k1;
    const left = matrix(size, 2 * nb);
    const right = matrix(size, 2 * nb);
    for (let i = 0; i < size; i++)
      for (let q = 0; q < nb; q++) {
        const vi = V[q * n + k1 + i];
        const wi = W[q * n + k1 + i];
        left.data[i * 2 * nb + q] = vi;
        left.data[i * 2 * nb + nb + q] = wi;
        right.data[i * 2 * nb + q] = wi;
        right.data[i * 2 * nb + nb + q] = vi;
      }
    const trailing = { rows: n, cols: n, data: S };
    setBlock(trailing, k1, k1, await product(left, right, { transB: true }, block(trailing, k1, k1, size, size)));
  }
  if (n >= 2) {
    d[n - 2] = S[(n - 2) * n + n - 2];
    e[n - 2] = S[(n - 2) * n + n - 1];
  }
  if (n >= 1) d[n - 1] = S[n * n - 1];
  return { d, e, reflectors, tau };
}

/**
 * p[from:] = S[from:, from:] v[from:] for the symmetric n x n matrix S, reading its upper triangle only (each
 * entry once, for both of its uses: the product is bound by memory), two rows at a time.
 */
function symmetricTimesVector(S: Float64Array, n: number, from: number, v: Float64Array, p: Float64Array): void {
  p.fill(0, from, n);
  let i = from;
  for (; i + 2 <= n; i += 2) {
    const r0 = i * n;
    const r1 = r0 + n;
    const v0 = v[i];
    const v1 = v[i + 1];
    const a01 = S[r0 + i + 1];
    let s0 = S[r0 + i] * v0 + a01 * v1;
    let s1 = a01 * v0 + S[r1 + i + 1] * v1;
    for (let j = i + 2; j < n; j++) {
      const x0 = S[r0 + j];
      const x1 = S[r1 + j];
      const vj = v[j];
      s0 += x0 * vj;
      s1 += x1 * vj;
      p[j] += x0 * v0 + x1 * v1;
    }
    p[i] += s0;
    p[i + 1] += s1;
  }
  if (i < n) p[i] += S[i * n + i] * v[i];
}

/** Row q of a panel's vectors (full length n), as a view. */
function q0(panel: Float64Array, q: number, n: number): Float64Array {
  return panel.subarray(q * n, (q + 1) * n);
}

/** Eigenvalues of the tridiagonal (d, e) by the implicit QL method (EISPACK tql1), unordered. */
function qlEigenvalues(d: Float64Array, e: Float64Array): Float64Array {
  const values = d.slice();
  ql(values, e.slice(), undefined);
  return values;
}

/** All eigenpairs of the tridiagonal (d, e), descending: QL with the rotations accumulated (EISPACK tql2). */
function qlEigenpairs(d: Float64Array, e: Float64Array): { values: Float64Array; rows: Float64Array } {
  const n = d.length;
  const values = d.slice();
  const z = identity(n).data;
  ql(values, e.slice(), z);
  const order = Array.from(values.keys()).sort((i, j) => values[j] - values[i] || i - j);
  const rows = new Float64Array(n * n);
  order.forEach((from, to) => rows.set(z.subarray(from * n, (from + 1) * n), to * n));
  return { values: Float64Array.from(order, (i) => values[i]), rows };
}

/**
 * Implicit QL with Wilkinson-like shifts on the tridiagonal (d, e) (from EISPACK tql1/tql2, as in JAMA).
 * `d` becomes the eigenvalues; with `z` (n x n, row i the i-th basis vector), the rotations are applied to
 * its rows, so row i ends as the eigenvector of d[i].
 */
function ql(d: Float64Array, offDiagonal: Float64Array, z: Float64Array | undefined): void {
  const n = d.length;
  const e = new Float64Array(n);
  e.set(offDiagonal);
  let f = 0;
  let tst1 = 0;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n - 1 && Math.abs(e[m]) > EPS * tst1) m++;
    if (m > l) {
      let iterations = 0;
      do {
        if (++iterations > 60) throw new Error(`symmetricEigen: the QL iteration did not converge at eigenvalue ${l}`);
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1;
        let c2 = 1;
        let c3 = 1;
        const el1 = e[l + 1];
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          if (z) {
            const r0 = i * n;
            const r1 = r0 + n;
            for (let k = 0; k < n; k++) {
              const zk = z[r1 + k];
              z[r1 + k] = s * z[r0 + k] + c * zk;
              z[r0 + k] = c * z[r0 + k] - s * zk;
            }
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > EPS * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

/** sqrt(x^2 + y^2), without Math.hypot's cost where the squares cannot overflow or underflow. */
function hypot(x: number, y: number): number {
  const r = Math.sqrt(x * x + y * y);
  return r > 1e-150 && r < 1e150 ? r : Math.hypot(x, y);
}

/**
 * Eigenvectors of the tridiagonal (d, e) for `values` (descending, accurate eigenvalues), as rows, by
 * inverse iteration (LAPACK dstein): a seeded random start, at most 5 solves with (T - x I) factored once
 * with partial pivoting, modified Gram-Schmidt against the vectors of eigenvalues closer than 1e-3 ||T||
 * (so clusters and repeated eigenvalues give orthogonal vectors), 2 more solves after the norm test passes.
 * Returns undefined when a vector does not converge (the caller falls back to QL).
 */
function inverseIteration(d: Float64Array, e: Float64Array, values: Float64Array): Float64Array | undefined {
  const n = d.length;
  const k = values.length;
  const rows = new Float64Array(k * n);
  if (n === 1) {
    rows[0] = 1;
    return rows;
  }
  let norm = 0;
  for (let i = 0; i < n; i++) norm = Math.max(norm, Math.abs(d[i]) + (i > 0 ? Math.abs(e[i - 1]) : 0) + (i < n - 1 ? Math.abs(e[i]) : 0));
  if (norm === 0) {
    // T = 0: every vector is an eigenvector
    for (let j = 0; j < k; j++) rows[j * n + j] = 1;
    return rows;
  }
  const orthogonalTolerance = 1e-3 * norm;
  const stopNorm = Math.sqrt(0.1 / n);
  const rng = new Rng(1, 'inverse-iteration');
  const lu = new TridiagonalLu(n);
  const x = new Float64Array(n);
  // ascending order, as dstein: the vectors of a cluster are made orthogonal to the earlier ones
  let clusterStart = 0;
  let previous = 0;
  for (let step = 0; step < k; step++) {
    const j = k - 1 - step; // row of this eigenvalue in the descending output
    let shift = values[j];
    if (step > 0) {
      const perturbation = 10 * Math.abs(EPS * shift);
      if (shift - previous < perturbation) shift = previous + perturbation;
      if (Math.abs(shift - previous) > orthogonalTolerance) clusterStart = step;
    }
    for (let i = 0; i < n; i++) x[i] = 2 * rng.next() - 1;
    lu.factor(d, e, shift);
    let converged = false;
    let extra = 0;
    for (let iteration = 0; iteration < 5; iteration++) {
      let jmax = maxAbsIndex(x);
      const scale = (n * norm * Math.max(EPS, Math.abs(lu.a[n - 1]))) / Math.abs(x[jmax]);
      for (let i = 0; i < n; i++) x[i] *= scale;
      lu.solve(x);
      for (let c = clusterStart; c < step; c++) {
        const row = (k - 1 - c) * n;
        const proj = dot(x, 0, rows, row, n);
        for (let i = 0; i < n; i++) x[i] -= proj * rows[row + i];
      }
      jmax = maxAbsIndex(x);
      if (Math.abs(x[jmax]) < stopNorm) continue;
      if (++extra >= 3) {
        converged = true;
        break;
      }
    }
    if (!converged) return undefined;
    const length = Math.sqrt(dot(x, 0, x, 0, n));
    const sign = x[maxAbsIndex(x)] < 0 ? -1 : 1;
    for (let i = 0; i < n; i++) rows[j * n + i] = (sign * x[i]) / length;
    previous = shift;
  }
  return rows;
}

function maxAbsIndex(x: Float64Array): number {
  let best = 0;
  let value = -1;
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    if (a > value) {
      value = a;
      best = i;
    }
  }
  return best;
}

/** T - shift I = P L U for a symmetric tridiagonal T, with partial pivoting (LAPACK dlagtf / dlagts). */
class TridiagonalLu {
  /** U's diagonal, first and second super-diagonals; L's multipliers; whether rows k, k+1 were swapped */
  readonly a: Float64Array;
  private readonly b: Float64Array;
  private readonly c: Float64Array;
  private readonly d: Float64Array;
  private readonly swapped: Uint8Array;
  private tolerance = 0;

  constructor(private readonly n: number) {
    this.a = new Float64Array(n);
    this.b = new Float64Array(n);
    this.c = new Float64Array(n);
    this.d = new Float64Array(n);
    this.swapped = new Uint8Array(n);
  }

  factor(diagonal: Float64Array, offDiagonal: Float64Array, shift: number): void {
    const { n, a, b, c, d, swapped } = this;
    for (let i = 0; i < n; i++) a[i] = diagonal[i] - shift;
    for (let i = 0; i < n - 1; i++) b[i] = c[i] = offDiagonal[i];
    d.fill(0);
    let scale1 = Math.abs(a[0]) + Math.abs(b[0]);
    for (let k = 0; k < n - 1; k++) {
      let scale2 = Math.abs(c[k]) + Math.abs(a[k + 1]);
      if (k < n - 2) scale2 += Math.abs(b[k + 1]);
      const piv1 = a[k] === 0 ? 0 : Math.abs(a[k]) / scale1;
      if (c[k] === 0) {
        swapped[k] = 0;
        scale1 = scale2;
        continue;
      }
      const piv2 = Math.abs(c[k]) / scale2;
      if (piv2 <= piv1) {
        swapped[k] = 0;
        scale1 = scale2;
        c[k] /= a[k];
        a[k + 1] -= c[k] * b[k];
      } else {
        swapped[k] = 1;
        const mult = a[k] / c[k];
        a[k] = c[k];
        const temp = a[k + 1];
        a[k + 1] = b[k] - mult * temp;
        if (k < n - 2) {
          d[k] = b[k + 1];
          b[k + 1] = -mult * d[k];
        }
        b[k] = temp;
        c[k] = mult;
      }
    }
    // the perturbation for tiny pivots in solve (dlagts with job -1 and tol <= 0)
    let tolerance = Math.abs(a[0]);
    if (n > 1) tolerance = Math.max(tolerance, Math.abs(a[1]), Math.abs(b[0]));
    for (let i = 2; i < n; i++) tolerance = Math.max(tolerance, Math.abs(a[i]), Math.abs(b[i - 1]), Math.abs(d[i - 2]));
    this.tolerance = tolerance * EPS || EPS;
  }

  /** y := (T - shift I)^-1 y, tiny pivots of U perturbed to keep the solution finite. */
  solve(y: Float64Array): void {
    const { n, a, b, c, d, swapped } = this;
    for (let k = 1; k < n; k++) {
      if (!swapped[k - 1]) y[k] -= c[k - 1] * y[k - 1];
      else {
        const temp = y[k - 1];
        y[k - 1] = y[k];
        y[k] = temp - c[k - 1] * y[k];
      }
    }
    const tiny = 2 ** -1022;
    for (let k = n - 1; k >= 0; k--) {
      let temp = y[k];
      if (k <= n - 3) temp -= b[k] * y[k + 1] + d[k] * y[k + 2];
      else if (k === n - 2) temp -= b[k] * y[k + 1];
      let ak = a[k];
      let perturbation = ak >= 0 ? this.tolerance : -this.tolerance;
      for (;;) {
        const absak = Math.abs(ak);
        if (absak >= 1) break;
        if (absak < tiny) {
          if (absak === 0 || Math.abs(temp) * tiny > absak) {
            ak += perturbation;
            perturbation *= 2;
            continue;
          }
          temp /= tiny;
          ak /= tiny;
          break;
        }
        if (Math.abs(temp) > absak / tiny) {
          ak += perturbation;
          perturbation *= 2;
          continue;
        }
        break;
      }
      y[k] = temp / ak;
    }
  }
}

/** Reflectors applied at once, as products: blocks of this many. */
const REFLECTOR_BLOCK = 64;

/**
 * Rows z (k x n) -> rows of (Q z^T)^T, Q = H_0 ... H_{n-3}: blocks of reflectors from the last, each
 * block H_b ... H_{b+nb-1} = I - V T V^T (LAPACK dlarft, forward, columnwise) applied as
 * Z := Z - ((Z V) T^T) V^T on the columns the block touches.
 */
async function applyReflectors(reflectors: Float64Array, tau: Float64Array, z: Matrix): Promise<Matrix> {
  const n = z.cols;
  const k = z.rows;
  const count = Math.max(0, n - 2);
  for (let b1 = count; b1 > 0; b1 -= REFLECTOR_BLOCK) {
    const b0 = Math.max(0, b1 - REFLECTOR_BLOCK);
    const nb = b1 - b0;
    const first = b0 + 1; // first column any reflector of the block touches
    const width = n - first;
    // V: width x nb, column c the reflector b0 + c (zero above its first entry)
    const V = matrix(width, nb);
    for (let c = 0; c < nb; c++) {
      const r = b0 + c;
      for (let i = r + 1; i < n; i++) V.data[(i - first) * nb + c] = reflectors[r * n + i];
    }
    const T = triangularFactor(V, tau.subarray(b0, b1));
    const zPart = block(z, 0, first, k, width);
    const zv = await product(zPart, V);
    const zvt = await product(zv, T, { transB: true });
    setBlock(z, 0, first, await product(zvt, V, { transB: true }, zPart));
  }
  return z;
}

/** The upper triangular T with H_0 ... H_{nb-1} = I - V T V^T (LAPACK dlarft, forward, columnwise). */
function triangularFactor(V: Matrix, tau: Float64Array): Matrix {
  const nb = V.cols;
  const width = V.rows;
  const Vt = transpose(V).data; // row c: reflector c
  const T = matrix(nb, nb);
  const w = new Float64Array(nb);
  for (let i = 0; i < nb; i++) {
    const t = tau[i];
    T.data[i * nb + i] = t;
    if (t === 0) continue;
    // T[0:i, i] = -t T[0:i, 0:i] (V[:, 0:i]^T v_i)
    for (let c = 0; c < i; c++) w[c] = -t * dot(Vt, c * width, Vt, i * width, width);
    for (let r = 0; r < i; r++) {
      let s = 0;
      for (let c = r; c < i; c++) s += T.data[r * nb + c] * w[c];
      T.data[r * nb + i] = s;
    }
  }
  return T;
}

/** Each row's largest-magnitude entry made positive (the first of equals). */
function normalizeSigns(rows: Matrix): void {
  const { rows: k, cols: n, data } = rows;
  for (let r = 0; r < k; r++) {
    let best = 0;
    for (let i = 1; i < n; i++) if (Math.abs(data[r * n + i]) > Math.abs(data[r * n + best])) best = i;
    if (data[r * n + best] < 0) for (let i = 0; i < n; i++) data[r * n + i] = -data[r * n + i];
  }
}

// ------------------------------------------------------------------------------------------ regression

/** Held-out statistics: Gh = Fh^T Fh (n x n), Hh = Fh^T Yh (n x m), and Yh^T Yh (m x m) or its trace. */
export interface HeldOut {
  gHeld: Matrix;
  hHeld: Matrix;
  yyHeld: Matrix | number;
}

export interface RidgeStatistics extends HeldOut {
  /** G = F^T F (n x n, symmetric, both triangles) */
  g: Matrix;
  /** H = F^T Y (n x m) */
  h: Matrix;
}

export interface RidgeOptions {
  /** penalties to try, relative to the mean diagonal of G over the penalized features (default DEFAULT_RIDGE_GRID) */
  grid?: readonly number[];
  /** features not penalized (e.g. the constant) */
  unpenalized?: readonly number[];
  /**
   * columns of the random projection of the targets that the penalty is chosen on (default 32); 0 or at
   * least m: the penalty is chosen on the targets themselves (one solve with all m per grid point)
   */
  sketch?: number;
  /** seed of the projection (default 0) */
  seed?: number;
}

export interface RidgeResult {
  /** (G + lambda D)^-1 H, n x m (D: the identity, zero at unpenalized features) */
  w: Matrix;
  /** the chosen penalty, absolute (relative grid value x the mean diagonal) */
  lambda: number;
  /** held-out error of w, exact */
  heldOutError: number;
  /**
   * every penalty tried (absolute, increasing), with its held-out error: exact when the targets were not projected, else
   * the projection's unbiased estimate of it; Infinity where G + lambda D was not positive definite
   */
  grid: { lambda: number; heldOutError: number }[];
}

/**
 * Relative penalties tried by default: 1e-6 .. 1, a factor of 10 apart (one Cholesky factorization each: about
 * 0.2-0.4 s at n = 1537 on two cores, so a finer grid is the caller's choice).
 */
export const DEFAULT_RIDGE_GRID: readonly number[] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1];

/**
 * Ridge regression from normal equations, the penalty chosen on held-out statistics:
 *   W(lambda) = (G + lambda D)^-1 H, held-out error(W) = tr(Yh^T Yh) - 2 tr(W^T Hh) + tr(W^T Gh W),
 * the grid's smallest error wins (a tie goes to the larger penalty).
 *
 * Cost: one Cholesky factorization per grid point. With m > `sketch` targets the grid is searched on a seeded
 * Gaussian projection P (m x K, entries N(0, 1/K), so E[P P^T] = I): W(lambda) P = (G + lambda D)^-1 (H P)
 * needs only K right-hand sides, and tr(Yh^T Yh) - 2 tr(P^T W^T Hh P) + tr(P^T W^T Gh W P) is an unbiased
 * estimate of the held-out error (so Yh^T Yh may be given as its trace). Then one solve with all m
 * right-hand sides at the chosen penalty, reusing its factor.
 */
export async function ridge(stats: RidgeStatistics, options: RidgeOptions = {}): Promise<RidgeResult> {
  const { g, h } = stats;
  checkSquare(g, 'ridge: g');
  const n = g.rows;
  const m = h.cols;
  if (h.rows !== n) throw new VcompileError(`ridge: h is ${h.rows} x ${h.cols}, expected ${n} rows (g is ${n} x ${n})`);
  checkHeldOut(stats, n, m, 'ridge');
  checkFinite({ g, h, gHeld: stats.gHeld, hHeld: stats.hHeld, yyHeld: stats.yyHeld }, 'ridge');
  const grid = options.grid ?? DEFAULT_RIDGE_GRID;
  if (grid.length === 0 || grid.some((x) => !(x >= 0 && Number.isFinite(x))))
    throw new VcompileError(`ridge: the grid must be non-negative finite numbers, got [${grid.join(', ')}]`);
  const penalized = new Uint8Array(n).fill(1);
  for (const i of options.unpenalized ?? []) {
    if (!Number.isSafeInteger(i) || i < 0 || i >= n) throw new VcompileError(`ridge: unpenalized feature ${i} is not in 0..${n - 1}`);
    penalized[i] = 0;
  }
  let diagonalSum = 0;
  let count = 0;
  for (let i = 0; i < n; i++)
    if (penalized[i]) {
      diagonalSum += g.data[i * n + i];
      count++;
    }
  const scale = count > 0 && diagonalSum > 0 ? diagonalSum / count : 1;
  const sketch = options.sketch ?? 32;
  const projection = sketch >= 1 && sketch < m ? gaussianProjection(m, Math.floor(sketch), options.seed ?? 0) : undefined;
  const hTargets = projection ? await product(h, projection) : h;
  const heldTargets: HeldOut = projection
    ? { gHeld: stats.gHeld, hHeld: await product(stats.hHeld, projection), yyHeld: trace(stats.yyHeld) }
    : stats;

  const tried: { lambda: number; heldOutError: number }[] = [];
  let best: { lambda: number; error: number; factor: Matrix; w: Matrix } | undefined;
  let lastFailure: SingularMatrixError | undefined;
  for (const relative of [...grid].sort((x, y) => x - y)) {
    const lambda = relative * scale;
    const shifted = matrix(n, n, g.data.slice());
    for (let i = 0; i < n; i++) if (penalized[i]) shifted.data[i * n + i] += lambda;
    let factor: Matrix;
    try {
      factor = await cholesky(shifted, `g + lambda·I (lambda ${formatNumber(lambda)})`);
    } catch (error) {
      if (!(error instanceof SingularMatrixError)) throw error;
      lastFailure = error;
      tried.push({ lambda, heldOutError: Infinity });
      continue;
    }
    const w = await choleskySolve(factor, hTargets);
    const error = await heldOutError(w, heldTargets);
    tried.push({ lambda, heldOutError: error });
    if (!best || error <= best.error) best = { lambda, error, factor, w };
  }
  if (!best) throw lastFailure!.wrapped('ridge: no penalty in the grid makes the system positive definite: ');
  const w = projection ? await choleskySolve(best.factor, h) : best.w;
  return { w, lambda: best.lambda, heldOutError: projection ? await heldOutError(w, stats) : best.error, grid: tried };
}

/** m x k, entries N(0, 1/k) from a seeded generator. */
function gaussianProjection(m: number, k: number, seed: number): Matrix {
  const rng = new Rng(seed, 'ridge-sketch');
  const p = matrix(m, k);
  const s = 1 / Math.sqrt(k);
  for (let i = 0; i < m * k; i++) p.data[i] = rng.normal() * s;
  return p;
}

function trace(a: Matrix | number): number {
  if (typeof a === 'number') return a;
  let t = 0;
  for (let i = 0; i < a.rows; i++) t += a.data[i * a.cols + i];
  return t;
}

/** Refuses NaN and infinite entries, naming the matrix and the entry. */
function checkFinite(matrices: Record<string, Matrix | number>, what: string): void {
  for (const [name, x] of Object.entries(matrices)) {
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) throw new VcompileError(`${what}: ${name} is ${x}`);
      continue;
    }
    for (let i = 0; i < x.data.length; i++)
      if (!Number.isFinite(x.data[i]))
        throw new VcompileError(
          `${what}: ${name}[${Math.floor(i / x.cols)}, ${i % x.cols}] is ${x.data[i]} (the statistics must be finite)`,
        );
  }
}

function checkHeldOut(held: HeldOut, n: number, m: number, what: string): void {
  const expect = (x: Matrix, name: string, rows: number, cols: number) => {
    if (x.rows !== rows || x.cols !== cols)
      throw new VcompileError(`${what}: ${name} is ${x.rows} x ${x.cols}, expected ${rows} x ${cols}`);
  };
  expect(held.gHeld, 'gHeld', n, n);
  expect(held.hHeld, 'hHeld', n, m);
  if (typeof held.yyHeld !== 'number') expect(held.yyHeld, 'yyHeld', m, m);
}

/** A fit: W (n x m), or factored as A (n x R) times B (R x m). */
export type Fit = Matrix | { a: Matrix; b: Matrix };

/**
 * Held-out error of a fit from statistics only: tr(Yh^T Yh) - 2 tr(W^T Hh) + tr(W^T Gh W), the sum of squared
 * residuals on the held-out data. For W = A B it uses the R x R forms tr(B^T A^T Hh) and
 * tr((A^T Gh A)(B B^T)) and never forms W.
 */
export async function heldOutError(fit: Fit, held: HeldOut): Promise<number> {
  const factored = 'a' in fit;
  const n = factored ? fit.a.rows : fit.rows;
  const m = factored ? fit.b.cols : fit.cols;
  if (factored && fit.a.cols !== fit.b.rows)
    throw new VcompileError(`heldOutError: A is ${fit.a.rows} x ${fit.a.cols} but B is ${fit.b.rows} x ${fit.b.cols}`);
  checkHeldOut(held, n, m, 'heldOutError');
  if (!factored) {
    const gw = await product(held.gHeld, fit);
    return trace(held.yyHeld) - 2 * sumOfProducts(fit, held.hHeld) + sumOfProducts(fit, gw);
  }
  const { a, b } = fit;
  const ah = await product(a, held.hHeld, { transA: true }); // R x m
  const aga = await product(a, await product(held.gHeld, a), { transA: true }); // R x R
  const bb = await product(b, b, { transB: true }); // R x R
  return trace(held.yyHeld) - 2 * sumOfProducts(b, ah) + sumOfProducts(aga, bb);
}

/** sum_ij x_ij y_ij = tr(X^T Y). */
function sumOfProducts(x: Matrix, y: Matrix): number {
  return dot(x.data, 0, y.data, 0, x.data.length);
}

export interface ReducedRankResult {
  /** W V, n x R */
  a: Matrix;
  /** V^T, R x m */
  b: Matrix;
  /** the eigenvalues of W^T G W kept (largest first): the training fit's second moment each direction keeps */
  values: Float64Array;
  heldOutError?: number;
}

/**
 * Reduced-rank regression: the best rank-R fit W V V^T, V the top R eigenvectors of W^T G W (the fitted
 * values' second moment), returned factored as A = W V (n x R) and B = V^T (R x m), with its held-out error
 * when held-out statistics are given. For W the least-squares fit this minimizes the training residual
 * among all rank-R fits.
 */
export async function reducedRank(w: Matrix, g: Matrix, rank: number, held?: HeldOut): Promise<ReducedRankResult> {
  checkSquare(g, 'reducedRank: g');
  const n = g.rows;
  const m = w.cols;
  if (w.rows !== n) throw new VcompileError(`reducedRank: w is ${w.rows} x ${w.cols}, expected ${n} rows (g is ${n} x ${n})`);
  if (!Number.isSafeInteger(rank) || rank < 1 || rank > m)
    throw new VcompileError(`reducedRank: rank must be an integer in 1..${m} (the number of targets), got ${rank}`);
  checkFinite({ w, g }, 'reducedRank');
  const moment = await product(w, await product(g, w), { transA: true }); // m x m
  const M = moment.data;
  for (let i = 0; i < m; i++)
    for (let j = 0; j < i; j++) {
      const s = 0.5 * (M[i * m + j] + M[j * m + i]);
      M[i * m + j] = s;
      M[j * m + i] = s;
    }
  const { values, vectors } = await symmetricEigen(moment, { top: rank });
  const a = await product(w, vectors);
  const b = transpose(vectors);
  return { a, b, values, heldOutError: held ? await heldOutError({ a, b }, held) : undefined };
}
