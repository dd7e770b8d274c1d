// Dense float64 linear algebra (src/decide/linalg.ts) at the sizes of the closed-form plugin fits: a
// hidden size d = 768 gives n = 2d + 1 = 1537 features and m = d targets. Each operation runs on
// - vcompile: the default, small products in JavaScript and large ones in onnxruntime (MLAS DGEMM);
// - vcompile, JavaScript only (`configureLinalg({ ortMinVolume: Infinity })`): the same blocked algorithms,
//   every product in the JavaScript kernel;
// - plain JavaScript: the textbook loops (row-oriented Cholesky, substitution row by row, an i-k-j product);
// - with --libraries, the npm packages that could replace it, where installed
//   (`npm install --no-save ml-matrix @stdlib/blas eigen emlapack`): ml-matrix (JAMA's algorithms in
//   JavaScript), @stdlib/blas's dgemm (JavaScript), eigen (Eigen compiled to WebAssembly), emlapack (CLAPACK
//   compiled with emscripten). Each library runs once (they take up to minutes); a failure is reported.
// Every result is checked (a relative residual); one untimed warm-up round, then the repetitions, interleaved.
//
//   npm run bench:linalg [-- --n 1537 --m 768 --reps 3 --threads T --libraries --json FILE]
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import {
  cholesky,
  choleskySolve,
  configureLinalg,
  DEFAULT_RIDGE_GRID,
  gemm,
  type LinalgSettings,
  type Matrix,
  matrix,
  productCounts,
  reducedRank,
  releaseLinalg,
  ridge,
  symmetricEigen,
} from '../src/decide/linalg.js';
import { Rng } from '../src/random.js';

interface Options {
  n: number;
  m: number;
  rank: number;
  reps: number;
  threads?: number;
  libraries: boolean;
  json?: string;
}

interface Contender {
  op: string;
  name: string;
  /** runs once, even with --reps (the slow libraries) */
  once?: boolean;
  /** runs once untimed first (vcompile: sessions open, the JIT compiles) */
  warmup?: boolean;
  settings?: LinalgSettings;
  /** untimed work before the first run */
  prepare?: () => Promise<void>;
  /** the work (timed); returns a note, or the check of its result (a relative residual, run untimed) */
  run: () => Promise<string | Check>;
}

type Check = () => Promise<number | string>;

interface Row {
  op: string;
  name: string;
  samplesMs: number[];
  cpuMs: number[];
  residual?: number;
  note?: string;
  error?: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      n: { type: 'string', default: '1537' },
      m: { type: 'string', default: '768' },
      rank: { type: 'string', default: '64' },
      reps: { type: 'string', default: '3' },
      threads: { type: 'string' },
      libraries: { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  });
  return {
    n: Number(values.n),
    m: Number(values.m),
    rank: Number(values.rank),
    reps: Number(values.reps),
    threads: values.threads === undefined ? undefined : Number(values.threads),
    libraries: values.libraries ?? false,
    json: values.json,
  };
}

// ------------------------------------------------------------------------------------------ problems

function random(rows: number, cols: number, rng: Rng): Matrix {
  return matrix(
    rows,
    cols,
    Float64Array.from({ length: rows * cols }, () => rng.normal()),
  );
}

function symmetrize(a: Matrix): Matrix {
  const n = a.rows;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < i; j++) {
      const s = 0.5 * (a.data[i * n + j] + a.data[j * n + i]);
      a.data[i * n + j] = s;
      a.data[j * n + i] = s;
    }
  return a;
}

function maxAbs(x: Float64Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

function maxAbsDiff(x: Float64Array, y: Float64Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

/** The problems: a Gram matrix G (n x n, condition ~1e3), right-hand sides B (n x m), S = G[0:m, 0:m]. */
async function problems(options: Options) {
  const { n, m } = options;
  const rng = new Rng(1, 'bench-linalg');
  const f = random(n + 256, n, rng);
  const g = symmetrize(await gemm(f, f, { transA: true }));
  for (let i = 0; i < n * n; i++) g.data[i] /= n + 256;
  const b = random(n, m, rng);
  const s = matrix(m, m);
  for (let i = 0; i < m; i++) s.data.set(g.data.subarray(i * n, i * n + m), i * m);
  // statistics of a fit: N samples of n features (the last the constant), m targets linear in them plus noise
  const samples = 2 * n + 512;
  const x = random(samples, n, rng);
  for (let i = 0; i < samples; i++) x.data[i * n + n - 1] = 1;
  const y = await gemm(x, random(n, m, rng));
  for (let i = 0; i < y.data.length; i++) y.data[i] += 4 * rng.normal();
  const train = samples - 512;
  const split = (a: Matrix, from: number, to: number) => matrix(to - from, a.cols, a.data.slice(from * a.cols, to * a.cols));
  const [xt, yt, xh, yh] = [split(x, 0, train), split(y, 0, train), split(x, train, samples), split(y, train, samples)];
  const stats = {
    g: symmetrize(await gemm(xt, xt, { transA: true })),
    h: await gemm(xt, yt, { transA: true }),
    gHeld: symmetrize(await gemm(xh, xh, { transA: true })),
    hHeld: await gemm(xh, yh, { transA: true }),
    yyHeld: yh.data.reduce((sum, v) => sum + v * v, 0),
  };
  // the product the gemm contenders are checked against: onnxruntime's
  await configureLinalg({ ortMinVolume: 0, threads: options.threads });
  const gb = await gemm(g, b);
  await configureLinalg({ threads: options.threads });
  return { g, b, s, stats, gb };
}

type Problems = Awaited<ReturnType<typeof problems>>;

// ------------------------------------------------------------------------------------------ residuals

/** max |C - G B| / max |G B|, G B from onnxruntime */
function productResidual(p: Problems, c: Matrix | Float64Array): number {
  return maxAbsDiff(c instanceof Float64Array ? c : c.data, p.gb.data) / maxAbs(p.gb.data);
}

async function choleskyResidual(a: Matrix, l: Matrix): Promise<number> {
  return maxAbsDiff((await gemm(l, l, { transB: true })).data, a.data) / maxAbs(a.data);
}

async function solveResidual(a: Matrix, x: Matrix, b: Matrix): Promise<number> {
  return maxAbsDiff((await gemm(a, x)).data, b.data) / maxAbs(b.data);
}

/** max |A V - V diag(values)| / |values[0]| and max |V^T V - I|, the larger */
async function eigenResidual(a: Matrix, values: Float64Array, vectors: Matrix): Promise<number> {
  const k = values.length;
  const av = await gemm(a, vectors);
  let r = 0;
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < k; j++) r = Math.max(r, Math.abs(av.data[i * k + j] - vectors.data[i * k + j] * values[j]));
  const vtv = await gemm(vectors, vectors, { transA: true });
  let o = 0;
  for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) o = Math.max(o, Math.abs(vtv.data[i * k + j] - (i === j ? 1 : 0)));
  return Math.max(r / Math.abs(values[0]), o);
}

// ------------------------------------------------------------------------------------------ plain JavaScript

function plainCholesky(a: Matrix): Matrix {
  const n = a.rows;
  const A = a.data;
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j];
    }
  return matrix(n, n, L);
}

function plainSolve(l: Matrix, b: Matrix): Matrix {
  const n = l.rows;
  const m = b.cols;
  const L = l.data;
  const Y = b.data.slice();
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) for (let c = 0; c < m; c++) Y[i * m + c] -= L[i * n + j] * Y[j * m + c];
    for (let c = 0; c < m; c++) Y[i * m + c] /= L[i * n + i];
  }
  for (let i = n - 1; i >= 0; i--) {
    for (let j = i + 1; j < n; j++) for (let c = 0; c < m; c++) Y[i * m + c] -= L[j * n + i] * Y[j * m + c];
    for (let c = 0; c < m; c++) Y[i * m + c] /= L[i * n + i];
  }
  return matrix(n, m, Y);
}

function plainProduct(a: Matrix, b: Matrix): Matrix {
  const c = new Float64Array(a.rows * b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let p = 0; p < a.cols; p++) {
      const x = a.data[i * a.cols + p];
      for (let j = 0; j < b.cols; j++) c[i * b.cols + j] += x * b.data[p * b.cols + j];
    }
  return matrix(a.rows, b.cols, c);
}

// ------------------------------------------------------------------------------------------ contenders

function ours(p: Problems, options: Options, name: string, settings: LinalgSettings): Contender[] {
  const { n, m } = options;
  const top = Math.min(256, m);
  let factor: Matrix | undefined;
  const l = async () => (factor ??= await cholesky(p.g));
  const contenders: Contender[] = [
    {
      op: `cholesky n=${n}`,
      name,
      settings,
      run: async () => {
        const l = await cholesky(p.g);
        return () => choleskyResidual(p.g, l);
      },
    },
    {
      op: `choleskySolve n=${n}, ${m} right-hand sides`,
      name,
      settings,
      run: async () => {
        const x = await choleskySolve(await l(), p.b);
        return () => solveResidual(p.g, x, p.b);
      },
    },
    {
      op: `symmetricEigen n=${m} (all)`,
      name,
      settings,
      run: async () => {
        const e = await symmetricEigen(p.s);
        return () => eigenResidual(p.s, e.values, e.vectors);
      },
    },
    {
      op: `symmetricEigen n=${m}, top ${top}`,
      name,
      settings,
      run: async () => {
        const e = await symmetricEigen(p.s, { top });
        return () => eigenResidual(p.s, e.values, e.vectors);
      },
    },
    {
      op: `gemm ${n}x${n} @ ${n}x${m}`,
      name,
      settings,
      run: async () => {
        const c = await gemm(p.g, p.b);
        return async () => productResidual(p, c);
      },
    },
  ];
  return contenders.map((c) => ({ ...c, warmup: true }));
}

function fits(p: Problems, options: Options): Contender[] {
  const n = options.n;
  const ratio = (error: number) => (error / (p.stats.yyHeld as number)).toFixed(4);
  let w: Matrix | undefined;
  return [
    {
      op: `ridge n=${n}, m=${options.m}, the default grid (${DEFAULT_RIDGE_GRID.length} penalties)`,
      name: 'vcompile',
      warmup: true,
      run: async () => {
        const r = await ridge(p.stats, { unpenalized: [n - 1] });
        return `lambda ${r.lambda.toExponential(2)}; held-out error / tr(Yh^T Yh) ${ratio(r.heldOutError)}`;
      },
    },
    {
      op: `reducedRank n=${n}, m=${options.m}, rank ${options.rank}`,
      name: 'vcompile',
      warmup: true,
      prepare: async () => {
        w = (await ridge(p.stats, { unpenalized: [n - 1] })).w;
      },
      run: async () => {
        const r = await reducedRank(w!, p.stats.g, options.rank, p.stats);
        return `held-out error / tr(Yh^T Yh) ${ratio(r.heldOutError!)}`;
      },
    },
  ];
}

function plain(p: Problems, options: Options): Contender[] {
  const { n, m } = options;
  const name = 'plain JavaScript';
  let factor: Matrix | undefined;
  return [
    {
      op: `cholesky n=${n}`,
      name,
      run: async () => {
        const l = plainCholesky(p.g);
        factor = l;
        return () => choleskyResidual(p.g, l);
      },
    },
    {
      op: `choleskySolve n=${n}, ${m} right-hand sides`,
      name,
      prepare: async () => {
        factor ??= plainCholesky(p.g);
      },
      run: async () => {
        const x = plainSolve(factor!, p.b);
        return () => solveResidual(p.g, x, p.b);
      },
    },
    {
      op: `gemm ${n}x${n} @ ${n}x${m}`,
      name,
      run: async () => {
        const c = plainProduct(p.g, p.b);
        return async () => productResidual(p, c);
      },
    },
  ];
}

interface MlMatrix {
  rows: number;
  columns: number;
  to1DArray(): number[];
  mmul(other: MlMatrix): MlMatrix;
}
interface MlMatrixModule {
  Matrix: { from1DArray(rows: number, cols: number, data: ArrayLike<number>): MlMatrix };
  CholeskyDecomposition: new (a: MlMatrix) => { lowerTriangularMatrix: MlMatrix; solve(b: MlMatrix): MlMatrix };
  EigenvalueDecomposition: new (
    a: MlMatrix,
    options: { assumeSymmetric: boolean },
  ) => { realEigenvalues: number[]; eigenvectorMatrix: MlMatrix };
}

async function optional<T>(name: string): Promise<T | undefined> {
  try {
    return (await import(name)) as T;
  } catch {
    return undefined;
  }
}

async function libraries(p: Problems, options: Options): Promise<{ contenders: Contender[]; missing: string[] }> {
  const { n, m } = options;
  const contenders: Contender[] = [];
  const missing: string[] = [];
  const toMatrix = (x: MlMatrix) => matrix(x.rows, x.columns, Float64Array.from(x.to1DArray()));
  const ml = await optional<MlMatrixModule>('ml-matrix');
  if (!ml) missing.push('ml-matrix');
  else {
    const name = 'ml-matrix';
    const from = (a: Matrix) => ml.Matrix.from1DArray(a.rows, a.cols, a.data);
    const g = from(p.g);
    contenders.push(
      {
        op: `cholesky n=${n}`,
        name,
        once: true,
        run: async () => {
          const l = new ml.CholeskyDecomposition(g).lowerTriangularMatrix;
          return () => choleskyResidual(p.g, toMatrix(l));
        },
      },
      {
        op: `choleskySolve n=${n}, ${m} right-hand sides`,
        name: `${name} (factor included)`,
        once: true,
        run: async () => {
          const x = new ml.CholeskyDecomposition(g).solve(from(p.b));
          return () => solveResidual(p.g, toMatrix(x), p.b);
        },
      },
      {
        op: `symmetricEigen n=${m} (all)`,
        name,
        once: true,
        run: async () => {
          const e = new ml.EigenvalueDecomposition(from(p.s), { assumeSymmetric: true });
          return () => {
            // ascending: reversed to largest first, with the columns
            const order = e.realEigenvalues.map((_, i) => i).reverse();
            const v = toMatrix(e.eigenvectorMatrix);
            const sorted = matrix(m, m);
            for (let i = 0; i < m; i++) order.forEach((from, to) => (sorted.data[i * m + to] = v.data[i * m + from]));
            return eigenResidual(
              p.s,
              Float64Array.from(order, (i) => e.realEigenvalues[i]),
              sorted,
            );
          };
        },
      },
      {
        op: `gemm ${n}x${n} @ ${n}x${m}`,
        name,
        once: true,
        run: async () => {
          const c = g.mmul(from(p.b));
          return async () => productResidual(p, toMatrix(c));
        },
      },
    );
  }
  type Dgemm = (...args: (string | number | Float64Array)[]) => void;
  const stdlib = requireOptional<Dgemm>('@stdlib/blas/base/dgemm');
  if (!stdlib) missing.push('@stdlib/blas');
  else
    contenders.push({
      op: `gemm ${n}x${n} @ ${n}x${m}`,
      name: '@stdlib/blas dgemm',
      once: true,
      run: async () => {
        const c = new Float64Array(n * m);
        stdlib('row-major', 'no-transpose', 'no-transpose', n, m, n, 1, p.g.data, n, p.b.data, m, 0, c, m);
        return async () => productResidual(p, c);
      },
    });
  interface EigenJsMatrix {
    set(i: number, j: number, x: number): void;
    matMul(b: EigenJsMatrix): EigenJsMatrix;
  }
  type EigenJs = {
    ready: Promise<void>;
    Matrix: new (rows: number, cols: number) => EigenJsMatrix;
    Decompositions: { cholesky(a: EigenJsMatrix): unknown };
  };
  const eigenJs = (await optional<{ default: EigenJs }>('eigen'))?.default;
  if (!eigenJs) missing.push('eigen');
  else {
    const load = (a: Matrix) => {
      const x = new eigenJs.Matrix(a.rows, a.cols);
      for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) x.set(i, j, a.data[i * a.cols + j]);
      return x;
    };
    contenders.push(
      {
        op: `cholesky n=${n}`,
        name: 'eigen (WebAssembly)',
        once: true,
        run: async () => {
          await eigenJs.ready;
          eigenJs.Decompositions.cholesky(load(p.g));
          return 'ran (L not read back)';
        },
      },
      {
        op: `gemm ${n}x${n} @ ${n}x${m}`,
        name: 'eigen (WebAssembly)',
        once: true,
        run: async () => {
          await eigenJs.ready;
          load(p.g).matMul(load(p.b));
          return 'ran (C not read back)';
        },
      },
    );
  }
  const emlapack = loadEmlapack();
  if (!emlapack) missing.push('emlapack');
  else
    contenders.push({
      op: `cholesky n=${n}`,
      name: 'emlapack dpotrf (asm.js)',
      once: true,
      run: async () => {
        const em = await emlapack;
        const dpotrf = em.cwrap('dpotrf_', null, ['number', 'number', 'number', 'number', 'number']);
        const at = [em._malloc(1), em._malloc(4), em._malloc(n * n * 8), em._malloc(4), em._malloc(4)];
        if (at.some((x) => x === 0))
          throw new Error(`its heap (${em.HEAPF64.buffer.byteLength / 2 ** 20} MiB, fixed) cannot hold an ${n} x ${n} matrix`);
        em.setValue(at[0], 'U'.charCodeAt(0), 'i8');
        em.setValue(at[1], n, 'i32');
        em.setValue(at[3], n, 'i32');
        new Float64Array(em.HEAPF64.buffer, at[2], n * n).set(p.g.data);
        dpotrf(...at);
        // column-major upper = row-major lower
        const l = matrix(n, n, new Float64Array(em.HEAPF64.buffer, at[2], n * n).slice());
        for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) l.data[i * n + j] = 0;
        return () => choleskyResidual(p.g, l);
      },
    });
  return { contenders, missing };
}

interface Emlapack {
  cwrap(name: string, ret: null, args: string[]): (...args: number[]) => void;
  _malloc(bytes: number): number;
  setValue(at: number, value: number, type: string): void;
  HEAPF64: Float64Array;
  onRuntimeInitialized?: () => void;
  calledRun?: boolean;
}

function requireOptional<T>(name: string): T | undefined {
  try {
    return createRequire(import.meta.url)(name) as T;
  } catch {
    return undefined;
  }
}

function loadEmlapack(): Promise<Emlapack> | undefined {
  const em = requireOptional<Emlapack>('emlapack');
  if (!em) return undefined;
  return em.calledRun ? Promise.resolve(em) : new Promise((resolve) => (em.onRuntimeInitialized = () => resolve(em)));
}

// ------------------------------------------------------------------------------------------ main

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : 0.5 * (s[s.length / 2 - 1] + s[s.length / 2]);
}

async function main(): Promise<void> {
  const options = parseOptions();
  const loadBefore = os.loadavg()[0];
  await configureLinalg({ threads: options.threads });
  process.stderr.write(`building the problems (n ${options.n}, m ${options.m})...\n`);
  const p = await problems(options);
  const contenders: Contender[] = [
    ...ours(p, options, 'vcompile (JS + onnxruntime)', { threads: options.threads }),
    ...ours(p, options, 'vcompile, JavaScript only', { ortMinVolume: Infinity, threads: options.threads }),
    ...fits(p, options),
    ...plain(p, options),
  ];
  let missing: string[] = [];
  if (options.libraries) {
    const found = await libraries(p, options);
    contenders.push(...found.contenders);
    missing = found.missing;
  }
  const rows = new Map<Contender, Row>(contenders.map((c) => [c, { op: c.op, name: c.name, samplesMs: [], cpuMs: [] }]));
  process.stderr.write('warm-up round...\n');
  for (const c of contenders) {
    await configureLinalg(c.settings ?? { threads: options.threads });
    await c.prepare?.();
    if (c.warmup) await c.run();
  }
  for (let rep = 0; rep < options.reps; rep++)
    for (const c of contenders) {
      const row = rows.get(c)!;
      if ((c.once && rep > 0) || row.error) continue;
      await configureLinalg(c.settings ?? { threads: options.threads });
      const cpu = process.cpuUsage();
      const start = performance.now();
      try {
        const outcome = await c.run();
        row.samplesMs.push(performance.now() - start);
        const used = process.cpuUsage(cpu);
        row.cpuMs.push((used.user + used.system) / 1000);
        await configureLinalg({ threads: options.threads });
        const check = typeof outcome === 'string' ? outcome : await outcome();
        if (typeof check === 'number') row.residual = check;
        else row.note = check;
      } catch (error) {
        const text = (error instanceof Error ? error.message : String(error)).split('\n')[0];
        row.error = `failed: ${text.length > 100 ? `${text.slice(0, 100)}...` : text}`;
      }
      process.stderr.write(`${c.op} | ${c.name}: ${row.error ?? `${row.samplesMs.at(-1)!.toFixed(0)} ms`}\n`);
    }
  await releaseLinalg();
  const loadAfter = os.loadavg()[0];
  console.log(
    `n ${options.n}, m ${options.m}, ${options.reps} interleaved repetitions; ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ` +
      `onnxruntime threads ${options.threads ?? 'default'}; load average (1 min) ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after; ` +
      `products run: ${JSON.stringify(productCounts())}`,
  );
  if (missing.length)
    console.log(`not installed (skipped): ${missing.join(', ')}; \`npm install --no-save ${missing.join(' ')}\` adds them`);
  console.log('');
  console.log('| operation | contender | median ms | min ms | CPU ms (all threads) | check |');
  console.log('|---|---|---|---|---|---|');
  for (const row of rows.values()) {
    const check = row.error ?? (row.residual !== undefined ? `residual ${row.residual.toExponential(1)}` : (row.note ?? ''));
    const ms = row.samplesMs;
    console.log(
      `| ${row.op} | ${row.name} | ${ms.length ? median(ms).toFixed(0) : '-'} | ${ms.length ? Math.min(...ms).toFixed(0) : '-'} | ${row.cpuMs.length ? median(row.cpuMs).toFixed(0) : '-'} | ${check} |`,
    );
  }
  if (options.json)
    fs.writeFileSync(options.json, `${JSON.stringify({ options, loadBefore, loadAfter, rows: [...rows.values()] }, null, 2)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
