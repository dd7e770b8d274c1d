// The dense linear algebra of the closed-form fits (src/decide/linalg.ts, gemm.ts), against plain float64
// references written here: Gaussian elimination with partial pivoting, a triple-loop product, a cyclic
// Jacobi eigensolver, and regressions computed from explicit data matrices. Every check runs on the
// JavaScript kernels and on onnxruntime's products (configureLinalg moves the threshold).
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { product } from '../src/decide/gemm.js';
import {
  cholesky,
  choleskySolve,
  configureLinalg,
  gemm,
  heldOutError,
  type Matrix,
  matrix,
  productCounts,
  reducedRank,
  releaseLinalg,
  ridge,
  SingularMatrixError,
  symmetricEigen,
  transpose,
} from '../src/decide/linalg.js';
import { VcompileError } from '../src/errors.js';
import { Rng } from '../src/random.js';

afterEach(() => configureLinalg());
afterAll(() => releaseLinalg());

/** The product ways: everything in JavaScript, everything in onnxruntime, and the default threshold. */
const WAYS = [
  { name: 'JavaScript', settings: { ortMinVolume: Infinity } },
  { name: 'onnxruntime', settings: { ortMinVolume: 0 } },
  { name: 'default threshold', settings: {} },
] as const;

// ------------------------------------------------------------------------------------------ references

function random(rows: number, cols: number, rng: Rng): Matrix {
  return matrix(
    rows,
    cols,
    Float64Array.from({ length: rows * cols }, () => rng.normal()),
  );
}

function multiply(a: Matrix, b: Matrix): Matrix {
  const c = matrix(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < b.cols; j++) {
      let s = 0;
      for (let p = 0; p < a.cols; p++) s += a.data[i * a.cols + p] * b.data[p * b.cols + j];
      c.data[i * b.cols + j] = s;
    }
  return c;
}

function subtract(a: Matrix, b: Matrix): Matrix {
  return matrix(
    a.rows,
    a.cols,
    a.data.map((x, i) => x - b.data[i]),
  );
}

function frobenius2(a: Matrix): number {
  return a.data.reduce((s, x) => s + x * x, 0);
}

/** max |a - b| / max |b| */
function relativeError(a: Matrix | Float64Array, b: Matrix | Float64Array): number {
  const x = a instanceof Float64Array ? a : a.data;
  const y = b instanceof Float64Array ? b : b.data;
  expect(x.length).toBe(y.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < x.length; i++) {
    diff = Math.max(diff, Math.abs(x[i] - y[i]));
    scale = Math.max(scale, Math.abs(y[i]));
  }
  return diff / (scale || 1);
}

/** X with A X = B by Gaussian elimination with partial pivoting. */
function gaussSolve(a: Matrix, b: Matrix): Matrix {
  const n = a.rows;
  const m = b.cols;
  const A = Array.from({ length: n }, (_, i) => Array.from(a.data.subarray(i * n, (i + 1) * n)));
  const B = Array.from({ length: n }, (_, i) => Array.from(b.data.subarray(i * m, (i + 1) * m)));
  for (let k = 0; k < n; k++) {
    let p = k;
    for (let i = k + 1; i < n; i++) if (Math.abs(A[i][k]) > Math.abs(A[p][k])) p = i;
    [A[k], A[p]] = [A[p], A[k]];
    [B[k], B[p]] = [B[p], B[k]];
    for (let i = k + 1; i < n; i++) {
      const f = A[i][k] / A[k][k];
      for (let j = k; j < n; j++) A[i][j] -= f * A[k][j];
      for (let j = 0; j < m; j++) B[i][j] -= f * B[k][j];
    }
  }
  const x = matrix(n, m);
  for (let i = n - 1; i >= 0; i--)
    for (let j = 0; j < m; j++) {
      let s = B[i][j];
      for (let k = i + 1; k < n; k++) s -= A[i][k] * x.data[k * m + j];
      x.data[i * m + j] = s / A[i][i];
    }
  return x;
}

/** Eigenvalues (descending) and eigenvectors (columns) by cyclic Jacobi rotations. */
function jacobiEigen(s: Matrix): { values: number[]; vectors: Matrix } {
  const n = s.rows;
  const A = Array.from({ length: n }, (_, i) => Array.from(s.data.subarray(i * n, (i + 1) * n)));
  const V = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j): number => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p][q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        if (A[p][q] === 0) continue;
        const theta = (A[q][q] - A[p][p]) / (2 * A[p][q]);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const sn = t * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k][p];
          const akq = A[k][q];
          A[k][p] = c * akp - sn * akq;
          A[k][q] = sn * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p][k];
          const aqk = A[q][k];
          A[p][k] = c * apk - sn * aqk;
          A[q][k] = sn * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = V[k][p];
          const vkq = V[k][q];
          V[k][p] = c * vkp - sn * vkq;
          V[k][q] = sn * vkp + c * vkq;
        }
      }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => A[j][j] - A[i][i]);
  const vectors = matrix(n, n);
  order.forEach((from, to) => {
    for (let k = 0; k < n; k++) vectors.data[k * n + to] = V[k][from];
  });
  return { values: order.map((i) => A[i][i]), vectors };
}

/** A well-conditioned symmetric positive definite n x n matrix: a random symmetric one plus 3 sqrt(n) I. */
function spd(n: number, rng: Rng): Matrix {
  const a = symmetric(n, rng);
  for (let i = 0; i < n; i++) a.data[i * n + i] += 3 * Math.sqrt(n) + 1;
  return a;
}

function symmetric(n: number, rng: Rng): Matrix {
  const a = random(n, n, rng);
  const s = matrix(n, n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) s.data[i * n + j] = a.data[i * n + j] + a.data[j * n + i];
  return s;
}

/** A random orthogonal matrix (Gram-Schmidt on a random one). */
function orthogonal(n: number, rng: Rng): Matrix {
  const q = transpose(random(n, n, rng)); // rows are the vectors
  for (let i = 0; i < n; i++) {
    for (let pass = 0; pass < 2; pass++)
      for (let j = 0; j < i; j++) {
        let d = 0;
        for (let k = 0; k < n; k++) d += q.data[i * n + k] * q.data[j * n + k];
        for (let k = 0; k < n; k++) q.data[i * n + k] -= d * q.data[j * n + k];
      }
    const norm = Math.sqrt(q.data.subarray(i * n, (i + 1) * n).reduce((s, x) => s + x * x, 0));
    for (let k = 0; k < n; k++) q.data[i * n + k] /= norm;
  }
  return q;
}

/** Q diag(values) Q^T */
function withSpectrum(values: number[], rng: Rng): Matrix {
  const n = values.length;
  const q = orthogonal(n, rng);
  const qd = matrix(
    n,
    n,
    q.data.map((x, i) => x * values[i % n]),
  );
  return multiply(qd, transpose(q));
}

// ------------------------------------------------------------------------------------------ gemm

describe('gemm', () => {
  for (const way of WAYS)
    it(`equals a triple loop for every transpose combination (${way.name})`, async () => {
      await configureLinalg(way.settings);
      const rng = new Rng(1, way.name);
      for (const [m, k, n] of [
        [1, 1, 1],
        [7, 5, 3],
        [33, 17, 9],
        [70, 130, 65],
      ]) {
        const a = random(m, k, rng);
        const b = random(k, n, rng);
        const want = multiply(a, b);
        const c = random(m, n, rng);
        for (const transA of [false, true])
          for (const transB of [false, true]) {
            const left = transA ? transpose(a) : a;
            const right = transB ? transpose(b) : b;
            expect(relativeError(await gemm(left, right, { transA, transB }), want)).toBeLessThan(1e-14);
            const minus = await product(left, right, { transA, transB }, c);
            expect(relativeError(minus, subtract(c, want))).toBeLessThan(1e-14);
          }
      }
    });

  it('sends large products to onnxruntime and small ones to JavaScript by default', async () => {
    const rng = new Rng(2);
    const before = productCounts();
    await gemm(random(8, 8, rng), random(8, 8, rng));
    const afterSmall = productCounts();
    expect(afterSmall).toEqual({ js: before.js + 1, ort: before.ort });
    await gemm(random(128, 128, rng), random(128, 128, rng));
    expect(productCounts()).toEqual({ js: afterSmall.js, ort: afterSmall.ort + 1 });
  });

  it('refuses products whose inner sizes differ', async () => {
    await expect(gemm(matrix(2, 3), matrix(2, 3))).rejects.toThrow(
      new VcompileError('gemm: inner sizes differ: op(A) is 2 x 3, op(B) is 2 x 3 (A 2 x 3, B 2 x 3)'),
    );
    await expect(gemm(matrix(2, 3), matrix(3, 2), { transA: true })).rejects.toThrow(
      'gemm: inner sizes differ: op(A) is 3 x 2, op(B) is 3 x 2 (A 2 x 3 transposed, B 3 x 2)',
    );
    expect(() => matrix(2, 2, [1, 2, 3])).toThrow('matrix: 2 x 2 needs 4 values, got 3');
  });
});

// ------------------------------------------------------------------------------------------ Cholesky

describe('cholesky and choleskySolve', () => {
  for (const way of WAYS)
    it(`match Gaussian elimination on random SPD problems (${way.name})`, async () => {
      await configureLinalg(way.settings);
      const rng = new Rng(3, way.name);
      for (const n of way.name === 'default threshold' ? [1, 65, 300] : [1, 5, 64, 65, 150]) {
        const a = spd(n, rng);
        const l = await cholesky(a);
        for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) expect(l.data[i * n + j]).toBe(0);
        expect(relativeError(multiply(l, transpose(l)), a)).toBeLessThan(1e-13);
        const b = random(n, 7, rng);
        expect(relativeError(await choleskySolve(l, b), gaussSolve(a, b))).toBeLessThan(1e-9);
      }
    });

  it('reads only the lower triangle', async () => {
    const a = spd(100, new Rng(4));
    const lowerOnly = matrix(
      100,
      100,
      a.data.map((x, i) => (i % 100 > Math.floor(i / 100) ? Number.NaN : x)),
    );
    expect((await cholesky(lowerOnly)).data).toEqual((await cholesky(a)).data);
  });

  it('takes the onnxruntime path at n = 300 by default', async () => {
    const before = productCounts().ort;
    const a = spd(300, new Rng(5));
    const l = await cholesky(a);
    await choleskySolve(l, random(300, 300, new Rng(6)));
    expect(productCounts().ort).toBeGreaterThan(before);
  });

  it('names the pivot of a matrix that is not positive definite', async () => {
    const semidefinite = matrix(3, 3, [4, 2, 0, 2, 1, 0, 0, 0, 1]);
    await expect(cholesky(semidefinite)).rejects.toThrow(new SingularMatrixError(1, 0, 1, 3).message);
    await expect(cholesky(semidefinite)).rejects.toThrow(
      'matrix is not positive definite: pivot 1 of 3 is 0 (its diagonal entry is 1); the features are linearly dependent or the matrix is not a Gram matrix: add a ridge penalty or drop the redundant features',
    );
    const indefinite = matrix(2, 2, [1, 2, 2, 1]);
    const error = await cholesky(indefinite, 'g').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SingularMatrixError);
    expect(error).toBeInstanceOf(VcompileError);
    expect((error as SingularMatrixError).message).toBe(
      'g is not positive definite: pivot 1 of 2 is -3 (its diagonal entry is 1); the features are linearly dependent or the matrix is not a Gram matrix: add a ridge penalty or drop the redundant features',
    );
    expect([(error as SingularMatrixError).pivot, (error as SingularMatrixError).value]).toEqual([1, -3]);
  });

  it('names the pivot in the recursive part (past the first block), with its index in the whole matrix', async () => {
    const n = 300; // the top level recurses by default (its products run in onnxruntime)
    const a = spd(n, new Rng(7));
    // row 250 a copy of row 10 (and so column): a Gram matrix of linearly dependent features
    for (let j = 0; j < n; j++) a.data[250 * n + j] = a.data[10 * n + j];
    for (let i = 0; i < n; i++) a.data[i * n + 250] = a.data[i * n + 10];
    a.data[250 * n + 250] = a.data[10 * n + 10];
    const before = productCounts().ort;
    const error = (await cholesky(a).catch((e: unknown) => e)) as SingularMatrixError;
    expect(productCounts().ort).toBeGreaterThan(before);
    expect(error).toBeInstanceOf(SingularMatrixError);
    expect(error.pivot).toBe(250);
    expect(error.message).toMatch(/^matrix is not positive definite: pivot 250 of 300 is \S+ \(its diagonal entry is \S+\); /);
  });
});

// ------------------------------------------------------------------------------------------ eigen

function checkEigen(a: Matrix, values: Float64Array, vectors: Matrix, tolerance = 1e-12): void {
  const n = a.rows;
  const k = values.length;
  const scale = Math.max(...Array.from(values, Math.abs), 1e-300);
  const av = multiply(a, vectors);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < k; j++) expect(Math.abs(av.data[i * k + j] - vectors.data[i * k + j] * values[j]) / scale).toBeLessThan(tolerance);
  const vtv = multiply(transpose(vectors), vectors);
  for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) expect(Math.abs(vtv.data[i * k + j] - (i === j ? 1 : 0))).toBeLessThan(tolerance);
  for (let j = 1; j < k; j++) expect(values[j]).toBeLessThanOrEqual(values[j - 1]);
}

/** V V^T over the columns of the eigenvalues that equal values[from..to) (a projector: sign- and basis-free). */
function projector(vectors: Matrix, from: number, to: number): Matrix {
  const n = vectors.rows;
  const p = matrix(n, n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let c = from; c < to; c++) s += vectors.data[i * vectors.cols + c] * vectors.data[j * vectors.cols + c];
      p.data[i * n + j] = s;
    }
  return p;
}

describe('symmetricEigen', () => {
  for (const way of WAYS)
    for (const method of ['auto', 'ql'] as const)
      it(`A V = V diag(values), V^T V = I, values descending on random matrices (${way.name}, ${method})`, async () => {
        await configureLinalg(way.settings);
        const rng = new Rng(8, way.name + method);
        for (const n of way.name === 'default threshold' ? [2, 150] : [1, 2, 3, 10, 70]) {
          const a = symmetric(n, rng);
          const { values, vectors } = await symmetricEigen(a, { method });
          expect([vectors.rows, vectors.cols]).toEqual([n, n]);
          checkEigen(a, values, vectors);
          if (n <= 10) expect(relativeError(values, Float64Array.from(jacobiEigen(a).values))).toBeLessThan(1e-12);
        }
      });

  for (const method of ['auto', 'ql'] as const)
    it(`gives orthonormal bases of repeated eigenvalues (${method})`, async () => {
      const spectrum = [5, 5, 5, 2, 2, 1, 0.5, 0.5, 0.5, 0.5, -1, -3, -3];
      const rng = new Rng(9, method);
      const a = withSpectrum(spectrum, rng);
      const { values, vectors } = await symmetricEigen(a, { method });
      checkEigen(a, values, vectors);
      expect(relativeError(values, Float64Array.from(spectrum))).toBeLessThan(1e-13);
      // the eigenspace of 5 is the same as by Jacobi
      expect(relativeError(projector(vectors, 0, 3), projector(jacobiEigen(a).vectors, 0, 3))).toBeLessThan(1e-10);
    });

  it('handles diagonal, zero and 1 x 1 matrices', async () => {
    const diagonal = matrix(4, 4, [3, 0, 0, 0, 0, -1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 7]);
    for (const method of ['auto', 'ql'] as const) {
      const d = await symmetricEigen(diagonal, { method });
      expect(Array.from(d.values)).toEqual([7, 3, 3, -1]);
      checkEigen(diagonal, d.values, d.vectors);
      const zero = await symmetricEigen(matrix(5, 5), { method });
      expect(Array.from(zero.values)).toEqual([0, 0, 0, 0, 0]);
      checkEigen(matrix(5, 5), zero.values, zero.vectors);
    }
    const one = await symmetricEigen(matrix(1, 1, [-2]));
    expect([Array.from(one.values), Array.from(one.vectors.data)]).toEqual([[-2], [1]]);
  });

  it('top k equals the first k of the full decomposition', async () => {
    const rng = new Rng(10);
    for (const n of [12, 70]) {
      const a = symmetric(n, rng);
      const full = await symmetricEigen(a, { method: 'ql' });
      for (const k of [1, 5, n]) {
        const top = await symmetricEigen(a, { top: k });
        expect([top.vectors.rows, top.vectors.cols]).toEqual([n, k]);
        expect(relativeError(top.values, full.values.subarray(0, k))).toBeLessThan(1e-13);
        // distinct eigenvalues: the same vectors (signs are normalized)
        const firstK = matrix(n, k);
        for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) firstK.data[i * k + j] = full.vectors.data[i * n + j];
        expect(relativeError(top.vectors, firstK)).toBeLessThan(1e-9);
        checkEigen(a, top.values, top.vectors);
      }
    }
  });

  it('refuses a bad top and a matrix with NaN', async () => {
    await expect(symmetricEigen(matrix(3, 3), { top: 4 })).rejects.toThrow('symmetricEigen: top must be an integer in 1..3, got 4');
    await expect(symmetricEigen(matrix(2, 2, [1, 0, Number.NaN, 1]))).rejects.toThrow('symmetricEigen: entry (1, 0) is NaN');
    await expect(symmetricEigen(matrix(2, 3))).rejects.toThrow('symmetricEigen: the matrix must be square, got 2 x 3');
  });
});

// ------------------------------------------------------------------------------------------ regression

interface Data {
  f: Matrix;
  y: Matrix;
  fh: Matrix;
  yh: Matrix;
}

/** Features with a constant last column; targets linear in them plus noise. */
function regressionData(rng: Rng, rows: number, held: number, n: number, m: number, noise = 0.5): Data {
  const w = random(n, m, rng);
  const make = (count: number) => {
    const f = random(count, n, rng);
    for (let i = 0; i < count; i++) f.data[i * n + n - 1] = 1;
    const y = multiply(f, w);
    for (let i = 0; i < y.data.length; i++) y.data[i] += noise * rng.normal() + 3;
    return { f, y };
  };
  const train = make(rows);
  const test = make(held);
  return { f: train.f, y: train.y, fh: test.f, yh: test.y };
}

function statistics(data: Data) {
  const gram = (x: Matrix, y: Matrix) => multiply(transpose(x), y);
  return {
    g: gram(data.f, data.f),
    h: gram(data.f, data.y),
    gHeld: gram(data.fh, data.fh),
    hHeld: gram(data.fh, data.yh),
    yyHeld: gram(data.yh, data.yh),
  };
}

/** ||Yh - Fh W||^2 from the data matrices */
function explicitError(fh: Matrix, yh: Matrix, w: Matrix): number {
  return frobenius2(subtract(yh, multiply(fh, w)));
}

function penalized(g: Matrix, lambda: number, unpenalized: number[]): Matrix {
  const a = matrix(g.rows, g.cols, g.data.slice());
  for (let i = 0; i < g.rows; i++) if (!unpenalized.includes(i)) a.data[i * g.cols + i] += lambda;
  return a;
}

describe('ridge', () => {
  for (const way of WAYS)
    it(`chooses by held-out errors that equal those of the data matrices (${way.name})`, async () => {
      await configureLinalg(way.settings);
      const rng = new Rng(11, way.name);
      const data = regressionData(rng, 40, 30, 12, 5, 2);
      const stats = statistics(data);
      const grid = [1e-4, 1e-2, 1, 10, 100];
      const result = await ridge(stats, { grid, unpenalized: [11] });
      const meanDiagonal = Array.from({ length: 11 }, (_, i) => stats.g.data[i * 12 + i]).reduce((s, x) => s + x, 0) / 11;
      const trace = explicitError(data.fh, data.yh, matrix(12, 5));
      expect(result.grid.map((p) => p.lambda)).toEqual(grid.map((x) => x * meanDiagonal));
      for (const point of result.grid) {
        const w = gaussSolve(penalized(stats.g, point.lambda, [11]), stats.h);
        expect(Math.abs(point.heldOutError - explicitError(data.fh, data.yh, w)) / trace).toBeLessThan(1e-10);
      }
      const best = result.grid.reduce((a, b) => (b.heldOutError <= a.heldOutError ? b : a));
      expect(result.lambda).toBe(best.lambda);
      expect(result.heldOutError).toBe(best.heldOutError);
      const direct = gaussSolve(penalized(stats.g, result.lambda, [11]), stats.h);
      expect(relativeError(result.w, direct)).toBeLessThan(1e-9);
      // with the trace of Yh^T Yh instead of the matrix: the same
      const traced = await ridge({ ...stats, yyHeld: trace }, { grid, unpenalized: [11] });
      expect(traced.lambda).toBe(result.lambda);
      expect(Math.abs(traced.heldOutError - result.heldOutError) / trace).toBeLessThan(1e-12);
    });

  it('does not penalize the constant feature', async () => {
    const data = regressionData(new Rng(12), 50, 10, 6, 3);
    const stats = statistics(data);
    const free = await ridge(stats, { grid: [1e6], unpenalized: [5] });
    const all = await ridge(stats, { grid: [1e6] });
    // a huge penalty leaves only the constant: the targets' training mean
    for (let j = 0; j < 3; j++) {
      let mean = 0;
      for (let i = 0; i < 50; i++) mean += data.y.data[i * 3 + j] / 50;
      expect(free.w.data[5 * 3 + j]).toBeCloseTo(mean, 3);
      expect(Math.abs(all.w.data[5 * 3 + j])).toBeLessThan(0.01);
    }
    expect(relativeError(free.w, gaussSolve(penalized(stats.g, free.lambda, [5]), stats.h))).toBeLessThan(1e-9);
  });

  it('on a projection of many targets: an unbiased estimate on the grid, the exact error and solve at the chosen penalty', async () => {
    const data = regressionData(new Rng(13), 60, 40, 8, 24, 3);
    const stats = statistics(data);
    const grid = [1e-3, 1e-1, 10];
    const exact = await ridge(stats, { grid, sketch: 24 });
    const sketched = await ridge(stats, { grid, sketch: 6, seed: 1 });
    expect(relativeError(sketched.w, gaussSolve(penalized(stats.g, sketched.lambda, []), stats.h))).toBeLessThan(1e-9);
    const trace = explicitError(data.fh, data.yh, matrix(8, 24));
    expect(Math.abs(sketched.heldOutError - explicitError(data.fh, data.yh, sketched.w)) / trace).toBeLessThan(1e-10);
    // averaged over seeds, the estimates approach the exact errors
    const sums = grid.map(() => 0);
    const seeds = 100;
    for (let seed = 0; seed < seeds; seed++) {
      const r = await ridge(stats, { grid, sketch: 6, seed });
      r.grid.forEach((p, i) => {
        sums[i] += p.heldOutError / seeds;
      });
    }
    sums.forEach((mean, i) => expect(Math.abs(mean - exact.grid[i].heldOutError) / exact.grid[i].heldOutError).toBeLessThan(0.1));
  });

  it('skips penalties that leave the system singular, and says so when none is left', async () => {
    const data = regressionData(new Rng(14), 30, 10, 5, 2);
    // feature 3 a copy of feature 1
    for (const f of [data.f, data.fh]) for (let i = 0; i < f.rows; i++) f.data[i * 5 + 3] = f.data[i * 5 + 1];
    const stats = statistics(data);
    const result = await ridge(stats, { grid: [0, 1e-2] });
    expect(result.grid[0].heldOutError).toBe(Infinity);
    expect(result.lambda).toBe(result.grid[1].lambda);
    const error = await ridge(stats, { grid: [0] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SingularMatrixError);
    expect((error as Error).message).toMatch(
      /^ridge: no penalty in the grid makes the system positive definite: g \+ lambda·I \(lambda 0\) is not positive definite: pivot 3 of 5 is \S+ \(its diagonal entry is \S+\); /,
    );
  });

  it('refuses statistics of mismatched sizes', async () => {
    const stats = statistics(regressionData(new Rng(15), 20, 10, 4, 3));
    await expect(ridge({ ...stats, h: matrix(3, 3) })).rejects.toThrow('ridge: h is 3 x 3, expected 4 rows (g is 4 x 4)');
    await expect(ridge({ ...stats, hHeld: matrix(4, 2) })).rejects.toThrow('ridge: hHeld is 4 x 2, expected 4 x 3');
    await expect(ridge({ ...stats, yyHeld: matrix(2, 2) })).rejects.toThrow('ridge: yyHeld is 2 x 2, expected 3 x 3');
    await expect(ridge(stats, { unpenalized: [4] })).rejects.toThrow('ridge: unpenalized feature 4 is not in 0..3');
    await expect(ridge(stats, { grid: [-1] })).rejects.toThrow('ridge: the grid must be non-negative finite numbers, got [-1]');
    const h = matrix(4, 3, stats.h.data.slice());
    h.data[5] = Number.NaN;
    await expect(ridge({ ...stats, h })).rejects.toThrow(new VcompileError('ridge: h[1, 2] is NaN (the statistics must be finite)'));
    await expect(ridge({ ...stats, yyHeld: Infinity })).rejects.toThrow('ridge: yyHeld is Infinity');
  });
});

describe('reducedRank', () => {
  for (const way of WAYS)
    it(`equals W V V^T with V from a Jacobi eigensolver, and its held-out error the data's (${way.name})`, async () => {
      await configureLinalg(way.settings);
      const rng = new Rng(16, way.name);
      for (const [n, m, rank] of [
        [7, 5, 2],
        [20, 30, 6],
      ]) {
        const data = regressionData(rng, 2 * n + m, 50, n, m);
        const stats = statistics(data);
        const w = gaussSolve(stats.g, stats.h);
        const { a, b, values, heldOutError: held } = await reducedRank(w, stats.g, rank, stats);
        expect([a.rows, a.cols, b.rows, b.cols]).toEqual([n, rank, rank, m]);
        const jacobi = jacobiEigen(multiply(transpose(w), multiply(stats.g, w)));
        const v = matrix(m, rank);
        for (let i = 0; i < m; i++) for (let j = 0; j < rank; j++) v.data[i * rank + j] = jacobi.vectors.data[i * m + j];
        const reference = multiply(multiply(w, v), transpose(v));
        expect(relativeError(multiply(a, b), reference)).toBeLessThan(1e-9);
        expect(relativeError(values, Float64Array.from(jacobi.values.slice(0, rank)))).toBeLessThan(1e-10);
        const trace = frobenius2(data.yh);
        expect(Math.abs(held! - explicitError(data.fh, data.yh, reference)) / trace).toBeLessThan(1e-10);
        expect(Math.abs((await heldOutError(reference, stats)) - held!) / trace).toBeLessThan(1e-10);
      }
    });

  it('fits the training data at least as well as truncating the full fit by its SVD (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 8 }),
        fc.integer({ min: 2, max: 7 }),
        fc.integer({ min: 0, max: 1e6 }),
        async (n, m, seed) => {
          const rng = new Rng(seed);
          const rank = 1 + rng.int(m - 1);
          const data = regressionData(rng, n + m + 5, 5, n, m, 1);
          const stats = statistics(data);
          const w = gaussSolve(stats.g, stats.h);
          const { a, b } = await reducedRank(w, stats.g, rank);
          const fitted = explicitError(data.f, data.y, multiply(a, b));
          // SVD truncation: W U U^T, U the top right singular vectors of W (eigenvectors of W^T W)
          const svd = jacobiEigen(multiply(transpose(w), w));
          const u = matrix(m, rank);
          for (let i = 0; i < m; i++) for (let j = 0; j < rank; j++) u.data[i * rank + j] = svd.vectors.data[i * m + j];
          const truncated = explicitError(data.f, data.y, multiply(multiply(w, u), transpose(u)));
          expect(fitted).toBeLessThanOrEqual(truncated * (1 + 1e-9) + 1e-9);
        },
      ),
      { numRuns: 30, seed: 17 },
    );
  });

  it('refuses a rank out of range and mismatched sizes', async () => {
    await expect(reducedRank(matrix(3, 2), matrix(3, 3), 3)).rejects.toThrow(
      'reducedRank: rank must be an integer in 1..2 (the number of targets), got 3',
    );
    await expect(reducedRank(matrix(4, 2), matrix(3, 3), 1)).rejects.toThrow('reducedRank: w is 4 x 2, expected 3 rows (g is 3 x 3)');
    await expect(reducedRank(matrix(3, 2, [0, 0, 0, Number.NEGATIVE_INFINITY, 0, 0]), matrix(3, 3), 1)).rejects.toThrow(
      'reducedRank: w[1, 1] is -Infinity (the statistics must be finite)',
    );
    await expect(
      heldOutError({ a: matrix(3, 2), b: matrix(1, 2) }, { gHeld: matrix(3, 3), hHeld: matrix(3, 2), yyHeld: 0 }),
    ).rejects.toThrow('heldOutError: A is 3 x 2 but B is 1 x 2');
  });
});

describe('determinism', () => {
  it('the same inputs give bit-identical outputs twice', async () => {
    const run = async () => {
      const data = regressionData(new Rng(18), 200, 50, 100, 40);
      const stats = statistics(data);
      const fit = await ridge(stats, { grid: [1e-3, 1e-1], sketch: 16 });
      const rr = await reducedRank(fit.w, stats.g, 12, stats);
      const eig = await symmetricEigen(stats.g, { top: 20 });
      return [fit.w.data, rr.a.data, rr.b.data, eig.values, eig.vectors.data, Float64Array.of(fit.heldOutError, rr.heldOutError!)];
    };
    const first = await run();
    const second = await run();
    first.forEach((x, i) =>
      expect(
        Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(second[i].buffer, second[i].byteOffset, second[i].byteLength)),
      ).toBe(true),
    );
  });
});
