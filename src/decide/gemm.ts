// Dense float64 matrices and their products, for the closed-form fits of src/decide/linalg.ts.
//
// A product goes one of two ways, chosen by its size (m·n·k multiply-adds):
// - small ones run in JavaScript, in a register-blocked dot-product kernel (2 rows x 4 columns of the
//   result at a time, over contiguous rows of op(A) and op(B)^T): about 2.5 GFlop/s on one core;
// - large ones run as one `Gemm` node in onnxruntime (MLAS DGEMM on every intra-op thread): about
//   20-30 GFlop/s on this project's 2-core machine. Each call costs ~0.1-0.4 ms of overhead plus copying
//   the result out, so below ~100^3 multiply-adds JavaScript wins (BENCHMARKS.md, `npm run bench:linalg`).
// The sessions (one per transpose/accumulate variant, symbolic dims) are opened on first use and kept;
// their idle threads do not spin, so that the JavaScript work between two products keeps both cores.
//
// Both ways are deterministic: the same inputs and settings give the same bits. The two ways round
// differently (MLAS blocks k), so a result can change in its last bits when a size crosses the threshold.
import * as ort from 'onnxruntime-node';
import { VcompileError } from '../errors.js';
import { float, ModelBuilder } from '../ir/builder.js';
import { DataType, tensorType } from '../ir/types.js';
import { encodeModel } from '../onnx/file.js';
import { openSession, runPrepared, type Session } from '../runtime/session.js';

/** A dense float64 matrix, row-major: element (i, j) is `data[i * cols + j]`. */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
}

/** A rows x cols matrix over `data` (row-major, not copied), or zeros. */
export function matrix(rows: number, cols: number, data?: Float64Array | readonly number[]): Matrix {
  if (!Number.isSafeInteger(rows) || !Number.isSafeInteger(cols) || rows < 0 || cols < 0)
    throw new VcompileError(`matrix: sizes must be non-negative integers, got ${rows} x ${cols}`);
  if (data === undefined) return { rows, cols, data: new Float64Array(rows * cols) };
  if (data.length !== rows * cols) throw new VcompileError(`matrix: ${rows} x ${cols} needs ${rows * cols} values, got ${data.length}`);
  return { rows, cols, data: data instanceof Float64Array ? data : Float64Array.from(data) };
}

/** The n x n identity. */
export function identity(n: number): Matrix {
  const m = matrix(n, n);
  for (let i = 0; i < n; i++) m.data[i * n + i] = 1;
  return m;
}

/** A^T, as a new matrix. */
export function transpose(a: Matrix): Matrix {
  const { rows, cols } = a;
  const src = a.data;
  const out = new Float64Array(rows * cols);
  // in tiles, so that both the reads and the writes stay in cache for large matrices
  const T = 32;
  for (let i0 = 0; i0 < rows; i0 += T) {
    const i1 = Math.min(rows, i0 + T);
    for (let j0 = 0; j0 < cols; j0 += T) {
      const j1 = Math.min(cols, j0 + T);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) out[j * rows + i] = src[i * cols + j];
    }
  }
  return { rows: cols, cols: rows, data: out };
}

/** A copy of rows [r0, r0 + rows) and columns [c0, c0 + cols) of `a`. */
export function block(a: Matrix, r0: number, c0: number, rows: number, cols: number): Matrix {
  const out = new Float64Array(rows * cols);
  if (c0 === 0 && cols === a.cols) out.set(a.data.subarray(r0 * a.cols, (r0 + rows) * a.cols));
  else for (let i = 0; i < rows; i++) out.set(a.data.subarray((r0 + i) * a.cols + c0, (r0 + i) * a.cols + c0 + cols), i * cols);
  return { rows, cols, data: out };
}

/** Write `b` into `a` at row r0, column c0. */
export function setBlock(a: Matrix, r0: number, c0: number, b: Matrix): void {
  if (c0 === 0 && b.cols === a.cols) return a.data.set(b.data, r0 * a.cols);
  for (let i = 0; i < b.rows; i++) a.data.set(b.data.subarray(i * b.cols, (i + 1) * b.cols), (r0 + i) * a.cols + c0);
}

// ------------------------------------------------------------------------------------------ settings

export interface LinalgSettings {
  /** onnxruntime's intra-op threads for the large products (default: onnxruntime's, one per core) */
  threads?: number;
  /**
   * products of at least this many multiply-adds (m·n·k) run in onnxruntime, smaller ones in JavaScript
   * (default 2^20, about 100^3); `Infinity` keeps every product in JavaScript, 0 sends every one to onnxruntime
   */
  ortMinVolume?: number;
}

const DEFAULT_ORT_MIN_VOLUME = 2 ** 20;
let settings: Required<Pick<LinalgSettings, 'ortMinVolume'>> & LinalgSettings = { ortMinVolume: DEFAULT_ORT_MIN_VOLUME };

/**
 * Change how products run (for benchmarks and tests; the defaults suit the fits). Settings not given
 * return to their defaults. Open onnxruntime sessions are released when the thread count changes.
 */
export async function configureLinalg(next: LinalgSettings = {}): Promise<void> {
  if (next.ortMinVolume !== undefined && !(next.ortMinVolume >= 0))
    throw new VcompileError(`linalg: ortMinVolume must be >= 0, got ${next.ortMinVolume}`);
  if (next.threads !== undefined && !(Number.isSafeInteger(next.threads) && next.threads >= 1))
    throw new VcompileError(`linalg: threads must be a positive integer, got ${next.threads}`);
  if (next.threads !== settings.threads) await releaseLinalg();
  settings = { ortMinVolume: next.ortMinVolume ?? DEFAULT_ORT_MIN_VOLUME, threads: next.threads };
}

/** Close the onnxruntime sessions the products opened (they reopen on the next large product). */
export async function releaseLinalg(): Promise<void> {
  const open = [...sessions.values()];
  sessions.clear();
  for (const s of open) await (await s).release();
}

// ------------------------------------------------------------------------------------------ products

const counts = { js: 0, ort: 0 };

/** How many products ran each way since the process started (for benchmarks and tests). */
export function productCounts(): { js: number; ort: number } {
  return { ...counts };
}

export interface ProductOptions {
  transA?: boolean;
  transB?: boolean;
}

/** Whether a product of this many multiply-adds runs in onnxruntime under the current settings. */
export function runsInOrt(volume: number): boolean {
  return volume >= settings.ortMinVolume;
}

/** op(A) op(B), where op transposes when the flag is set. */
export async function gemm(a: Matrix, b: Matrix, options: ProductOptions = {}): Promise<Matrix> {
  return product(a, b, options);
}

/**
 * op(A) op(B), or C - op(A) op(B) when `minus` is given (a new matrix; C is not changed). The sizes are
 * checked; the way (JavaScript or onnxruntime) is chosen by size.
 */
export async function product(a: Matrix, b: Matrix, options: ProductOptions = {}, minus?: Matrix): Promise<Matrix> {
  const transA = options.transA ?? false;
  const transB = options.transB ?? false;
  const m = transA ? a.cols : a.rows;
  const k = transA ? a.rows : a.cols;
  const kb = transB ? b.cols : b.rows;
  const n = transB ? b.rows : b.cols;
  if (k !== kb)
    throw new VcompileError(
      `gemm: inner sizes differ: op(A) is ${m} x ${k}, op(B) is ${kb} x ${n} (A ${a.rows} x ${a.cols}${transA ? ' transposed' : ''}, B ${b.rows} x ${b.cols}${transB ? ' transposed' : ''})`,
    );
  if (minus && (minus.rows !== m || minus.cols !== n))
    throw new VcompileError(`gemm: C is ${minus.rows} x ${minus.cols}, op(A) op(B) is ${m} x ${n}`);
  if (m === 0 || n === 0 || k === 0) return minus ? matrix(m, n, minus.data.slice()) : matrix(m, n);
  if (runsInOrt(m * n * k)) {
    counts.ort++;
    return ortProduct(a, b, transA, transB, m, n, minus);
  }
  counts.js++;
  const left = transA ? transpose(a).data : a.data;
  const rightT = transB ? b.data : transpose(b).data;
  const out = minus ? minus.data.slice() : new Float64Array(m * n);
  dotKernel(m, n, k, left, rightT, out, minus ? -1 : 1);
  return { rows: m, cols: n, data: out };
}

/**
 * out (m x n) += sign · A Bt^T, A m x k and Bt n x k row-major: every result element is a dot product of
 * two contiguous rows, taken 2 x 4 at a time so that each loaded value is used 2 or 4 times from
 * registers. Columns go in panels whose rows of Bt stay in the L2 cache while all rows of A pass.
 */
export function dotKernel(m: number, n: number, k: number, A: Float64Array, Bt: Float64Array, out: Float64Array, sign: 1 | -1): void {
  const panel = Math.max(4, (Math.floor(32768 / Math.max(1, k)) >> 2) << 2);
  for (let j0 = 0; j0 < n; j0 += panel) {
    const j1 = Math.min(n, j0 + panel);
    const j4 = j0 + (((j1 - j0) >> 2) << 2);
    let i = 0;
    for (; i + 2 <= m; i += 2) {
      const a0 = i * k;
      const a1 = a0 + k;
      let j = j0;
      for (; j < j4; j += 4) {
        const b0 = j * k;
        const b1 = b0 + k;
        const b2 = b1 + k;
        const b3 = b2 + k;
        let s00 = 0;
        let s01 = 0;
        let s02 = 0;
        let s03 = 0;
        let s10 = 0;
        let s11 = 0;
        let s12 = 0;
        let s13 = 0;
        for (let p = 0; p < k; p++) {
          const x0 = A[a0 + p];
          const x1 = A[a1 + p];
          const y0 = Bt[b0 + p];
          const y1 = Bt[b1 + p];
          const y2 = Bt[b2 + p];
          const y3 = Bt[b3 + p];
          s00 += x0 * y0;
          s01 += x0 * y1;
          s02 += x0 * y2;
          s03 += x0 * y3;
          s10 += x1 * y0;
          s11 += x1 * y1;
          s12 += x1 * y2;
          s13 += x1 * y3;
        }
        const c0 = i * n + j;
        const c1 = c0 + n;
        out[c0] += sign * s00;
        out[c0 + 1] += sign * s01;
        out[c0 + 2] += sign * s02;
        out[c0 + 3] += sign * s03;
        out[c1] += sign * s10;
        out[c1 + 1] += sign * s11;
        out[c1 + 2] += sign * s12;
        out[c1 + 3] += sign * s13;
      }
      for (; j < j1; j++) {
        const b0 = j * k;
        let s0 = 0;
        let s1 = 0;
        for (let p = 0; p < k; p++) {
          const y = Bt[b0 + p];
          s0 += A[a0 + p] * y;
          s1 += A[a1 + p] * y;
        }
        out[i * n + j] += sign * s0;
        out[(i + 1) * n + j] += sign * s1;
      }
    }
    if (i < m) {
      const a0 = i * k;
      for (let j = j0; j < j1; j++) out[i * n + j] += sign * dot(A, a0, Bt, j * k, k);
    }
  }
}

/** x[xo..xo+len) · y[yo..yo+len), in four running sums. */
export function dot(x: Float64Array, xo: number, y: Float64Array, yo: number, len: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let p = 0;
  for (; p + 4 <= len; p += 4) {
    s0 += x[xo + p] * y[yo + p];
    s1 += x[xo + p + 1] * y[yo + p + 1];
    s2 += x[xo + p + 2] * y[yo + p + 2];
    s3 += x[xo + p + 3] * y[yo + p + 3];
  }
  for (; p < len; p++) s0 += x[xo + p] * y[yo + p];
  return s0 + s1 + (s2 + s3);
}

// ------------------------------------------------------------------------------------------ onnxruntime

const sessions = new Map<string, Promise<Session>>();

/** The session computing op(a) op(b) (or c - op(a) op(b)): one Gemm node, every dim symbolic. */
function gemmSession(transA: boolean, transB: boolean, minus: boolean): Promise<Session> {
  const key = `${+transA}${+transB}${+minus}`;
  let session = sessions.get(key);
  if (!session) {
    const b = new ModelBuilder(13, 'vcompile_linalg_gemm');
    const double = (dims: string[]) => tensorType(DataType.DOUBLE, dims);
    const x = b.input('a', double(transA ? ['k', 'm'] : ['m', 'k']));
    const y = b.input('b', double(transB ? ['n', 'k'] : ['k', 'n']));
    const inputs = [x, y];
    if (minus) inputs.push(b.input('c', double(['m', 'n'])));
    const attrs = { transA: +transA, transB: +transB, alpha: float(minus ? -1 : 1), beta: float(1) };
    b.output(b.node('Gemm', inputs, attrs).outputs[0]!, 'y', double(['m', 'n']));
    session = openSession(encodeModel(b.model), { threads: settings.threads, spinning: false });
    sessions.set(key, session);
    // a failed open is not cached
    session.catch(() => sessions.delete(key));
  }
  return session;
}

async function ortProduct(a: Matrix, b: Matrix, transA: boolean, transB: boolean, m: number, n: number, minus?: Matrix): Promise<Matrix> {
  const session = await gemmSession(transA, transB, minus !== undefined);
  const feeds: Record<string, ort.Tensor> = {
    a: new ort.Tensor('float64', a.data, [a.rows, a.cols]),
    b: new ort.Tensor('float64', b.data, [b.rows, b.cols]),
  };
  if (minus) feeds.c = new ort.Tensor('float64', minus.data, [m, n]);
  const results = await runPrepared(session, feeds);
  const data = (results.y as ort.Tensor).data as Float64Array;
  return { rows: m, cols: n, data };
}
