// Numerical verification: run the original and the rewritten model on the same feeds and measure how far
// the rewritten model's outputs are from the original's (the reference).
//
// Per output, over the compared elements (a = rewritten, b = original):
//   max abs error   max |a - b|
//   mean abs error  mean |a - b|
//   relative error  ||a - b||2 / ||b||2   (0 when both are zero; Infinity when only b is)
//   cosine          a.b / (||a||2 ||b||2) (1 when both are zero, 0 when only one is)
// Padding: an output whose first two dims are declared with the same names as the two dims of a
// [batch, seq] mask input (e.g. [batch, seq, hidden] and attention_mask [batch, seq]), or are
// undeclared and have the mask's sizes, is compared only where that mask is non-zero. Positions where
// both sides are NaN, or the same infinity, count as equal; a NaN or infinity on one side only is a
// failure whatever the thresholds.
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { isFloatType, type Tensor } from '../ir/tensor.js';
import { DataType, type Dim, dataTypeName, isTensorType } from '../ir/types.js';
import { loadModel } from '../onnx/file.js';
import {
  bindDims,
  type DimBinding,
  describeInputs,
  dimKey,
  dimsOfFeeds,
  generateFeeds,
  type InputSpec,
  readFeedFolder,
  shapeOf,
} from '../runtime/feeds.js';
import { openSession, run, type Session, type SessionOptions } from '../runtime/session.js';

export interface Thresholds {
  /** fail when an output's max abs error exceeds this */
  maxError?: number;
  /** fail when an output's cosine similarity falls below this */
  minCosine?: number;
}

export interface VerifyOptions extends Thresholds {
  /** the grid of generated feeds (ignored with inputsDir) */
  batches?: readonly number[];
  seqs?: readonly number[];
  dims?: Readonly<Record<string, number>>;
  seed?: number;
  /** read one set of feeds from this folder instead of generating a grid */
  inputsDir?: string;
  session?: Omit<SessionOptions, 'extraOutputs'>;
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_GRID = { batches: [1, 3], seqs: [16, 37] } as const;

export interface Stats {
  /** elements compared (after masking) */
  compared: number;
  /** elements left out because the mask marks them as padding */
  excluded: number;
  maxAbs: number;
  meanAbs: number;
  relative: number;
  cosine: number;
  /** positions where exactly one side is NaN or infinite (or they are different infinities) */
  nonFinite: number;
}

export interface CaseOutput extends Partial<Stats> {
  name: string;
  shape: number[];
  /** why this output could not be compared in this case */
  error?: string;
}

export interface VerifyCase {
  /** null when the feeds came from files */
  batch: number | null;
  seq: number | null;
  /** every symbolic input dim's value */
  dims: Record<string, number>;
  outputs: CaseOutput[];
}

export interface OutputSummary extends Stats {
  name: string;
  /** the mask input that selected the compared positions, or null when every position counts */
  maskedBy: string | null;
  pass: boolean;
}

export interface VerifyReport {
  original: string;
  rewritten: string;
  ep: 'cpu' | 'cuda';
  seed: number;
  thresholds: { maxError: number | null; minCosine: number | null };
  cases: VerifyCase[];
  outputs: OutputSummary[];
  /** one line per violated check, worst case first per output */
  failures: string[];
  pass: boolean;
}

/** Run both models on the same feeds and compare every output of the original. */
export async function verifyModels(original: string, rewritten: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const model = loadModel(original);
  const specs = describeInputs(model, { allowUnshaped: options.inputsDir !== undefined });
  const outputDims = declaredOutputDims(model);
  const seed = options.seed ?? 0;
  const feedSets = plannedFeeds(specs, options, seed);
  const sessions: Session[] = [];
  try {
    const a = await openSession(original, options.session);
    sessions.push(a);
    const b = await openSession(rewritten, options.session);
    sessions.push(b);
    const missingInputs = b.inputNames.filter((name) => !specs.some((s) => s.name === name));
    if (missingInputs.length) {
      const failures = [`${rewritten} takes input ${missingInputs.join(', ')}, which ${original} does not`];
      return report(original, rewritten, a.ep, seed, options, [], [], failures);
    }
    const accumulators = new Map<string, Accumulator>();
    const failures: string[] = [];
    const cases: VerifyCase[] = [];
    for (const [index, set] of feedSets.entries()) {
      const where = set.batch === null ? 'on the given inputs' : `at batch ${set.batch}, seq ${set.seq}`;
      const expected = await runAt(a, set.feeds, original, where);
      const feedsB = Object.fromEntries(Object.entries(set.feeds).filter(([name]) => b.inputNames.includes(name)));
      const actual = await runAt(b, feedsB, rewritten, where);
      const outputs: CaseOutput[] = [];
      for (const name of a.outputNames) {
        const mask = maskFor(name, outputDims.get(name), expected[name], specs, set.feeds);
        const acc = accumulators.get(name) ?? new Accumulator(mask?.name ?? null);
        accumulators.set(name, acc);
        const entry = compareOutput(name, expected[name], actual[name], mask?.keep);
        outputs.push(entry);
        if (entry.error) failures.push(`${name}: ${entry.error} ${where}`);
        else acc.add(entry as CaseOutput & Stats, where);
      }
      cases.push({ batch: set.batch, seq: set.seq, dims: set.dims, outputs });
      options.onProgress?.(index + 1, feedSets.length);
    }
    const summaries = [...accumulators].map(([name, acc]) => acc.summary(name, options, failures));
    return report(original, rewritten, a.ep, seed, options, cases, summaries, failures);
  } finally {
    for (const s of sessions) await s.release();
  }
}

interface FeedSet {
  batch: number | null;
  seq: number | null;
  dims: Record<string, number>;
  feeds: Record<string, Tensor>;
}

/** The grid's feed sets, one per distinct set of input shapes (fixed-size models collapse the seq axis). */
function plannedFeeds(specs: InputSpec[], options: VerifyOptions, seed: number): FeedSet[] {
  if (options.inputsDir) {
    const feeds = readFeedFolder(options.inputsDir, specs);
    return [{ batch: null, seq: null, dims: Object.fromEntries(dimsOfFeeds(specs, feeds)), feeds }];
  }
  const sets: FeedSet[] = [];
  const seen = new Set<string>();
  for (const batch of options.batches ?? DEFAULT_GRID.batches) {
    for (const seq of options.seqs ?? DEFAULT_GRID.seqs) {
      const binding: DimBinding = { batch, seq, dims: options.dims };
      const values = bindDims(specs, binding);
      const key = JSON.stringify(specs.map((s) => shapeOf(s, values)));
      if (seen.has(key)) continue;
      seen.add(key);
      sets.push({ batch, seq, dims: Object.fromEntries(values), feeds: generateFeeds(specs, binding, seed) });
    }
  }
  return sets;
}

async function runAt(session: Session, feeds: Record<string, Tensor>, file: string, where: string): Promise<Record<string, Tensor>> {
  try {
    return await run(session, feeds);
  } catch (error) {
    if (error instanceof VcompileError) throw new VcompileError(`${file} ${where}: ${error.message}`);
    throw error;
  }
}

function declaredOutputDims(model: Model): Map<string, Dim[] | undefined> {
  return new Map(model.graph.outputs.map((v) => [v.name, isTensorType(v.type) ? v.type.shape : undefined]));
}

/**
 * The padding mask that applies to an output (see the rule at the top of this file) and, per element
 * of the output, whether it is compared.
 */
function maskFor(
  output: string,
  declared: Dim[] | undefined,
  reference: Tensor | undefined,
  specs: InputSpec[],
  feeds: Record<string, Tensor>,
): { name: string; keep: Uint8Array } | undefined {
  if (!reference || reference.dims.length < 2) return undefined;
  for (const spec of specs) {
    if (spec.role !== 'mask' || spec.dims.length !== 2) continue;
    const mask = feeds[spec.name];
    if (!mask || mask.dims[0] !== reference.dims[0] || mask.dims[1] !== reference.dims[1]) continue;
    if (!leadingDimsMatch(output, declared, spec)) continue;
    const inner = reference.dims.slice(2).reduce((x, y) => x * y, 1);
    const maskValues = mask.toFloat32();
    const keep = new Uint8Array(reference.size);
    for (let i = 0; i < keep.length; i++) keep[i] = maskValues[Math.floor(i / inner)] !== 0 ? 1 : 0;
    return { name: spec.name, keep };
  }
  return undefined;
}

function leadingDimsMatch(output: string, declared: Dim[] | undefined, mask: InputSpec): boolean {
  const undeclared = (d: Dim | undefined) => !d || (d.value === undefined && d.param === undefined);
  if (!declared || (undeclared(declared[0]) && undeclared(declared[1]))) return true;
  return [0, 1].every((axis) => {
    const d = declared[axis];
    const m = mask.dims[axis];
    if (d?.param !== undefined) return m.param === d.param;
    if (d?.value !== undefined) return m.value === d.value;
    return dimKey(output, axis, d ?? {}) === dimKey(mask.name, axis, m);
  });
}

/** Compare one output in one case; `keep` marks the elements that count. */
export function compareOutput(name: string, expected: Tensor | undefined, actual: Tensor | undefined, keep?: Uint8Array): CaseOutput {
  if (!expected) return { name, shape: [], error: 'the original model did not return it' };
  const shape = [...expected.dims];
  if (!actual) return { name, shape, error: 'the rewritten model has no such output' };
  if (actual.dataType !== expected.dataType)
    return { name, shape, error: `element type ${dataTypeName(actual.dataType)} instead of ${dataTypeName(expected.dataType)}` };
  if (actual.dims.length !== expected.dims.length || actual.dims.some((d, i) => d !== expected.dims[i])) {
    return { name, shape, error: `shape [${actual.dims.join(', ')}] instead of [${shape.join(', ')}]` };
  }
  if (expected.dataType === DataType.STRING) {
    return { name, shape, error: 'string outputs are not compared' };
  }
  return { name, shape, ...compareValues(numbers(expected), numbers(actual), keep) };
}

function numbers(t: Tensor): ArrayLike<number> {
  if (t.dataType === DataType.DOUBLE) return new Float64Array(new Uint8Array(t.bytes()).buffer);
  if (isFloatType(t.dataType)) return t.toFloat32();
  return t.toBigInts().map(Number);
}

/** The statistics of the header comment over the kept elements of b (reference) and a (candidate). */
export function compareValues(b: ArrayLike<number>, a: ArrayLike<number>, keep?: Uint8Array): Stats {
  const acc = { compared: 0, excluded: 0, nonFinite: 0, maxAbs: 0, sumAbs: 0, diff2: 0, a2: 0, b2: 0, ab: 0 };
  for (let i = 0; i < b.length; i++) {
    if (keep && !keep[i]) {
      acc.excluded++;
      continue;
    }
    acc.compared++;
    const x = a[i];
    const y = b[i];
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      if (!(Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y)))) acc.nonFinite++;
      continue;
    }
    const d = Math.abs(x - y);
    if (d > acc.maxAbs) acc.maxAbs = d;
    acc.sumAbs += d;
    acc.diff2 += d * d;
    acc.a2 += x * x;
    acc.b2 += y * y;
    acc.ab += x * y;
  }
  return {
    compared: acc.compared,
    excluded: acc.excluded,
    maxAbs: acc.maxAbs,
    meanAbs: acc.compared ? acc.sumAbs / acc.compared : 0,
    relative: acc.b2 > 0 ? Math.sqrt(acc.diff2 / acc.b2) : acc.diff2 > 0 ? Infinity : 0,
    cosine: acc.a2 > 0 && acc.b2 > 0 ? acc.ab / Math.sqrt(acc.a2 * acc.b2) : acc.a2 === 0 && acc.b2 === 0 ? 1 : 0,
    nonFinite: acc.nonFinite,
  };
}

/** An output's figures over all cases: max abs and relative error at their worst, cosine at its lowest, mean abs over all elements. */
class Accumulator {
  private compared = 0;
  private excluded = 0;
  private sumAbs = 0;
  private nonFinite = 0;
  private worst = { maxAbs: { value: 0, where: '' }, relative: { value: 0, where: '' }, cosine: { value: 1, where: '' } };

  constructor(readonly maskedBy: string | null) {}

  add(stats: Stats, where: string): void {
    this.compared += stats.compared;
    this.excluded += stats.excluded;
    this.sumAbs += stats.meanAbs * stats.compared;
    this.nonFinite += stats.nonFinite;
    if (stats.maxAbs > this.worst.maxAbs.value || !this.worst.maxAbs.where) this.worst.maxAbs = { value: stats.maxAbs, where };
    if (stats.relative > this.worst.relative.value || !this.worst.relative.where) this.worst.relative = { value: stats.relative, where };
    if (stats.cosine < this.worst.cosine.value || !this.worst.cosine.where) this.worst.cosine = { value: stats.cosine, where };
  }

  summary(name: string, thresholds: Thresholds, failures: string[]): OutputSummary {
    const stats: Stats = {
      compared: this.compared,
      excluded: this.excluded,
      maxAbs: this.worst.maxAbs.value,
      meanAbs: this.compared ? this.sumAbs / this.compared : 0,
      relative: this.worst.relative.value,
      cosine: this.worst.cosine.value,
      nonFinite: this.nonFinite,
    };
    const before = failures.length;
    if (this.nonFinite > 0)
      failures.push(
        `${name}: ${this.nonFinite} NaN or infinite value${this.nonFinite === 1 ? '' : 's'} where the original has ${this.nonFinite === 1 ? 'a different one' : 'different ones'}`,
      );
    if (thresholds.maxError !== undefined && stats.maxAbs > thresholds.maxError) {
      failures.push(`${name}: max abs error ${formatNumber(stats.maxAbs)} > ${thresholds.maxError} ${this.worst.maxAbs.where}`);
    }
    if (thresholds.minCosine !== undefined && stats.cosine < thresholds.minCosine) {
      failures.push(`${name}: cosine similarity ${formatNumber(stats.cosine)} < ${thresholds.minCosine} ${this.worst.cosine.where}`);
    }
    const pass = failures.length === before && !failures.some((f) => f.startsWith(`${name}: `));
    return { name, maskedBy: this.maskedBy, ...stats, pass };
  }
}

function report(
  original: string,
  rewritten: string,
  ep: 'cpu' | 'cuda',
  seed: number,
  options: VerifyOptions,
  cases: VerifyCase[],
  outputs: OutputSummary[],
  failures: string[],
): VerifyReport {
  return {
    original,
    rewritten,
    ep,
    seed,
    thresholds: { maxError: options.maxError ?? null, minCosine: options.minCosine ?? null },
    cases,
    outputs,
    failures,
    pass: failures.length === 0,
  };
}

export function formatNumber(x: number): string {
  if (x === 0) return '0';
  if (!Number.isFinite(x)) return String(x);
  const abs = Math.abs(x);
  return abs >= 1e-3 && abs < 1e4 ? String(Number(x.toPrecision(4))) : x.toExponential(2);
}

/** The report as text: one row per output, then the verdict. */
export function formatVerifyReport(r: VerifyReport): string {
  const grid =
    r.cases.length && r.cases[0].batch !== null
      ? `${r.cases.length} case${r.cases.length === 1 ? '' : 's'}: ${r.cases.map((c) => `b${c.batch}/s${c.seq}`).join(' ')}`
      : 'given inputs';
  const lines = [`verify ${r.rewritten} against ${r.original} (${r.ep}, seed ${r.seed}; ${grid})`];
  const header = ['output', 'max abs', 'mean abs', 'relative', 'cosine', 'compared', 'masked by', ''];
  const rows = r.outputs.map((o) => [
    o.name,
    formatNumber(o.maxAbs),
    formatNumber(o.meanAbs),
    formatNumber(o.relative),
    o.cosine.toFixed(6),
    `${o.compared}${o.excluded ? ` (${o.excluded} padding)` : ''}`,
    o.maskedBy ?? '-',
    o.pass ? 'ok' : 'FAIL',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  for (const row of [header, ...rows])
    lines.push(
      row
        .map((cell, i) => cell.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    );
  for (const f of r.failures) lines.push(`FAIL ${f}`);
  const limits = [
    r.thresholds.maxError !== null ? `max abs error <= ${r.thresholds.maxError}` : '',
    r.thresholds.minCosine !== null ? `cosine >= ${r.thresholds.minCosine}` : '',
  ]
    .filter(Boolean)
    .join(', ');
  lines.push(
    r.pass ? (limits ? `PASS (${limits})` : 'report only (no --max-error or --min-cosine given)') : `FAILED${limits ? ` (${limits})` : ''}`,
  );
  return lines.join('\n');
}

/** One line for stderr: the first failure and how many more. */
export function failureLine(r: VerifyReport): string {
  const more = r.failures.length > 1 ? ` (and ${r.failures.length - 1} more)` : '';
  return `verification failed: ${r.failures[0] ?? 'unknown'}${more}`;
}
