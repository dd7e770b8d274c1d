// Numerical verification: run the original and the rewritten model on the same inputs and measure how far
// the rewritten model's outputs are from the original's (the reference), with the metrics a task cares
// about (src/verify/metrics.ts defines them).
//
// Inputs: the user's data (`data`, src/runtime/data.ts), one set of files (`inputsDir`), or a generated
// grid (src/verify/grid.ts chooses lengths that exercise the transformer).
// Padding: an output whose first two dims are declared with the same names as the two dims of a
// [batch, seq] mask input (e.g. [batch, seq, hidden] and attention_mask [batch, seq]), or are undeclared
// and have the mask's sizes, is compared only where that mask is non-zero (and, with data, only at the
// sample's real positions).
// Memory: outputs are compared batch by batch and dropped. While the original's outputs fit in a budget,
// it runs alone first and its session is released before the rewritten model's opens (one model in memory
// at a time); past the budget both run side by side, batch by batch.
import { analyzeTransformer } from '../analysis/index.js';
import { bindDims, type DimBinding, describeInputs, dimKey, type InputSpec, shapeOf } from '../analysis/inputs.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { isFloatType, type Tensor } from '../ir/tensor.js';
import { DataType, type Dim, dataTypeName, isTensorType } from '../ir/types.js';
import { loadModel } from '../onnx/file.js';
import { ratioTensor, withFeedableRatio } from '../runtime/adaptive.js';
import type { DataSet } from '../runtime/data.js';
import { generateFeeds, readFeedFolder } from '../runtime/feeds.js';
import { releaseMemory } from '../runtime/memory.js';
import { encodeForSession, openSession, run, type Session, type SessionOptions } from '../runtime/session.js';
import { checkLengths, defaultGrid } from './grid.js';
import {
  type ClassStats,
  ElementAccumulator,
  type ElementStats,
  looksLikeProbabilities,
  type OutputKind,
  PositionAccumulator,
  type TaskStats,
} from './metrics.js';

export type { ElementStats as Stats } from './metrics.js';
export { compareValues } from './metrics.js';

export interface Thresholds {
  /** fail when an output's max abs error exceeds this */
  maxError?: number;
  /** fail when an output's cosine similarity falls below this */
  minCosine?: number;
  /** fail when the fraction of positions whose top class agrees falls below this */
  minTop1Agreement?: number;
  /** fail when the mean KL(original || rewritten) exceeds this */
  maxKl?: number;
  /** fail when the accuracy on the labels drops by more than this many points (percent) */
  maxAccuracyDrop?: number;
}

export interface VerifyOptions extends Thresholds {
  /** the grid of generated feeds (default: chosen to exercise the transformer, see grid.ts) */
  batches?: readonly number[];
  seqs?: readonly number[];
  dims?: Readonly<Record<string, number>>;
  seed?: number;
  /** read one set of feeds from this folder instead of generating a grid */
  inputsDir?: string;
  /** run the user's data instead of a grid */
  data?: DataSet;
  /** samples per run with `data` (default 8) */
  batchSize?: number;
  /** the outputs whose last axis scores classes (default: detected); an empty list: none */
  logits?: readonly string[];
  /** compare the residual stream leaving every transformer layer too */
  perLayer?: boolean;
  /** a switchable rewritten model: the ratio to run it at */
  ratio?: number;
  session?: Omit<SessionOptions, 'extraOutputs'>;
  onProgress?: (done: number, total: number) => void;
  /** the original's outputs held while it runs alone (default 256 MiB); beyond it both models run side by side */
  budgetBytes?: number;
  /**
   * the original's outputs per run, kept here (all of them, whatever the budget) and reused by the next
   * call that passes the same array with the same data: a search comparing many candidates to one
   * original runs it once
   */
  reference?: Record<string, Tensor>[];
}

export interface CaseOutput extends Partial<ElementStats> {
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

export interface OutputSummary extends ElementStats {
  name: string;
  /** the mask input that selected the compared positions, or null when every position counts */
  maskedBy: string | null;
  /** real positions compared (rows of the last axis) */
  positions: number;
  cosinePerPosition: { mean: number; p5: number };
  /** for outputs whose last axis scores classes, else null */
  top1Agreement: number | null;
  top5Agreement: number | null;
  kl: number | null;
  /** with labels: the task metrics of both models */
  task: Omit<TaskStats, 'labelled'> | null;
  pass: boolean;
}

export interface LayerSummary {
  /** the layer's index in the original model */
  index: number;
  relative: number;
  /** mean cosine per position of the residual stream leaving the layer */
  cosine: number;
}

export interface VerifyReport {
  original: string;
  rewritten: string;
  ep: 'cpu' | 'cuda';
  seed: number;
  thresholds: {
    maxError: number | null;
    minCosine: number | null;
    minTop1Agreement: number | null;
    maxKl: number | null;
    maxAccuracyDrop: number | null;
  };
  cases: VerifyCase[];
  outputs: OutputSummary[];
  /** one line per violated check, worst case first per output */
  failures: string[];
  pass: boolean;
  /** where the inputs came from: the data, or how the generated grid was chosen */
  inputs?:
    | { kind: 'data'; source: string; format: string; samples: number; batch: number }
    | { kind: 'grid'; note: string }
    | { kind: 'files'; folder: string };
  /** a switchable rewritten model: the ratio it ran at */
  ratio?: number;
  /** with perLayer */
  layers?: LayerSummary[];
}

/** One run's inputs, and how reports name it. */
interface Run {
  feeds: Record<string, Tensor>;
  where: string;
  case?: Omit<VerifyCase, 'outputs'>;
  labels?: Tensor;
  /** real positions from the data ([batch, seq], 1 = real) */
  real?: Uint8Array;
}

/** Run both models on the same feeds and compare every output of the original. */
export async function verifyModels(original: string, rewritten: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const prepared = prepare(original, rewritten, options);
  // the IR models `prepare` read are garbage now: let them go before the sessions take their memory
  releaseMemory();
  const { plan, comparison, sourceA, sourceB, ratioFeed, seed } = prepared;
  const runner = new PairRunner(
    () => openSession(sourceA.model, { ...options.session, externalData: sourceA.externalData }),
    () => openSession(sourceB.model, { ...options.session, externalData: sourceB.externalData }),
    original,
    rewritten,
    options.budgetBytes ?? 256 * 2 ** 20,
    options.reference,
  );
  let ep: 'cpu' | 'cuda' = 'cpu';
  const cases: VerifyCase[] = [];
  try {
    await runner.each(plan.runs, ratioFeed, (run, index, expected, actual, session) => {
      ep = session.ep;
      const outputs = comparison.add(run, expected, actual);
      if (run.case) cases.push({ ...run.case, outputs });
      options.onProgress?.(index + 1, plan.runs.length);
    });
    if (runner.missingInputs.length) {
      const failures = [`${rewritten} takes input ${runner.missingInputs.join(', ')}, which ${original} does not`];
      return report(original, rewritten, ep, seed, options, [], [], failures, plan.inputs);
    }
  } finally {
    await runner.release();
  }
  const failures = [...comparison.failures];
  const summaries = comparison.summaries(options, failures);
  const result = report(original, rewritten, ep, seed, options, cases, summaries, failures, plan.inputs);
  if (options.ratio !== undefined) result.ratio = options.ratio;
  if (options.perLayer) result.layers = comparison.layerSummaries();
  return result;
}

type Source = { model: string | Uint8Array; externalData?: { path: string; data: Uint8Array }[] };

/**
 * Everything a comparison needs from the two models' graphs, read now: the inputs to run, what to compare,
 * and what each session loads (the file itself, or an encoded copy with extra outputs or a feedable ratio).
 * The IR models stay inside: nothing returned holds their weights.
 */
function prepare(original: string, rewritten: string, options: VerifyOptions) {
  const model = loadModel(original);
  const candidate = loadModel(rewritten);
  const specs = describeInputs(model, { allowUnshaped: options.inputsDir !== undefined });
  refuseNonTensorOutputs(model, original);
  const seed = options.seed ?? 0;
  const plan = plannedRuns(model, candidate, specs, options, seed);
  const layerValues = options.perLayer ? streamsToCompare(model, candidate) : [];
  const extra = layerValues.map((l) => l.name);
  const sourceA: Source = extra.length ? encodeForSession(model, extra) : { model: original };
  const feedable = options.ratio !== undefined ? withFeedableRatio(candidate) : candidate;
  const sourceB: Source = extra.length || options.ratio !== undefined ? encodeForSession(feedable, extra) : { model: rewritten };
  const ratioFeed: Record<string, Tensor> = options.ratio !== undefined ? { vcompile_ratio: ratioTensor(options.ratio) } : {};
  return { plan, comparison: new Comparison(model, specs, options, layerValues), sourceA, sourceB, ratioFeed, seed };
}

/** A model with optional or sequence outputs cannot be compared (and crashes some ORT builds): refused up front. */
function refuseNonTensorOutputs(model: Model, file: string): void {
  const other = model.graph.outputs.find((v) => v.type && !isTensorType(v.type));
  if (other)
    throw new VcompileError(
      `${file}: output ${other.name} is of ${other.type!.kind} type, not a tensor; vcompile compares tensor outputs only`,
    );
}

// ------------------------------------------------------------------------------------------ inputs

function plannedRuns(
  model: Model,
  candidate: Model,
  specs: InputSpec[],
  options: VerifyOptions,
  seed: number,
): { runs: Run[]; inputs: VerifyReport['inputs'] } {
  if (options.data) {
    const batch = options.batchSize ?? 8;
    const runs = options.data.batches(batch).map((b, i) => ({
      feeds: b.feeds,
      labels: b.labels,
      real: b.real,
      where: `in data batch ${i + 1} (samples ${b.samples.length === 1 ? b.samples[0] : `${Math.min(...b.samples)}-${Math.max(...b.samples)}`})`,
    }));
    const { source, format, size } = options.data;
    return { runs, inputs: { kind: 'data', source, format, samples: size, batch } };
  }
  if (options.inputsDir) {
    const feeds = readFeedFolder(options.inputsDir, specs);
    return {
      runs: [
        { feeds, where: 'on the given inputs', case: { batch: null, seq: null, dims: Object.fromEntries(dimsOfFeeds(specs, feeds)) } },
      ],
      inputs: { kind: 'files', folder: options.inputsDir },
    };
  }
  let note = 'as given';
  let batches = options.batches;
  let seqs = options.seqs;
  if (!batches || !seqs) {
    const grid = defaultGrid(model, candidate, options.dims);
    batches ??= grid.batches;
    if (!seqs) {
      seqs = grid.seqs;
      note = grid.note;
    }
  }
  checkLengths(model, seqs, options.dims);
  const runs: Run[] = [];
  const seen = new Set<string>();
  for (const batch of batches) {
    for (const seq of seqs) {
      const binding: DimBinding = { batch, seq, dims: options.dims };
      const values = bindDims(specs, binding);
      const key = JSON.stringify(specs.map((s) => shapeOf(s, values)));
      if (seen.has(key)) continue; // fixed-size models: one run per distinct input shape
      seen.add(key);
      runs.push({
        feeds: generateFeeds(specs, binding, seed),
        where: `at batch ${batch}, seq ${seq}`,
        case: { batch, seq, dims: Object.fromEntries(values) },
      });
    }
  }
  return { runs, inputs: { kind: 'grid', note } };
}

/** The value of every symbolic input dim in a set of feeds. */
function dimsOfFeeds(specs: readonly InputSpec[], feeds: Record<string, Tensor>): Map<string, number> {
  const values = new Map<string, number>();
  for (const spec of specs) {
    spec.dims.forEach((dim, axis) => {
      if (dim.value === undefined) values.set(dimKey(spec.name, axis, dim), feeds[spec.name].dims[axis]);
    });
  }
  return values;
}

// ------------------------------------------------------------------------------------------ running

type Outputs = Record<string, Tensor>;

/**
 * Runs the original and the rewritten model on the same inputs. While the original's outputs fit in the
 * budget it runs alone, and its session is released before the rewritten model's opens; then the rest runs
 * side by side.
 */
class PairRunner {
  private sessionA?: Session;
  private sessionB?: Session;
  missingInputs: string[] = [];

  constructor(
    private readonly openA: () => Promise<Session>,
    private readonly openB: () => Promise<Session>,
    private readonly fileA: string,
    private readonly fileB: string,
    private readonly budget: number,
    private readonly reference?: Outputs[],
  ) {}

  async each(
    runs: Run[],
    extraFeeds: Record<string, Tensor>,
    compare: (run: Run, index: number, a: Outputs, b: Outputs, session: Session) => void,
  ): Promise<void> {
    const held: Outputs[] = this.reference ? [...this.reference] : [];
    const budget = this.reference ? Number.POSITIVE_INFINITY : this.budget;
    let bytes = 0;
    if (held.length < runs.length) this.sessionA = await this.openA();
    while (held.length < runs.length && bytes <= budget) {
      const outputs = await runAt(this.sessionA!, runs[held.length].feeds, this.fileA, runs[held.length].where);
      bytes += Object.values(outputs).reduce((sum, t) => sum + t.bytes().byteLength, 0);
      held.push(outputs);
      this.reference?.push(outputs);
    }
    if (held.length === runs.length) {
      await this.sessionA?.release();
      this.sessionA = undefined;
    }
    this.sessionB = await this.openB();
    const takes = new Set(this.sessionB.inputNames);
    const known = new Set([...Object.keys(runs[0]?.feeds ?? {}), ...Object.keys(extraFeeds)]);
    this.missingInputs = this.sessionB.inputNames.filter((name) => !known.has(name));
    if (this.missingInputs.length) return;
    for (const [index, run] of runs.entries()) {
      const expected = held[index] ?? (await runAt(this.sessionA!, run.feeds, this.fileA, run.where));
      const feeds = Object.fromEntries(Object.entries({ ...run.feeds, ...extraFeeds }).filter(([name]) => takes.has(name)));
      const actual = await runAt(this.sessionB, feeds, this.fileB, run.where);
      compare(run, index, expected, actual, this.sessionB);
      held[index] = undefined as unknown as Outputs; // compared: let it go
    }
  }

  async release(): Promise<void> {
    await this.sessionA?.release();
    await this.sessionB?.release();
  }
}

async function runAt(session: Session, feeds: Record<string, Tensor>, file: string, where: string): Promise<Outputs> {
  try {
    return await run(session, feeds);
  } catch (error) {
    if (error instanceof VcompileError) throw error.wrapped(`${file} ${where}: `);
    throw error;
  }
}

// ------------------------------------------------------------------------------------------ comparing

interface LayerStream {
  index: number;
  name: string;
}

/** The residual stream leaving each layer of `model` that `candidate` still computes (a module's span: at its end). */
function streamsToCompare(model: Model, candidate: Model): LayerStream[] {
  const analysis = analyzeTransformer(model);
  if (analysis.error) throw new VcompileError(`per-layer comparison: transformer analysis stopped: ${analysis.error.message}`);
  const present = new Set(candidate.graph.nodes.flatMap((n) => n.outputs.filter((v) => v !== null).map((v) => v!.name)));
  return analysis.layers.filter((l) => present.has(l.output.name)).map((l) => ({ index: l.index, name: l.output.name }));
}

interface OutputState {
  elements: ElementAccumulator;
  positions?: PositionAccumulator;
  maskedBy: string | null;
  worst: { maxAbs: { value: number; where: string }; relative: { value: number; where: string }; cosine: { value: number; where: string } };
}

class Comparison {
  readonly failures: string[] = [];
  private readonly outputs = new Map<string, OutputState>();
  private readonly layers = new Map<number, { elements: ElementAccumulator; positions: PositionAccumulator }>();
  private readonly declared: Map<string, Dim[] | undefined>;
  private readonly hidden: number | undefined;

  constructor(
    model: Model,
    private readonly specs: InputSpec[],
    private readonly options: VerifyOptions,
    private readonly layerStreams: LayerStream[],
  ) {
    this.declared = new Map(model.graph.outputs.map((v) => [v.name, isTensorType(v.type) ? v.type.shape : undefined]));
    const analysis = analyzeTransformer(model);
    this.hidden = analysis.error ? undefined : analysis.hidden;
  }

  /** Compare one run's outputs; returns the per-case figures. */
  add(run: Run, expected: Outputs, actual: Outputs): CaseOutput[] {
    const cases: CaseOutput[] = [];
    for (const [name, declared] of this.declared) {
      const entry = this.compareOutput(name, declared, expected[name], actual[name], run);
      cases.push(entry);
      if (entry.error) this.failures.push(`${name}: ${entry.error} ${run.where}`);
    }
    for (const stream of this.layerStreams) this.addLayer(stream, expected[stream.name], actual[stream.name], run);
    return cases;
  }

  private compareOutput(name: string, declared: Dim[] | undefined, b: Tensor | undefined, a: Tensor | undefined, run: Run): CaseOutput {
    const problem = mismatch(b, a);
    if (problem) return { name, shape: b ? [...b.dims] : [], error: problem };
    const mask = maskFor(name, declared, b!, this.specs, run);
    const state = this.stateOf(name, b!, mask?.name ?? null, declared);
    const width = b!.dims.length >= 2 ? b!.dims[b!.dims.length - 1] : b!.size;
    const bValues = numbers(b!);
    const aValues = numbers(a!);
    const keep = mask?.keepElements;
    const caseStats = new ElementAccumulator();
    caseStats.add(bValues, aValues, keep);
    state.elements.merge(caseStats);
    const stats = caseStats.stats();
    track(state, stats, run.where);
    if (state.positions) {
      if (state.positions.kind.probabilities === undefined && state.positions.kind.classes) {
        state.positions.kind.probabilities = looksLikeProbabilities(realRows(bValues, width, mask?.realPositions), width);
      }
      state.positions.add(bValues, aValues, width, mask?.realPositions, labelsFor(run.labels, b!));
    }
    return { name, shape: [...b!.dims], ...stats };
  }

  private stateOf(name: string, reference: Tensor, maskedBy: string | null, declared: Dim[] | undefined): OutputState {
    const known = this.outputs.get(name);
    if (known) return known;
    const numeric = reference.dataType !== DataType.STRING;
    const state: OutputState = {
      elements: new ElementAccumulator(),
      positions: numeric ? new PositionAccumulator(this.kindOf(name, reference, declared)) : undefined,
      maskedBy,
      worst: { maxAbs: { value: 0, where: '' }, relative: { value: 0, where: '' }, cosine: { value: 1, where: '' } },
    };
    this.outputs.set(name, state);
    return state;
  }

  /** Class scores: named by `logits`, or else a float output whose fixed last axis (>= 2) is not the hidden size. */
  private kindOf(name: string, reference: Tensor, declared: Dim[] | undefined): OutputKind {
    if (this.options.logits) return { classes: this.options.logits.includes(name) };
    if (!isFloatType(reference.dataType) || reference.dims.length < 2) return { classes: false };
    const last = declared?.[declared.length - 1];
    const width = reference.dims[reference.dims.length - 1];
    const fixed = declared ? last?.value !== undefined : true;
    return { classes: fixed && width >= 2 && width !== this.hidden };
  }

  private addLayer(stream: LayerStream, b: Tensor | undefined, a: Tensor | undefined, run: Run): void {
    if (!b || !a || mismatch(b, a)) return;
    const acc = this.layers.get(stream.index) ?? {
      elements: new ElementAccumulator(),
      positions: new PositionAccumulator({ classes: false }),
    };
    this.layers.set(stream.index, acc);
    const mask = maskFor(stream.name, undefined, b, this.specs, run);
    const width = b.dims[b.dims.length - 1];
    const [bv, av] = [numbers(b), numbers(a)];
    acc.elements.add(bv, av, mask?.keepElements);
    acc.positions.add(bv, av, width, mask?.realPositions);
  }

  summaries(thresholds: Thresholds, failures: string[]): OutputSummary[] {
    return [...this.outputs].map(([name, state]) => summarize(name, state, thresholds, failures));
  }

  layerSummaries(): LayerSummary[] {
    return [...this.layers]
      .sort((x, y) => x[0] - y[0])
      .map(([index, acc]) => ({ index, relative: acc.elements.stats().relative, cosine: acc.positions.cosinePerPosition().mean }));
  }
}

function mismatch(expected: Tensor | undefined, actual: Tensor | undefined): string | undefined {
  if (!expected) return 'the original model did not return it';
  if (!actual) return 'the rewritten model has no such output';
  if (actual.dataType !== expected.dataType)
    return `element type ${dataTypeName(actual.dataType)} instead of ${dataTypeName(expected.dataType)}`;
  if (actual.dims.length !== expected.dims.length || actual.dims.some((d, i) => d !== expected.dims[i])) {
    return `shape [${actual.dims.join(', ')}] instead of [${expected.dims.join(', ')}]`;
  }
  if (expected.dataType === DataType.STRING) return 'string outputs are not compared';
  return undefined;
}

function track(state: OutputState, stats: ElementStats, where: string): void {
  const w = state.worst;
  if (stats.maxAbs > w.maxAbs.value || !w.maxAbs.where) w.maxAbs = { value: stats.maxAbs, where };
  if (stats.relative > w.relative.value || !w.relative.where) w.relative = { value: stats.relative, where };
  if (stats.cosine < w.cosine.value || !w.cosine.where) w.cosine = { value: stats.cosine, where };
}

function summarize(name: string, state: OutputState, t: Thresholds, failures: string[]): OutputSummary {
  const totals = state.elements.stats();
  const stats: ElementStats = {
    ...totals,
    maxAbs: state.worst.maxAbs.value,
    relative: state.worst.relative.value,
    cosine: state.worst.cosine.value,
  };
  const classes: ClassStats | null = state.positions?.classStats() ?? null;
  const task = state.positions?.taskStats() ?? null;
  const before = failures.length;
  const fail = (line: string) => failures.push(`${name}: ${line}`);
  if (stats.nonFinite > 0) {
    fail(
      `${stats.nonFinite} NaN or infinite value${stats.nonFinite === 1 ? '' : 's'} where the original has ${stats.nonFinite === 1 ? 'a different one' : 'different ones'}`,
    );
  }
  if (t.maxError !== undefined && stats.maxAbs > t.maxError)
    fail(`max abs error ${formatNumber(stats.maxAbs)} > ${t.maxError} ${state.worst.maxAbs.where}`);
  if (t.minCosine !== undefined && stats.cosine < t.minCosine)
    fail(`cosine similarity ${formatNumber(stats.cosine)} < ${t.minCosine} ${state.worst.cosine.where}`);
  if (t.minTop1Agreement !== undefined && classes && classes.top1Agreement < t.minTop1Agreement) {
    fail(`top-1 agreement ${percent(classes.top1Agreement)} < ${percent(t.minTop1Agreement)}`);
  }
  if (t.maxKl !== undefined && classes && classes.kl > t.maxKl) fail(`KL ${formatNumber(classes.kl)} > ${t.maxKl}`);
  if (t.maxAccuracyDrop !== undefined && task) {
    const drop = (task.accuracy.original - task.accuracy.rewritten) * 100;
    if (drop > t.maxAccuracyDrop) {
      fail(
        `accuracy drops ${drop.toFixed(2)} points > ${t.maxAccuracyDrop} (${percent(task.accuracy.original)} -> ${percent(task.accuracy.rewritten)})`,
      );
    }
  }
  const cosines = state.positions?.cosinePerPosition() ?? { mean: 1, p5: 1 };
  return {
    name,
    maskedBy: state.maskedBy,
    ...stats,
    positions: state.positions?.positions ?? 0,
    cosinePerPosition: cosines,
    top1Agreement: classes?.top1Agreement ?? null,
    top5Agreement: classes?.top5Agreement ?? null,
    kl: classes?.kl ?? null,
    task: task ? { accuracy: task.accuracy, loss: task.loss } : null,
    pass: failures.length === before,
  };
}

function percent(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

/**
 * The padding mask that applies to an output (see the header), per element and per position (rows of the
 * last axis); the data's own real positions win over the mask input's.
 */
function maskFor(
  output: string,
  declared: Dim[] | undefined,
  reference: Tensor,
  specs: InputSpec[],
  run: Run,
): { name: string; keepElements: Uint8Array; realPositions: Uint8Array } | undefined {
  if (reference.dims.length < 2) return undefined;
  for (const spec of specs) {
    if (spec.role !== 'mask' || spec.dims.length !== 2) continue;
    const mask = run.feeds[spec.name];
    if (!mask || mask.dims[0] !== reference.dims[0] || mask.dims[1] !== reference.dims[1]) continue;
    if (!leadingDimsMatch(output, declared, spec)) continue;
    const values = mask.toFloat32();
    const real = run.real;
    // element i of the output sits at [batch, seq] position floor(i / inner)
    const inner = reference.dims.slice(2).reduce((x, y) => x * y, 1);
    const keepElements = new Uint8Array(reference.size);
    for (let j = 0; j < values.length; j++) {
      if (values[j] !== 0 && (!real || real[j] === 1)) keepElements.fill(1, j * inner, (j + 1) * inner);
    }
    const width = reference.dims[reference.dims.length - 1];
    const realPositions = new Uint8Array(reference.size / width);
    for (let p = 0; p < realPositions.length; p++) realPositions[p] = keepElements.subarray(p * width, (p + 1) * width).includes(1) ? 1 : 0;
    return { name: spec.name, keepElements, realPositions };
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

/** The label of each row of an output, when the labels are shaped like the output's leading dims. */
function labelsFor(labels: Tensor | undefined, output: Tensor): Float64Array | undefined {
  if (!labels) return undefined;
  const leading = output.dims.slice(0, -1);
  if (labels.dims.length !== leading.length || labels.dims.some((d, i) => d !== leading[i])) return undefined;
  return Float64Array.from(labels.toBigInts(), Number);
}

function realRows(values: ArrayLike<number>, width: number, real: Uint8Array | undefined): Float64Array {
  const rows: number[] = [];
  for (let p = 0; p * width < values.length && rows.length < 64 * width; p++) {
    if (real && !real[p]) continue;
    for (let i = 0; i < width; i++) rows.push(values[p * width + i]);
  }
  return Float64Array.from(rows);
}

function numbers(t: Tensor): ArrayLike<number> {
  if (t.dataType === DataType.DOUBLE) return new Float64Array(new Uint8Array(t.bytes()).buffer);
  // only read: an output's float32s in place, as ORT returned them
  if (isFloatType(t.dataType)) return t.readFloat32();
  return t.toBigInts().map(Number);
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
  inputs: VerifyReport['inputs'],
): VerifyReport {
  return {
    original,
    rewritten,
    ep,
    seed,
    thresholds: {
      maxError: options.maxError ?? null,
      minCosine: options.minCosine ?? null,
      minTop1Agreement: options.minTop1Agreement ?? null,
      maxKl: options.maxKl ?? null,
      maxAccuracyDrop: options.maxAccuracyDrop ?? null,
    },
    cases,
    outputs,
    failures,
    pass: failures.length === 0,
    inputs,
  };
}

/** A failed report as the error a caller throws. */
export function verificationFailure(r: VerifyReport, suffix = ''): CheckFailedError {
  return new CheckFailedError(`${failureLine(r)}${suffix}`);
}

export function formatNumber(x: number): string {
  if (x === 0) return '0';
  if (!Number.isFinite(x)) return String(x);
  const abs = Math.abs(x);
  return abs >= 1e-3 && abs < 1e4 ? String(Number(x.toPrecision(4))) : x.toExponential(2);
}

/** One line for stderr: the first failure and how many more. */
export function failureLine(r: VerifyReport): string {
  const more = r.failures.length > 1 ? ` (and ${r.failures.length - 1} more)` : '';
  return `verification failed: ${r.failures[0] ?? 'unknown'}${more}`;
}
