// Side-by-side latency of several models in one process: every model gets the same feeds, and at every
// grid point the models run in paired rounds (src/bench/paired.ts): each round runs every model once, in an
// order that rotates from round to round, so that drift on the machine (frequency, other load) hits all
// models alike, and a model's speed-up is the median of its per-round ratios against the first model,
// with their spread. The first model also runs a second time each round, on a session of its own, as a
// control. The arithmetic
// (MACs) each model needs is reported next to its measured time; its memory is measured in a process of
// its own (src/bench/memory.ts).
import { macsAt } from '../analysis/macs.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Tensor } from '../ir/tensor.js';
import { loadModel } from '../onnx/file.js';
import { RATIO_INPUT, ratioTensor, switchableInfo, withFeedableRatio } from '../runtime/adaptive.js';
import { bindDims, checkDimNames, type DimBinding, describeInputs, generateFeeds, type InputSpec, shapeOf } from '../runtime/feeds.js';
import { openSession, prepareFeeds, runPrepared, type Session, type SessionOptions } from '../runtime/session.js';
import { MEMORY_NOTE, type MemoryJob, measureInChild } from './memory.js';
import { type Clock, controlFinding, type EntryTiming, formatSpread, median, percentile, spreadFinding, timePaired } from './paired.js';

export { median, percentile };

export interface BenchOptions {
  batches: readonly number[];
  seqs: readonly number[];
  dims?: Readonly<Record<string, number>>;
  seed?: number;
  /** untimed runs per model before each grid point's timed rounds */
  warmup: number;
  /** timed rounds per grid point: every model runs once per round */
  runs: number;
  /** time the first model a second time each round, on a second session, against itself (default true) */
  control?: boolean;
  /**
   * sessions per model (default 1), used in turn, round r on session r mod `sessions`: on a loaded machine
   * two sessions of one model can differ by 20% and more for as long as they live, and a median over
   * rounds that mix several sessions leans less on one of them
   */
  sessions?: number;
  /** measure each model's memory in a process of its own (default true) */
  memory?: boolean;
  /** the clock of the timed calls (tests) */
  clock?: Clock;
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
  /** MiB; see MEMORY_NOTE. null: not measured (not Linux, turned off, or the child failed: see notes) */
  memoryMiB: number | null;
}

export interface BenchResult {
  /** index into `models` */
  model: number;
  medianMs: number;
  p90Ms: number;
  meanMs: number;
  minMs: number;
  /** median CPU time per call (user + system, every thread of the process), ms */
  cpuMedianMs: number;
  /** sequences (batch rows) per second at the median latency */
  throughput: number;
  /**
   * median over rounds of the first model's time over this model's time in the same round (not a
   * ratio of medians: see src/bench/paired.ts)
   */
  speedup: number;
  /** interquartile range of those per-round ratios: [q1, q3] */
  speedupIqr: [number, number];
  /** the same with CPU times */
  cpuSpeedup: number;
  cpuSpeedupIqr: [number, number];
  /** whole-graph MACs at this point, or null when shape inference could not count them */
  macs: number | null;
  /** the first model's MACs over this model's: the speed-up the arithmetic predicts */
  idealSpeedup: number | null;
  /** wall ms per round, in round order (round r of every model is one pair) */
  samplesMs: number[];
  /** CPU ms per round */
  cpuSamplesMs: number[];
}

/** The first model timed a second time in every round, on a session of its own, against itself. */
export interface BenchControl {
  speedup: number;
  speedupIqr: [number, number];
  cpuSpeedup: number;
  cpuSpeedupIqr: [number, number];
  medianMs: number;
  samplesMs: number[];
  cpuSamplesMs: number[];
}

export interface BenchPoint {
  batch: number;
  seq: number;
  /** every symbolic input dim's value at this point (of the first model) */
  dims: Record<string, number>;
  results: BenchResult[];
  /** null when the control is off */
  control: BenchControl | null;
}

export interface BenchReport {
  models: BenchModel[];
  ep: 'cpu' | 'cuda';
  threads: number | null;
  /** whether ORT's idle threads spin (off unless --spin: see SessionOptions.spinning) */
  spinning: boolean;
  warmup: number;
  /** timed rounds per point: every model runs once per round, in an order that rotates each round */
  runs: number;
  /** whether the first model was timed a second time each round, on a session of its own, as a control */
  control: boolean;
  /** sessions per model, round r on session r mod sessions */
  sessions: number;
  seed: number;
  memoryNote: string;
  points: BenchPoint[];
  notes: string[];
  /** why the timings cannot resolve a reported difference (the control strays, or a spread contains 1.00x) */
  warnings: string[];
}

export { MEMORY_NOTE };

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
  const copies = options.sessions ?? 1;
  if (!Number.isSafeInteger(copies) || copies < 1) throw new VcompileError(msg`${option('sessions', copies)} must be an integer >= 1`);
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
  const control = options.control ?? true;
  const measureMemory = options.memory ?? true;
  const distinct = new Set(plans.map((p) => p.file)).size;
  const entries = plans.length + (control ? 1 : 0);
  const total =
    (distinct + (control ? 1 : 0)) * copies +
    (measureMemory ? distinct : 0) +
    grid.length * entries * (options.warmup * copies + options.runs);
  let done = 0;
  const tick = () => options.onProgress?.(++done, total);
  const owned: Session[] = [];
  const sessionOptions: SessionOptions = { ...options.session, spinning: options.session?.spinning ?? false };
  try {
    // One set of sessions per file (the ratios of a switchable file share them: switching is a fed value,
    // not a reload), and the control's. They are opened in turns, A B C A' A B C A' ..., not A A B B ...:
    // on a loaded machine the sessions opened first ran up to 2-3x slower than later ones for as long as
    // they lived, and each model should get early and late ones alike.
    const files = [...new Set(plans.map((p) => p.file))];
    const toOpen = [...files.map((file) => plans.find((p) => p.file === file)!), ...(control ? [plans[0]] : [])];
    const opened = toOpen.map(() => [] as Session[]);
    const loadSeconds = toOpen.map(() => 0);
    for (let copy = 0; copy < copies; copy++) {
      for (const [i, p] of toOpen.entries()) {
        const one = await open(p, sessionOptions);
        owned.push(one.session);
        opened[i].push(one.session);
        if (copy === 0) loadSeconds[i] = one.loadSeconds;
        tick();
      }
    }
    // per entry (the models, then the control), its sessions; round r runs session r mod `copies`
    const sessions = [...plans.map((p) => opened[files.indexOf(p.file)]), ...(control ? [opened[files.length]] : [])];
    const models: BenchModel[] = plans.map((p) => {
      const i = files.indexOf(p.file);
      return { file: p.file, label: p.label, ratio: p.ratio, ep: opened[i][0].ep, loadSeconds: loadSeconds[i], memoryMiB: null };
    });
    if (measureMemory) {
      const largest = grid.reduce((a, b) => (b.batch * b.seq > a.batch * a.seq ? b : a));
      const byFile = new Map<string, number | null>();
      for (const p of plans) {
        if (!byFile.has(p.file)) {
          byFile.set(p.file, await memoryOf(p, { ...largest, dims: options.dims }, seed, sessionOptions, notes));
          tick();
        }
      }
      for (const m of models) m.memoryMiB = byFile.get(m.file) ?? null;
    }
    const points: BenchPoint[] = [];
    const warnings: string[] = [];
    for (const [index, at] of grid.entries()) {
      const feeds = plans.map((p) => prepareFeeds(feedsFor(p, { ...at, dims: options.dims }, seed)));
      if (control) feeds.push(feeds[0]);
      // every entry's k-th call runs its session k mod `copies`: each session gets `warmup` warm-up
      // calls, and timed round r runs session r mod `copies` of every entry
      const calls = feeds.map(() => 0);
      const call = (m: number) => runPrepared(sessions[m][calls[m]++ % copies], feeds[m]).then(() => undefined);
      const timing = await timePaired(plans.length, call, {
        warmup: options.warmup * copies,
        rounds: options.runs,
        control,
        clock: options.clock,
        onCall: tick,
      });
      const dims = Object.fromEntries(bindDims(plans[0].specs, { ...at, dims: options.dims }));
      const point: BenchPoint = {
        ...at,
        dims,
        results: timing.entries.map((t, model) => summarize(t, model, plans, index, at.batch)),
        control: timing.control && controlOf(timing.control),
      };
      points.push(point);
      warnings.push(...findings(point, models));
    }
    return {
      models,
      ep: models[0].ep,
      threads: options.session?.threads ?? null,
      spinning: sessionOptions.spinning !== false,
      warmup: options.warmup,
      runs: options.runs,
      control,
      sessions: copies,
      seed,
      memoryNote: measureMemory ? MEMORY_NOTE : 'memory: not measured',
      points,
      notes,
      warnings,
    };
  } finally {
    for (const s of owned) await s.release();
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

async function open(p: Plan, options: SessionOptions): Promise<{ session: Session; loadSeconds: number }> {
  const start = process.hrtime.bigint();
  const session = await openSession(p.ratio === null ? p.file : withFeedableRatio(loadModel(p.file)), options);
  return { session, loadSeconds: Number(process.hrtime.bigint() - start) / 1e9 };
}

/** The model's memory at `at`, measured in a child process; null with a note when the child failed. */
async function memoryOf(p: Plan, at: DimBinding, seed: number, options: SessionOptions, notes: string[]): Promise<number | null> {
  const { notify: _, externalData: __, ...session } = options;
  const job: MemoryJob = { file: p.file, ratio: p.ratio, specs: p.specs, at, seed, session };
  try {
    return (await measureInChild(job)).memoryMiB;
  } catch (error) {
    notes.push(`${p.file}: memory not measured: ${(error as Error).message}`);
    return null;
  }
}

function summarize(t: EntryTiming, model: number, plans: Plan[], point: number, batch: number): BenchResult {
  const ms = t.wallMs;
  const med = median(ms);
  const macs = plans[model].macs[point];
  const baseMacs = plans[0].macs[point];
  return {
    model,
    medianMs: med,
    p90Ms: percentile(ms, 0.9),
    meanMs: ms.reduce((a, b) => a + b, 0) / ms.length,
    minMs: Math.min(...ms),
    cpuMedianMs: median(t.cpuMs),
    throughput: batch / (med / 1000),
    speedup: t.speedup.median,
    speedupIqr: t.speedup.iqr,
    cpuSpeedup: t.cpuSpeedup.median,
    cpuSpeedupIqr: t.cpuSpeedup.iqr,
    macs,
    idealSpeedup: baseMacs !== null && macs ? baseMacs / macs : null,
    samplesMs: ms,
    cpuSamplesMs: t.cpuMs,
  };
}

function controlOf(t: EntryTiming): BenchControl {
  return {
    speedup: t.speedup.median,
    speedupIqr: t.speedup.iqr,
    cpuSpeedup: t.cpuSpeedup.median,
    cpuSpeedupIqr: t.cpuSpeedup.iqr,
    medianMs: median(t.wallMs),
    samplesMs: t.wallMs,
    cpuSamplesMs: t.cpuMs,
  };
}

/** What at this point says the machine was too noisy for the differences reported. */
function findings(point: BenchPoint, models: BenchModel[]): string[] {
  const where = `batch ${point.batch}, seq ${point.seq}`;
  const out: string[] = [];
  if (point.control) {
    const spread = { median: point.control.speedup, iqr: point.control.speedupIqr };
    const why = controlFinding(spread);
    if (why) out.push(`${where}: the first model against itself gave ${formatSpread(spread)}, ${why}`);
  }
  for (const r of point.results.slice(1)) {
    const spread = { median: r.speedup, iqr: r.speedupIqr };
    const why = spreadFinding(spread);
    if (why) out.push(`${where}: ${models[r.model].label} at ${formatSpread(spread)}: ${why}`);
  }
  return out;
}

/** The report as text: models with load time and memory, then one row per point and model. */
export function formatBenchReport(r: BenchReport): string {
  const letter = (i: number) => String.fromCharCode(65 + (i % 26)) + (i >= 26 ? String(Math.floor(i / 26)) : '');
  const lines = [
    `bench on ${r.ep}${r.threads ? `, ${r.threads} threads` : ''}: ${r.warmup} warm-up + ${r.runs} timed rounds per point; ` +
      `each round runs every model once${r.control ? ` (and ${letter(0)} again on a session of its own, as ${letter(0)}', its control)` : ''}, in an order that rotates each round` +
      (r.sessions > 1 ? `; ${r.sessions} sessions per model, used in turn` : ''),
  ];
  for (const [i, m] of r.models.entries()) {
    lines.push(
      `  ${letter(i)} ${m.label}  (session ${m.loadSeconds.toFixed(2)} s, memory ${m.memoryMiB === null ? 'n/a' : `${Math.round(m.memoryMiB)} MiB`})`,
    );
  }
  lines.push('');
  const x2 = (n: number) => `${n.toFixed(2)}x`;
  const iqr = (q: [number, number]) => `${q[0].toFixed(2)}-${q[1].toFixed(2)}`;
  const header = ['batch', 'seq', 'model', 'median ms', 'p90 ms', 'CPU ms', 'seq/s', 'speed-up', 'IQR', 'CPU speed-up', 'GMACs', 'ideal'];
  const rows = r.points.flatMap((p) => {
    const at = [String(p.batch), String(p.seq)];
    const rows = p.results.map((x) => [
      ...at,
      letter(x.model),
      x.medianMs.toFixed(1),
      x.p90Ms.toFixed(1),
      x.cpuMedianMs.toFixed(1),
      x.throughput.toFixed(1),
      x2(x.speedup),
      iqr(x.speedupIqr),
      x2(x.cpuSpeedup),
      x.macs === null ? '?' : (x.macs / 1e9).toFixed(2),
      x.idealSpeedup === null ? '?' : x2(x.idealSpeedup),
    ]);
    const c = p.control;
    if (c)
      rows.push([
        ...at,
        `${letter(0)}'`,
        c.medianMs.toFixed(1),
        percentile(c.samplesMs, 0.9).toFixed(1),
        '',
        '',
        x2(c.speedup),
        iqr(c.speedupIqr),
        x2(c.cpuSpeedup),
        '',
        '',
      ]);
    return rows;
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const align = (cell: string, i: number) => (i === 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]));
  for (const row of [header, ...rows]) lines.push(row.map(align).join('  '));
  lines.push(
    '',
    "speed-up: median over rounds of the first model's time over this one's in the same round; IQR: the quartiles of those ratios;",
    "CPU: process CPU time (all threads) per call; ideal: the first model's MACs over this one's.",
  );
  if (r.control)
    lines.push(`${letter(0)}': the first model timed again each round; its speed-up should be 1.00x, and how far it strays is noise.`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}

/** One line for stderr when the timings cannot resolve what they report, or undefined. */
export function benchWarning(r: BenchReport): string | undefined {
  if (r.warnings.length === 0) return undefined;
  return `timing too noisy for the differences reported: ${r.warnings.join('; ')}; rerun with more rounds or sessions per model, or on a quieter machine`;
}
