// Side-by-side latency of several models in one process: every model gets the same feeds, runs are
// interleaved (A B A B ...) after warm-up so drift on the machine (frequency, other load) hits all
// models alike, and the arithmetic (MACs) each model needs is reported next to its measured time.
import type * as ort from 'onnxruntime-node';
import { macsAt } from '../analysis/macs.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Tensor } from '../ir/tensor.js';
import { loadModel } from '../onnx/file.js';
import { RATIO_INPUT, ratioTensor, switchableInfo, withFeedableRatio } from '../runtime/adaptive.js';
import { bindDims, checkDimNames, type DimBinding, describeInputs, generateFeeds, type InputSpec, shapeOf } from '../runtime/feeds.js';
import { openSession, prepareFeeds, runPrepared, type Session, type SessionOptions } from '../runtime/session.js';

export interface BenchOptions {
  batches: readonly number[];
  seqs: readonly number[];
  dims?: Readonly<Record<string, number>>;
  seed?: number;
  /** untimed runs per model before each grid point's timed runs */
  warmup: number;
  /** timed runs per model per grid point */
  runs: number;
  session?: Omit<SessionOptions, 'extraOutputs'>;
  /** time each of these ratios of a switchable model (one with a vcompile_ratio input) as its own entry */
  ratios?: readonly number[];
  onProgress?: (done: number, total: number) => void;
}

export interface BenchModel {
  file: string;
  /** the file, with `@k=R` for a ratio of a switchable model */
  label: string;
  /** the vcompile_ratio fed, for a switchable model timed per ratio */
  ratio: number | null;
  ep: 'cpu' | 'cuda';
  /** seconds to create the ORT session */
  loadSeconds: number;
  /** MiB; see MEMORY_NOTE */
  memoryMiB: number | null;
}

export interface BenchResult {
  /** index into `models` */
  model: number;
  medianMs: number;
  p90Ms: number;
  meanMs: number;
  minMs: number;
  /** sequences (batch rows) per second at the median latency */
  throughput: number;
  /** the first model's median over this model's median */
  speedup: number;
  /** whole-graph MACs at this point, or null when shape inference could not count them */
  macs: number | null;
  /** the first model's MACs over this model's: the speed-up the arithmetic predicts */
  idealSpeedup: number | null;
  samplesMs: number[];
}

export interface BenchPoint {
  batch: number;
  seq: number;
  /** every symbolic input dim's value at this point (of the first model) */
  dims: Record<string, number>;
  results: BenchResult[];
}

export interface BenchReport {
  models: BenchModel[];
  ep: 'cpu' | 'cuda';
  threads: number | null;
  /** whether ORT's idle threads spin (off unless --spin: see SessionOptions.spinning) */
  spinning: boolean;
  warmup: number;
  runs: number;
  seed: number;
  memoryNote: string;
  points: BenchPoint[];
  notes: string[];
}

export const MEMORY_NOTE =
  'memory: peak resident set size while the session is created and warmed up at the largest batch x seq, ' +
  'minus the resident size just before (Linux getrusage maxrss; when that window did not raise the ' +
  "process's peak, the resident size after warm-up is used, a lower bound). Sessions are created one " +
  'after another, so each figure is that model alone: weights, ORT arena and activations.';

interface Plan {
  file: string;
  label: string;
  ratio: number | null;
  specs: InputSpec[];
  /** MACs per grid point, in grid order */
  macs: (number | null)[];
  unknownMacs: string[];
}

/** Time `files` side by side at every batch x seq of the grid. */
export async function benchModels(files: readonly string[], options: BenchOptions): Promise<BenchReport> {
  const grid = options.batches.flatMap((batch) => options.seqs.map((seq) => ({ batch, seq })));
  const seed = options.seed ?? 0;
  const plans = files.flatMap((file) => plan(file, grid, options));
  if (options.ratios && plans.every((p) => p.ratio === null))
    throw new VcompileError(
      msg`${option('ratios', options.ratios.join(','))}: ${files.length === 1 ? `${files[0]} is not a switchable model` : 'none of the models is switchable'} (no ${RATIO_INPUT} input: compile with ${option('switchable')})`,
    );
  checkDimNames(
    plans.flatMap((p) => p.specs),
    options.dims,
    files,
  );
  const notes = [
    ...new Set(
      plans
        .filter((p) => p.unknownMacs.length)
        .map(
          (p) =>
            `${p.file}: MACs unknown, shapes not inferred for ${p.unknownMacs.slice(0, 3).join(', ')}${p.unknownMacs.length > 3 ? ', ...' : ''}`,
        ),
    ),
  ];
  const total = files.length * grid.length * (options.warmup + options.runs) + files.length;
  let done = 0;
  const tick = () => options.onProgress?.(++done, total);
  const sessions: Session[] = [];
  const sessionOptions: SessionOptions = { ...options.session, spinning: options.session?.spinning ?? false };
  try {
    const largest = grid.reduce((a, b) => (b.batch * b.seq > a.batch * a.seq ? b : a));
    const models: BenchModel[] = [];
    for (const [i, p] of plans.entries()) {
      // The ratios of one switchable file share its session: switching is a fed value, not a reload.
      const shared = plans.findIndex((q) => q.file === p.file);
      const measured =
        shared < i
          ? { session: sessions[shared], model: { ...models[shared], label: p.label, ratio: p.ratio } }
          : await openMeasured(p, largest, { ...options, session: sessionOptions }, seed);
      sessions.push(measured.session);
      models.push(measured.model);
      tick();
    }
    const points: BenchPoint[] = [];
    for (const [index, at] of grid.entries()) {
      const feeds = plans.map((p) => prepareFeeds(feedsFor(p, { ...at, dims: options.dims }, seed)));
      const samples = await interleaved(sessions, feeds, options, tick);
      const dims = Object.fromEntries(bindDims(plans[0].specs, { ...at, dims: options.dims }));
      points.push({ ...at, dims, results: summarize(samples, plans, index, at.batch) });
    }
    return {
      models,
      ep: sessions[0].ep,
      threads: options.session?.threads ?? null,
      spinning: sessionOptions.spinning !== false,
      warmup: options.warmup,
      runs: options.runs,
      seed,
      memoryNote: MEMORY_NOTE,
      points,
      notes,
    };
  } finally {
    for (const s of new Set(sessions)) await s.release();
  }
}

/**
 * Inputs and MACs per grid point, one plan per ratio for a switchable model timed with `ratios`; the IR
 * model is dropped afterwards so it does not weigh on the timings.
 */
function plan(file: string, grid: { batch: number; seq: number }[], options: BenchOptions): Plan[] {
  const model = loadModel(file);
  const specs = describeInputs(model);
  const unknown = new Set<string>();
  const macs = grid.map((at) => {
    const values = bindDims(specs, { ...at, dims: options.dims });
    const count = macsAt(model, new Map(specs.map((s) => [s.name, shapeOf(s, values)])));
    for (const n of count.unknown) unknown.add(n);
    return count.macs;
  });
  const base = { file, specs, macs, unknownMacs: [...unknown] };
  const switchable = model.getMetadata('vcompile.switchable');
  if (!options.ratios || !switchable) return [{ ...base, label: file, ratio: null }];
  const offered = switchableInfo(model).ratios;
  const missing = options.ratios.find((r) => !offered.includes(r));
  if (missing !== undefined)
    throw new VcompileError(msg`${file}: ${option('ratios', missing)} is not offered (the model has ${offered.join(', ')})`);
  // Branches sit in If subgraphs, whose MACs shape inference does not count.
  return options.ratios.map((ratio) => ({ ...base, macs: grid.map(() => null), label: `${file} @k=${ratio}`, ratio }));
}

function feedsFor(p: Plan, binding: DimBinding, seed: number): Record<string, Tensor> {
  const feeds = generateFeeds(p.specs, binding, seed);
  return p.ratio === null ? feeds : { ...feeds, [RATIO_INPUT]: ratioTensor(p.ratio) };
}

async function openMeasured(
  p: Plan,
  largest: { batch: number; seq: number },
  options: BenchOptions,
  seed: number,
): Promise<{ session: Session; model: BenchModel }> {
  const rssBefore = process.memoryUsage.rss();
  const peakBefore = process.resourceUsage().maxRSS * 1024;
  const start = process.hrtime.bigint();
  const session = await openSession(p.ratio === null ? p.file : withFeedableRatio(loadModel(p.file)), options.session);
  const loadSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  await runPrepared(session, prepareFeeds(feedsFor(p, { ...largest, dims: options.dims }, seed)));
  const rssAfter = process.memoryUsage.rss();
  const peakAfter = process.resourceUsage().maxRSS * 1024;
  const peak = peakAfter > peakBefore ? peakAfter : rssAfter;
  const memoryMiB = process.platform === 'linux' ? Math.max(0, peak - rssBefore) / 2 ** 20 : null;
  return { session, model: { file: p.file, label: p.label, ratio: p.ratio, ep: session.ep, loadSeconds, memoryMiB } };
}

/** Warm-up, then the timed runs, alternating between the models; returns milliseconds per model. */
async function interleaved(
  sessions: Session[],
  feeds: Record<string, ort.Tensor>[],
  options: BenchOptions,
  tick: () => void,
): Promise<number[][]> {
  for (let w = 0; w < options.warmup; w++) {
    for (const [m, s] of sessions.entries()) {
      await runPrepared(s, feeds[m]);
      tick();
    }
  }
  const samples = sessions.map(() => [] as number[]);
  for (let r = 0; r < options.runs; r++) {
    for (const [m, s] of sessions.entries()) {
      const start = process.hrtime.bigint();
      await runPrepared(s, feeds[m]);
      samples[m].push(Number(process.hrtime.bigint() - start) / 1e6);
      tick();
    }
  }
  return samples;
}

function summarize(samples: number[][], plans: Plan[], point: number, batch: number): BenchResult[] {
  const base = median(samples[0]);
  const baseMacs = plans[0].macs[point];
  return samples.map((ms, model) => {
    const med = median(ms);
    const macs = plans[model].macs[point];
    return {
      model,
      medianMs: med,
      p90Ms: percentile(ms, 0.9),
      meanMs: ms.reduce((a, b) => a + b, 0) / ms.length,
      minMs: Math.min(...ms),
      throughput: batch / (med / 1000),
      speedup: base / med,
      macs,
      idealSpeedup: baseMacs !== null && macs ? baseMacs / macs : null,
      samplesMs: ms,
    };
  });
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Nearest-rank percentile: the smallest sample with at least `q` of the samples at or below it. */
export function percentile(values: readonly number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** The report as text: models with load time and memory, then one row per point and model. */
export function formatBenchReport(r: BenchReport): string {
  const letter = (i: number) => String.fromCharCode(65 + (i % 26)) + (i >= 26 ? String(Math.floor(i / 26)) : '');
  const lines = [
    `bench on ${r.ep}${r.threads ? `, ${r.threads} threads` : ''}: ${r.warmup} warm-up + ${r.runs} timed runs per model and point, interleaved`,
  ];
  for (const [i, m] of r.models.entries()) {
    lines.push(
      `  ${letter(i)} ${m.label}  (session ${m.loadSeconds.toFixed(2)} s, memory ${m.memoryMiB === null ? 'n/a' : `${Math.round(m.memoryMiB)} MiB`})`,
    );
  }
  lines.push('');
  const header = ['batch', 'seq', 'model', 'median ms', 'p90 ms', 'seq/s', 'speed-up', 'GMACs', 'ideal'];
  const rows = r.points.flatMap((p) =>
    p.results.map((x) => [
      String(p.batch),
      String(p.seq),
      letter(x.model),
      x.medianMs.toFixed(1),
      x.p90Ms.toFixed(1),
      x.throughput.toFixed(1),
      `${x.speedup.toFixed(2)}x`,
      x.macs === null ? '?' : (x.macs / 1e9).toFixed(2),
      x.idealSpeedup === null ? '?' : `${x.idealSpeedup.toFixed(2)}x`,
    ]),
  );
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const align = (cell: string, i: number) => (i === 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]));
  for (const row of [header, ...rows]) lines.push(row.map(align).join('  '));
  lines.push('', "speed-up: the first model's median over this one's; ideal: the first model's MACs over this one's.");
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}
