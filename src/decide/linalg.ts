// TEMPORARY stand-in (plain JS) until the real module lands; same API.
export interface Matrix {
  rows: number;
  cols: number;
  data: Float64Array;
}
export function matrix(rows: number, cols: number, data?: Float64Array): Matrix {
  return { rows, cols, data: data ?? new Float64Array(rows * cols) };
}
export class SingularMatrixError extends Error {}

export async function cholesky(a: Matrix): Promise<Matrix> {
  const n = a.rows;
  const L = new Float64Array(a.data);
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let s = L[rj + j];
    for (let k = 0; k < j; k++) s -= L[rj + k] * L[rj + k];
    if (!(s > 1e-300)) throw new SingularMatrixError(`pivot ${j} is ${s}`);
    const d = Math.sqrt(s);
    L[rj + j] = d;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let v = L[ri + j];
      for (let k = 0; k < j; k++) v -= L[ri + k] * L[rj + k];
      L[ri + j] = v / d;
    }
    for (let k = j + 1; k < n; k++) L[rj + k] = 0;
  }
  return matrix(n, n, L);
}

export async function choleskySolve(l: Matrix, b: Matrix): Promise<Matrix> {
  const n = l.rows;
  const m = b.cols;
  const L = l.data;
  const Y = new Float64Array(b.data);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    const yi = i * m;
    for (let k = 0; k < i; k++) {
      const v = L[ri + k];
      if (v === 0) continue;
      const yk = k * m;
      for (let c = 0; c < m; c++) Y[yi + c] -= v * Y[yk + c];
    }
    const d = L[ri + i];
    for (let c = 0; c < m; c++) Y[yi + c] /= d;
  }
  for (let i = n - 1; i >= 0; i--) {
    const yi = i * m;
    for (let k = i + 1; k < n; k++) {
      const v = L[k * n + i];
      if (v === 0) continue;
      const yk = k * m;
      for (let c = 0; c < m; c++) Y[yi + c] -= v * Y[yk + c];
    }
    const d = L[i * n + i];
    for (let c = 0; c < m; c++) Y[yi + c] /= d;
  }
  return matrix(n, m, Y);
}

export async function gemm(a: Matrix, b: Matrix, options: { transA?: boolean; transB?: boolean } = {}): Promise<Matrix> {
  const [ar, ac] = options.transA ? [a.cols, a.rows] : [a.rows, a.cols];
  const [br, bc] = options.transB ? [b.cols, b.rows] : [b.rows, b.cols];
  if (ac !== br) throw new Error('gemm: sizes');
  const out = new Float64Array(ar * bc);
  const A = (i: number, k: number) => (options.transA ? a.data[k * a.cols + i] : a.data[i * a.cols + k]);
  const B = (k: number, j: number) => (options.transB ? b.data[j * b.cols + k] : b.data[k * b.cols + j]);
  for (let i = 0; i < ar; i++)
    for (let k = 0; k < ac; k++) {
      const v = A(i, k);
      if (v === 0) continue;
      for (let j = 0; j < bc; j++) out[i * bc + j] += v * B(k, j);
    }
  return matrix(ar, bc, out);
}

/** Jacobi eigen (slow; stand-in). */
export async function symmetricEigen(a: Matrix, options: { top?: number } = {}): Promise<{ values: Float64Array; vectors: Matrix }> {
  const n = a.rows;
  const A = new Float64Array(a.data);
  const V = new Float64Array(n * n);
  for (let i = 0; i < n; i++) V[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p * n + q] ** 2;
    if (off < 1e-22) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = A[p * n + q];
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k * n + p];
          const akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p * n + k];
          const aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = V[k * n + p];
          const vkq = V[k * n + q];
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  const order = [...Array(n).keys()].sort((x, y) => A[y * n + y] - A[x * n + x]);
  const k = options.top ?? n;
  const values = Float64Array.from(order.slice(0, k), (i) => A[i * n + i]);
  const vectors = matrix(n, k);
  order.slice(0, k).forEach((src, j) => {
    for (let r = 0; r < n; r++) vectors.data[r * k + j] = V[r * n + src];
  });
  return { values, vectors };
}

export async function heldOutError(w: Matrix, held: { gHeld: Matrix; hHeld: Matrix; yyHeld: number }): Promise<number> {
  const gw = await gemm(held.gHeld, w);
  let cross = 0;
  let quad = 0;
  for (let i = 0; i < w.data.length; i++) {
    cross += w.data[i] * held.hHeld.data[i];
    quad += w.data[i] * gw.data[i];
  }
  return held.yyHeld - 2 * cross + quad;
}

export async function ridge(
  stats: { g: Matrix; h: Matrix; gHeld: Matrix; hHeld: Matrix; yyHeld: Matrix | number },
  options: { grid?: number[]; seed?: number; unpenalized?: number[] } = {},
): Promise<{ w: Matrix; lambda: number; heldOutError: number; grid: { lambda: number; heldOutError: number }[] }> {
  const n = stats.g.rows;
  let trace = 0;
  for (let i = 0; i < n; i++) trace += stats.g.data[i * n + i];
  const base = trace / n;
  const grid = (options.grid ?? [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]).map((a) => a * base);
  const yy = typeof stats.yyHeld === 'number' ? stats.yyHeld : traceOf(stats.yyHeld);
  const results: { lambda: number; heldOutError: number; w: Matrix }[] = [];
  for (const lambda of grid) {
    const g = matrix(n, n, new Float64Array(stats.g.data));
    for (let i = 0; i < n; i++) if (!options.unpenalized?.includes(i)) g.data[i * n + i] += lambda;
    let w: Matrix;
    try {
      w = await choleskySolve(await cholesky(g), stats.h);
    } catch (error) {
      if (error instanceof SingularMatrixError) continue;
      throw error;
    }
    results.push({ lambda, heldOutError: await heldOutError(w, { gHeld: stats.gHeld, hHeld: stats.hHeld, yyHeld: yy }), w });
  }
  if (results.length === 0) throw new SingularMatrixError('singular at every lambda of the grid');
  const best = results.reduce((a, b) => (b.heldOutError < a.heldOutError ? b : a));
  return {
    w: best.w,
    lambda: best.lambda,
    heldOutError: best.heldOutError,
    grid: results.map(({ lambda, heldOutError: e }) => ({ lambda, heldOutError: e })),
  };
}

function traceOf(m: Matrix): number {
  let t = 0;
  for (let i = 0; i < m.rows; i++) t += m.data[i * m.cols + i];
  return t;
}

export async function reducedRank(
  w: Matrix,
  g: Matrix,
  rank: number,
  held?: { gHeld: Matrix; hHeld: Matrix; yyHeld: number },
): Promise<{ a: Matrix; b: Matrix; heldOutError?: number }> {
  const m = await gemm(w, await gemm(g, w), { transA: true });
  const { vectors } = await symmetricEigen(m, { top: rank });
  const a = await gemm(w, vectors);
  const b = matrix(rank, w.cols);
  for (let r = 0; r < rank; r++) for (let c = 0; c < w.cols; c++) b.data[r * w.cols + c] = vectors.data[c * rank + r];
  const full = await gemm(a, b);
  return { a, b, heldOutError: held ? await heldOutError(full, held) : undefined };
}
