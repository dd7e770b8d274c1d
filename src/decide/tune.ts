// Tune: the fastest model that stays within a fidelity budget on the user's data, with plugins fitted in
// closed form (src/decide/fit-plugins.ts), every kept candidate evaluated and timed.
//
// Splits: sample i is for fitting when i % 5 is 0, 1 or 2, for validation when it is 3, for testing when it
// is 4. Plugins are fitted on the first, every decision is made on the second, the third is only reported
// (the data the chosen model's figures come from was not used to choose it).
//
// Search, each step evaluated on validation:
//   1. Variants: every (scope, ratio) is fitted for every layer on the original model's stream.
//   2. Uniform points: one variant on every layer.
//   3. Profiles: each layer compressed alone in each variant; its loss (the budget's metric, or for an
//      accuracy budget the top-1 disagreement in points, which does not drown in label noise) and the MACs
//      it saves at the timing shape. Measured (one evaluation each) where that is cheap; for a large model,
//      where the layers x variants evaluations would take longer than PROFILE_SECONDS, estimated instead:
//      the variant's uniform-point loss shared among the layers in proportion to their fits' held-out
//      unexplained variance (a layer its plugin restores worse is charged more). The knapsack's real
//      evaluations in step 4 correct what the estimate gets wrong.
//   4. Knapsack: per layer at most one variant, the most MACs saved for a summed profile loss within the
//      budget times a multiplier. Losses do not add up exactly, so each choice is compiled and evaluated,
//      and the multiplier grows while the real model meets the budget and shrinks when it does not
//      (bisection, a few steps).
//   5. The candidates (uniform and knapsack points) are timed against the original, side by side, a few
//      at a time; the fastest few within the budget are timed again together, with more rounds, and the
//      fastest of them is the result, unless the timings cannot tell it from others (their interquartile
//      ranges overlap): then, of those, the one predicted fastest from MACs. Its test-split figures are
//      reported (and the other frontier points').
// Stopping (time limit, an abort) ends the search where it is: the result is the best point so far.
//
// Cache: with a cache folder, fitted plugins and every evaluation are stored under content hashes (model,
// data, split, configuration, timing shape), so a second run, say with a tighter budget, evaluates nothing
// it has seen.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runPasses } from '../../passes/pipeline.js';
import { SCOPES, type Scope } from '../../passes/plugin/builtin.js';
import { checkPluginContract, type Plugin } from '../../passes/plugin/contract.js';
import { analyzeTransformer, macsAt } from '../analysis/index.js';
import { bindDims, describeInputs, shapeOf } from '../analysis/inputs.js';
import { sequenceLimit } from '../analysis/limits.js';
import { benchModels } from '../bench/latency.js';
import { pluginPass } from '../compile/passes.js';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import { decodeModel, encodeModel, saveModel, temporaryFolder } from '../onnx/file.js';
import type { DataSet } from '../runtime/data.js';
import { type VerifyReport, verifyModels } from '../verify/numeric.js';
import { fitPluginVariants, type LayerFit, type PluginSetting } from './fit-plugins.js';
import { type Budget, type Fidelity, lossBound, lossOf, meets, nonDominated } from './frontier.js';

export interface TuneOptions {
  budget: Budget;
  /** the shape the candidates are timed and counted at (default batch 8, seq 128 or the position table's length) */
  batch?: number;
  seq?: number;
  /** with a target: among the candidates within budget that reach it, the most faithful */
  targetSpeedup?: number;
  scopes?: readonly Scope[];
  /** compression ratios tried per layer (default 2 and 4) */
  ratios?: readonly number[];
  rank?: number | 'full';
  /** full-length units of the FFN-scope plugins (passes/plugin/units.ts; default: the fit's budget) */
  units?: number;
  /** samples per run (default 8) */
  batchSize?: number;
  threads?: number;
  /** fit the plugins on the first N samples of the fit split only (default: all of it): the fit's cost is linear in it */
  fitSamples?: number;
  /** per-layer profiles: each evaluated, estimated from the fits and uniform points, or 'auto' (default: see the header) */
  profiles?: 'measured' | 'estimated' | 'auto';
  /** timed rounds per candidate (default 5) */
  runs?: number;
  /** fitted plugins and evaluations are kept here and reused */
  cacheDir?: string;
  /** stops the search (the result is the best so far) */
  signal?: AbortSignal;
  /** seconds the search may take before it stops */
  timeLimit?: number;
  /** run the IR verifier after each pass (tests) */
  verifyIr?: boolean;
  onProgress?: (event: TuneProgress) => void;
}

export interface TuneProgress {
  stage: 'fit' | 'uniform' | 'profile' | 'search' | 'time' | 'confirm' | 'test';
  done: number;
  total: number;
  /** the fastest point within the budget so far (predicted speed-up until timed) */
  best?: { speedup: number; loss: number };
}

/** Per layer (as the model numbers them), the plugin variant it takes; absent layers stay as they are. */
export type Configuration = Record<number, { scope: Scope; ratio: number }>;

export interface TunePoint {
  id: string;
  kind: 'uniform' | 'search' | 'original';
  configuration: Configuration;
  /** one line: 'ffn k=4 on layers 0-11', or per layer */
  description: string;
  /** MACs of the original over the candidate's, at the timing shape */
  predictedSpeedup: number;
  /** median of paired per-round ratios against the original, with their interquartile range; null: not timed */
  measuredSpeedup: number | null;
  measuredIqr: [number, number] | null;
  validation: Fidelity;
  /** on the test split, for points within budget */
  test: Fidelity | null;
  meetsBudget: boolean;
  frontier: boolean;
  /** the knapsack's budget multiplier, for search points */
  multiplier?: number;
}

export interface LayerProfile {
  layer: number;
  scope: Scope;
  ratio: number;
  /** the profile loss of this layer alone (see the header) and the MACs it saves at the timing shape */
  loss: number;
  macsSaved: number;
  /** the layer compressed alone, evaluated; null where the loss is estimated */
  validation: Fidelity | null;
  fit: LayerFit;
}

export interface TuneResult {
  budget: Budget;
  timing: { batch: number; seq: number; runs: number };
  splits: { fit: number; validation: number; test: number };
  points: TunePoint[];
  profiles: LayerProfile[];
  /** the chosen point, or null when no candidate met the budget (the original is the result) */
  chosen: TunePoint | null;
  /** the chosen model, compiled (null with no choice) */
  model: Model | null;
  /** why the search ended early, if it did */
  stopped: string | null;
  notes: string[];
  /** what was found in the cache and what was computed */
  cache: { hits: number; evaluated: number; fitted: number };
  /** seconds per stage */
  stages: Partial<Record<TuneProgress['stage'], number>>;
  seconds: number;
}

const FIT_SPLIT = (i: number) => i % 5 <= 2;
const VALIDATION_SPLIT = (i: number) => i % 5 === 3;
const TEST_SPLIT = (i: number) => i % 5 === 4;
/** bump when what a cached entry means changes */
const CACHE_VERSION = 3;
const MAX_SEARCH_STEPS = 8;
/** 'auto' profiles are estimated when evaluating them all would take longer than this */
const PROFILE_SECONDS = 300;
/** candidates timed again, side by side, before the choice */
const FINALISTS = 4;

/** a speed-up against the original: median of per-round ratios and their interquartile range */
interface Timing {
  speedup: number;
  iqr: [number, number];
}

/** Find the fastest model within `options.budget` for `file` (its bytes at an opset plugins fit: >= 11). */
export async function tune(file: string, bytes: Uint8Array, data: DataSet, options: TuneOptions): Promise<TuneResult> {
  const started = Date.now();
  const t = new Tuner(file, bytes, data, options);
  return t.run(started);
}

interface Variant extends PluginSetting {
  key: string;
}

class Tuner {
  private readonly original: Model;
  private readonly layers: number[];
  private readonly variants: Variant[];
  private readonly splits: { fit: DataSet; validation: DataSet; test: DataSet };
  private readonly batch: number;
  private readonly seq: number;
  private readonly inputShapes: Map<string, readonly number[]>;
  private readonly originalMacs: number;
  private readonly modelHash: string;
  private readonly cache: Cache;
  private readonly work: { folder: string; release(): void };
  private readonly deadline: number;
  /** fitted plugin bytes per `${layer}/${variant.key}` */
  private readonly plugins = new Map<string, { bytes: Uint8Array; fit: LayerFit }>();
  private readonly reference: Record<'validation' | 'test', Record<string, Tensor>[]> = { validation: [], test: [] };
  private readonly points: TunePoint[] = [];
  private readonly profiles: LayerProfile[] = [];
  private readonly notes: string[] = [];
  private readonly counts = { hits: 0, evaluated: 0, fitted: 0 };
  private stopped: string | null = null;
  private readonly stages: Partial<Record<TuneProgress['stage'], number>> = {};
  /** evaluations and the seconds they took when they ran, to project the cost of profiles */
  private readonly evaluations = { count: 0, seconds: 0 };

  constructor(
    private readonly file: string,
    private readonly bytes: Uint8Array,
    data: DataSet,
    private readonly options: TuneOptions,
  ) {
    this.original = decodeModel(bytes, { label: file });
    const analysis = analyzeTransformer(this.original);
    if (analysis.error) throw new VcompileError(`cannot tune ${file}: transformer analysis stopped: ${analysis.error.message}`);
    this.layers = analysis.layers.filter((l) => !l.selfAttention.causal).map((l) => l.index);
    if (this.layers.length === 0) throw new VcompileError(`cannot tune ${file}: every layer uses causal self-attention`);
    const ratios = options.ratios ?? [2, 4];
    for (const r of ratios)
      if (!Number.isSafeInteger(r) || r < 2 || r > 1024) throw new VcompileError(`ratio ${r}: ratios must be integers from 2 to 1024`);
    const scopes = options.scopes ?? SCOPES;
    // units are a feed-forward block's own: the other scopes' variants have none to take
    const units = (scope: Scope) => (scope === 'ffn' ? options.units : undefined);
    this.variants = scopes.flatMap((scope) =>
      ratios.map((ratio) => ({ scope, ratio, rank: options.rank, units: units(scope), key: `${scope}:${ratio}` })),
    );
    if (this.variants.length === 0) throw new VcompileError('nothing to tune: no scope or no ratio given');
    this.splits = splitData(data, options.fitSamples);
    this.batch = options.batch ?? 8;
    const limit = sequenceLimit(this.original)?.max;
    this.seq = options.seq ?? Math.min(128, limit ?? 128);
    if (limit !== undefined && this.seq > limit)
      throw new VcompileError(`seq ${this.seq} is beyond what the model runs: its position table allows at most ${limit}`);
    const specs = describeInputs(this.original);
    const values = bindDims(specs, { batch: this.batch, seq: this.seq });
    this.inputShapes = new Map(specs.map((s) => [s.name, shapeOf(s, values)]));
    this.originalMacs = this.macsOf(this.original);
    this.modelHash = sha256(bytes);
    const dataKey = `${data.sha256}:${data.size}`;
    this.cache = new Cache(
      options.cacheDir,
      [CACHE_VERSION, this.modelHash, dataKey, options.rank ?? 'default', options.units ?? 'default', options.fitSamples ?? 'all'].join(
        '|',
      ),
    );
    // registered as a temporary: a signal that ends the process (a second Ctrl-C) removes it too
    this.work = temporaryFolder(path.join(options.cacheDir ?? os.tmpdir(), options.cacheDir ? '.work-' : 'vcompile-tune-'));
    this.deadline = options.timeLimit !== undefined ? Date.now() + options.timeLimit * 1000 : Number.POSITIVE_INFINITY;
  }

  async run(started: number): Promise<TuneResult> {
    try {
      await this.timed('fit', () => this.fitVariants());
      await this.timed('uniform', () => this.uniformPoints());
      await this.timed('profile', () => this.layerProfiles());
      await this.timed('search', () => this.search());
      await this.timed('time', () => this.timeCandidates());
      await this.timed('confirm', () => this.confirmFastest());
      const chosen = this.choose();
      this.markFrontier();
      await this.timed('test', () => this.testPoints(chosen));
      const model = chosen ? this.compile(chosen.configuration) : null;
      return {
        budget: this.options.budget,
        timing: { batch: this.batch, seq: this.seq, runs: this.options.runs ?? 5 },
        splits: { fit: this.splits.fit.size, validation: this.splits.validation.size, test: this.splits.test.size },
        points: this.points,
        profiles: this.profiles,
        chosen,
        model,
        stopped: this.stopped,
        notes: this.notes,
        cache: this.counts,
        stages: this.stages,
        seconds: (Date.now() - started) / 1000,
      };
    } finally {
      this.work.release();
    }
  }

  private async timed(stage: TuneProgress['stage'], work: () => Promise<void>): Promise<void> {
    const started = Date.now();
    await work();
    this.stages[stage] = (Date.now() - started) / 1000;
  }

  // ---------------------------------------------------------------------------------------- stopping

  /** True (and the reason recorded) once the search must stop. */
  private shouldStop(): boolean {
    if (this.stopped) return true;
    if (this.options.signal?.aborted) this.stopped = 'interrupted';
    else if (Date.now() > this.deadline) this.stopped = `time limit of ${this.options.timeLimit} s reached`;
    return this.stopped !== null;
  }

  private progress(stage: TuneProgress['stage'], done: number, total: number): void {
    const within = this.points.filter((p) => p.meetsBudget && p.kind !== 'original');
    const best = within.sort((a, b) => speedOf(b) - speedOf(a))[0];
    this.options.onProgress?.({
      stage,
      done,
      total,
      best: best ? { speedup: speedOf(best), loss: lossOf(best.validation, this.options.budget.metric) } : undefined,
    });
  }

  // ---------------------------------------------------------------------------------------- fitting

  private async fitVariants(): Promise<void> {
    const missing = new Set<string>();
    for (const layer of this.layers) {
      for (const v of this.variants) {
        const key = `${layer}/${v.key}`;
        const cached = this.cache.read(`plugin|${key}`);
        if (cached?.file) {
          this.plugins.set(key, { bytes: fs.readFileSync(cached.file), fit: cached.value as LayerFit });
          this.counts.hits++;
        } else missing.add(key);
      }
    }
    if (missing.size === 0 || this.shouldStop()) return;
    let done = 0;
    const fitted = await fitPluginVariants(this.file, this.bytes, this.splits.fit, {
      variants: this.variants,
      layers: this.layers,
      skip: (layer, variant) => !missing.has(`${layer}/${this.variants[variant].key}`),
      // the x-only control only informs a reader of fit.json; the search judges fits by evaluation
      control: false,
      batchSize: this.options.batchSize,
      threads: this.options.threads,
      onProgress: (e) => {
        if (e.stage === 'solve') this.progress('fit', ++done, missing.size);
      },
    });
    for (const f of fitted) {
      const key = `${f.fit.layer}/${this.variants[f.variant].key}`;
      const pluginBytes = encodeModel(f.plugin);
      this.plugins.set(key, { bytes: pluginBytes, fit: f.fit });
      this.cache.write(`plugin|${key}`, f.fit, pluginBytes);
      this.counts.fitted++;
    }
  }

  // ---------------------------------------------------------------------------------------- points

  private async uniformPoints(): Promise<void> {
    for (const [i, v] of this.variants.entries()) {
      if (this.shouldStop()) return;
      await this.addPoint('uniform', this.uniform(v));
      this.progress('uniform', i + 1, this.variants.length);
    }
  }

  private async layerProfiles(): Promise<void> {
    const mode = this.options.profiles ?? 'auto';
    const projected = this.layers.length * this.variants.length * this.secondsPerEvaluation();
    if (mode === 'estimated' || (mode === 'auto' && projected > PROFILE_SECONDS)) {
      if (mode === 'auto')
        this.notes.push(
          `profiles estimated from the fits and the uniform points (evaluating ${this.layers.length * this.variants.length} would take about ${Math.round(projected)} s)`,
        );
      return this.estimateProfiles();
    }
    const total = this.layers.length * this.variants.length;
    let done = 0;
    for (const layer of this.layers) {
      for (const v of this.variants) {
        if (this.shouldStop()) return;
        const configuration = { [layer]: { scope: v.scope, ratio: v.ratio } };
        const { fidelity, macs } = await this.evaluate(configuration, 'validation');
        this.profiles.push({
          layer,
          scope: v.scope,
          ratio: v.ratio,
          loss: this.profileLoss(fidelity),
          macsSaved: this.originalMacs - macs,
          validation: fidelity,
          fit: this.plugins.get(`${layer}/${v.key}`)!.fit,
        });
        this.progress('profile', ++done, total);
      }
    }
  }

  /** Each variant's uniform-point loss shared among the layers by their fits' held-out unexplained variance. */
  private estimateProfiles(): void {
    for (const v of this.variants) {
      const uniform = this.points.find((p) => p.kind === 'uniform' && p.id === configurationId(this.uniform(v)));
      if (!uniform) return; // stopped before the uniform points: no search
      const fits = this.layers.map((layer) => this.plugins.get(`${layer}/${v.key}`)!.fit);
      const shares = estimateShares(fits.map((f) => f.unexplained.fitted));
      const loss = this.profileLoss(uniform.validation);
      for (const [i, layer] of this.layers.entries()) {
        const model = this.compile({ [layer]: { scope: v.scope, ratio: v.ratio } });
        this.profiles.push({
          layer,
          scope: v.scope,
          ratio: v.ratio,
          loss: loss * shares[i],
          macsSaved: this.originalMacs - this.macsOf(model),
          validation: null,
          fit: fits[i],
        });
      }
    }
  }

  private uniform(v: Variant): Configuration {
    return Object.fromEntries(this.layers.map((l) => [l, { scope: v.scope, ratio: v.ratio }]));
  }

  private countEvaluation(seconds: number): void {
    this.evaluations.count++;
    this.evaluations.seconds += seconds;
  }

  /** Seconds an evaluation has taken so far (when it ran, also for those read from the cache). */
  private secondsPerEvaluation(): number {
    return this.evaluations.count ? this.evaluations.seconds / this.evaluations.count : 0;
  }

  /** The additive stand-in for the budget's metric (see the header). */
  private profileLoss(f: Fidelity): number {
    const metric = this.options.budget.metric;
    const loss = metric === 'accuracy-drop' ? (1 - f.top1Agreement) * 100 : lossOf(f, metric);
    return Math.max(0, loss);
  }

  private async search(): Promise<void> {
    if (this.shouldStop() || this.profiles.length < this.layers.length * this.variants.length) return;
    const frontier = knapsackFrontier(this.layers, this.profiles);
    const bound = Math.max(lossBound(this.options.budget), 1e-9);
    const most = frontier[frontier.length - 1].saving;
    // the multiplier: the largest known to give a model within budget, the smallest known not to
    let [passed, failed] = [0, Number.POSITIVE_INFINITY];
    let m = 1;
    for (let step = 0; step < MAX_SEARCH_STEPS && !this.shouldStop(); step++) {
      const choice = bestWithin(frontier, m * bound);
      const point = choice ? await this.addPoint('search', choice.configuration, m) : undefined;
      if (!point || point.meetsBudget)
        passed = m; // no choice: nothing fits so small a budget, look higher
      else failed = m;
      this.progress('search', step + 1, MAX_SEARCH_STEPS);
      if (point?.meetsBudget && choice!.saving >= most) break; // everything there is, within budget
      if (passed > 0 && failed / passed < 1.15) break;
      m = Number.isFinite(failed) ? (passed > 0 ? Math.sqrt(passed * failed) : failed / 4) : m * 2;
    }
  }

  /** Evaluate a configuration on validation (once) and record it as a point. */
  private async addPoint(kind: TunePoint['kind'], configuration: Configuration, multiplier?: number): Promise<TunePoint> {
    const id = configurationId(configuration);
    const known = this.points.find((p) => p.id === id);
    if (known) return known;
    const { fidelity, macs } = await this.evaluate(configuration, 'validation');
    const point: TunePoint = {
      id,
      kind,
      configuration,
      description: describeConfiguration(configuration, this.layers),
      predictedSpeedup: this.originalMacs / macs,
      measuredSpeedup: null,
      measuredIqr: null,
      validation: fidelity,
      test: null,
      meetsBudget: meets(fidelity, this.options.budget),
      frontier: false,
    };
    if (multiplier !== undefined) point.multiplier = multiplier;
    this.points.push(point);
    return point;
  }

  // ---------------------------------------------------------------------------------------- evaluating

  /** A configuration's fidelity on a split and its MACs at the timing shape, from the cache or measured. */
  private async evaluate(configuration: Configuration, split: 'validation' | 'test'): Promise<{ fidelity: Fidelity; macs: number }> {
    const key = `eval|${split}|${configurationId(configuration)}|${this.batch}x${this.seq}`;
    const cached = this.cache.read(key);
    if (cached) {
      this.counts.hits++;
      const value = cached.value as { fidelity: Fidelity; macs: number; seconds?: number };
      if (value.seconds !== undefined) this.countEvaluation(value.seconds);
      return value;
    }
    const started = Date.now();
    const model = this.compile(configuration);
    const macs = this.macsOf(model);
    const candidate = path.join(this.work.folder, 'candidate.onnx');
    saveModel(model, candidate);
    try {
      const report = await verifyModels(this.file, candidate, {
        data: this.splits[split],
        batchSize: this.options.batchSize,
        reference: this.reference[split],
        session: { threads: this.options.threads },
      });
      const seconds = (Date.now() - started) / 1000;
      const result = { fidelity: fidelityOf(report, this.splits[split].size, this.options.budget), macs, seconds };
      this.cache.write(key, result);
      this.counts.evaluated++;
      this.countEvaluation(seconds);
      return result;
    } finally {
      fs.rmSync(candidate, { force: true });
    }
  }

  /** The original with the configuration's fitted plugins. */
  private compile(configuration: Configuration): Model {
    const model = decodeModel(this.bytes, { label: this.file });
    const layers = Object.keys(configuration).map(Number);
    if (layers.length === 0) return model;
    const given = new Map<string, Plugin>();
    const requests = layers.map((layer) => {
      const { scope, ratio } = configuration[layer];
      const source = `fitted:${scope}:${ratio}:L${layer}`;
      const plugin = this.plugins.get(`${layer}/${scope}:${ratio}`);
      if (!plugin) throw new Error(`internal: no fitted plugin for layer ${layer} ${scope} k=${ratio}`);
      given.set(source, checkPluginContract(decodeModel(plugin.bytes, { label: source }), source, sha256(plugin.bytes)));
      return { layer, source };
    });
    const pass = pluginPass({ plugins: requests, layers }, given);
    const result = runPasses(model, [pass], { verify: this.options.verifyIr });
    result.model.setMetadata('vcompile.tune', JSON.stringify({ configuration, budget: this.options.budget }));
    return result.model;
  }

  private macsOf(model: Model): number {
    const count = macsAt(model, this.inputShapes);
    if (count.macs === null)
      throw new VcompileError(
        `cannot count the MACs at batch ${this.batch}, seq ${this.seq}: shapes not inferred at ${count.unknown.slice(0, 3).join(', ')}`,
      );
    return count.macs;
  }

  // ---------------------------------------------------------------------------------------- timing

  /** Every candidate timed against the original at the timing shape, a few at a time. */
  private async timeCandidates(): Promise<void> {
    const untimed = this.points.filter((p) => p.measuredSpeedup === null);
    const runs = this.options.runs ?? 5;
    const group = 3;
    let done = 0;
    for (let start = 0; start < untimed.length; start += group) {
      const batch = untimed.slice(start, start + group);
      const pending = batch.filter((p) => !this.timingFromCache(p));
      if (pending.length && !this.shouldStop()) {
        const timings = await this.measure(pending, runs);
        pending.forEach((p, i) => {
          applyTiming(p, timings[i]);
          this.cache.write(this.timingKey(p), timings[i]);
        });
      }
      done += batch.length;
      this.progress('time', done, untimed.length);
    }
  }

  private timingKey(p: TunePoint): string {
    return `time|${p.id}|${this.batch}x${this.seq}|${this.options.runs ?? 5}|${this.options.threads ?? 'default'}`;
  }

  private timingFromCache(p: TunePoint): boolean {
    const cached = this.cache.read(this.timingKey(p));
    if (!cached) return false;
    applyTiming(p, cached.value as Timing);
    this.counts.hits++;
    return true;
  }

  /**
   * The fastest few within the budget timed again side by side with three times the runs, replacing their
   * figures: groups timed at different moments of a shared machine differ by more than candidates do, and
   * the choice should rest on one comparison.
   */
  private async confirmFastest(): Promise<void> {
    const finalists = this.points
      .filter((p) => p.meetsBudget && p.measuredSpeedup !== null)
      .sort((a, b) => speedOf(b) - speedOf(a))
      .slice(0, FINALISTS);
    if (finalists.length < 2 || this.shouldStop()) return;
    const runs = 3 * (this.options.runs ?? 5);
    const key = `confirm|${finalists.map((p) => p.id).join(',')}|${this.batch}x${this.seq}|${runs}|${this.options.threads ?? 'default'}`;
    const cached = this.cache.read(key);
    if (cached) this.counts.hits++;
    const timings = (cached?.value as Timing[] | undefined) ?? (await this.measure(finalists, runs));
    if (!cached) this.cache.write(key, timings);
    finalists.forEach((p, i) => applyTiming(p, timings[i]));
    this.progress('confirm', finalists.length, finalists.length);
  }

  /** The points' speed-ups against the original at the timing shape, measured in one paired bench. */
  private async measure(points: TunePoint[], runs: number): Promise<Timing[]> {
    const files = points.map((p, i) => {
      const file = path.join(this.work.folder, `timed-${i}.onnx`);
      saveModel(this.compile(p.configuration), file);
      return file;
    });
    try {
      const report = await benchModels([this.file, ...files], {
        batches: [this.batch],
        seqs: [this.seq],
        warmup: 1,
        runs,
        // the tuner compares its candidates with each other as much as with the original: no control
        control: false,
        session: { threads: this.options.threads },
      });
      const results = report.points[0].results;
      return points.map((_, i) => {
        const r = results.find((x) => x.model === i + 1)!;
        return { speedup: r.speedup, iqr: r.speedupIqr };
      });
    } finally {
      for (const f of files) fs.rmSync(f, { force: true });
    }
  }

  // ---------------------------------------------------------------------------------------- choosing

  private choose(): TunePoint | null {
    const within = this.points.filter((p) => p.meetsBudget);
    if (within.length === 0) return null;
    const fastest = [...within].sort((a, b) => speedOf(b) - speedOf(a));
    const target = this.options.targetSpeedup;
    if (target === undefined) {
      const pick = pickFastest(within);
      if (pick !== fastest[0])
        this.notes.push(
          `the timings cannot tell ${pick.description} from the fastest measured, ${fastest[0].description} (their IQRs overlap): chose the one that saves more MACs`,
        );
      return pick;
    }
    const reaching = within.filter((p) => speedOf(p) >= target);
    if (reaching.length === 0) {
      this.notes.push(`no candidate within the budget reaches ${target}x; the fastest one does ${speedOf(fastest[0]).toFixed(2)}x`);
      return fastest[0];
    }
    const metric = this.options.budget.metric;
    return reaching.sort((a, b) => lossOf(a.validation, metric) - lossOf(b.validation, metric))[0];
  }

  /** Test-split figures for the chosen point first, then the other frontier points within the budget. */
  private async testPoints(chosen: TunePoint | null): Promise<void> {
    const within = this.points.filter((p) => p.meetsBudget && p.frontier && p !== chosen);
    const order = chosen ? [chosen, ...within] : within;
    for (const [i, p] of order.entries()) {
      if (p !== chosen && this.shouldStop()) return;
      p.test = (await this.evaluate(p.configuration, 'test')).fidelity;
      this.progress('test', i + 1, order.length);
    }
  }

  private markFrontier(): void {
    const metric = this.options.budget.metric;
    const keep = nonDominated(this.points.map((p) => ({ speedup: speedOf(p), loss: lossOf(p.validation, metric) })));
    for (const i of keep) this.points[i].frontier = true;
  }
}

/**
 * The fastest candidate: the fastest measured, unless its timing cannot be told from others' (their IQRs
 * overlap, as on a shared machine); then, of those, the one predicted fastest from MACs, which no noise moves.
 */
export function pickFastest<P extends Pick<TunePoint, 'predictedSpeedup' | 'measuredSpeedup' | 'measuredIqr'>>(points: readonly P[]): P {
  const fastest = [...points].sort((a, b) => speedOf(b) - speedOf(a))[0];
  if (!fastest.measuredIqr) return fastest;
  const low = fastest.measuredIqr[0];
  const alike = points.filter((p) => p === fastest || (p.measuredIqr !== null && p.measuredIqr[1] >= low));
  return alike.sort((a, b) => b.predictedSpeedup - a.predictedSpeedup)[0];
}

function applyTiming(p: TunePoint, t: Timing): void {
  p.measuredSpeedup = t.speedup;
  p.measuredIqr = t.iqr;
}

/** The measured speed-up where there is one, else the predicted. */
export function speedOf(p: Pick<TunePoint, 'predictedSpeedup' | 'measuredSpeedup'>): number {
  return p.measuredSpeedup ?? p.predictedSpeedup;
}

function splitData(data: DataSet, fitSamples: number | undefined): { fit: DataSet; validation: DataSet; test: DataSet } {
  const all = [...Array(data.size).keys()];
  const pick = (f: (i: number) => boolean) => all.filter(f);
  const splits = {
    fit: data.subset(pick(FIT_SPLIT).slice(0, fitSamples)),
    validation: data.subset(pick(VALIDATION_SPLIT)),
    test: data.subset(pick(TEST_SPLIT)),
  };
  if (data.size < 10)
    throw new VcompileError(
      `${data.source}: ${data.size} samples are too few to tune: 3 in 5 fit the plugins, 1 in 5 choose, 1 in 5 test; give at least 10`,
    );
  return splits;
}

/** The budget's view of a verification report: the first output that scores classes. */
function fidelityOf(report: VerifyReport, samples: number, budget: Budget): Fidelity {
  const scored = report.outputs.find((o) => o.top1Agreement !== null && o.kl !== null);
  if (!scored)
    throw new VcompileError('the model has no output that scores classes: a tuning budget needs one (top-1 agreement, KL or accuracy)');
  if (budget.metric === 'accuracy-drop' && !scored.task)
    throw new VcompileError(`an accuracy-drop budget needs labels for ${scored.name} in the data`);
  return {
    output: scored.name,
    samples,
    positions: scored.positions,
    top1Agreement: scored.top1Agreement!,
    kl: scored.kl!,
    accuracy: scored.task ? { original: scored.task.accuracy.original, rewritten: scored.task.accuracy.rewritten } : null,
    cosine: scored.cosinePerPosition.mean,
  };
}

// ------------------------------------------------------------------------------------------ knapsack

/** Shares summing to 1, proportional to the (non-negative) weights; equal shares when all are 0. */
export function estimateShares(weights: readonly number[]): number[] {
  const clean = weights.map((w) => (Number.isFinite(w) && w > 0 ? w : 0));
  const total = clean.reduce((a, b) => a + b, 0);
  return total > 0 ? clean.map((w) => w / total) : clean.map(() => 1 / clean.length);
}

interface Choice {
  configuration: Configuration;
  loss: number;
  saving: number;
}

/**
 * The multiple-choice knapsack's whole frontier: for every total loss, the most MACs saved with at most one
 * variant per layer. Kept as a list of non-dominated (loss, saving) states, thinned to a few thousand.
 */
export function knapsackFrontier(layers: readonly number[], profiles: readonly LayerProfile[]): Choice[] {
  let states: Choice[] = [{ configuration: {}, loss: 0, saving: 0 }];
  for (const layer of layers) {
    const options = profiles.filter((p) => p.layer === layer && p.macsSaved > 0);
    const next: Choice[] = [...states];
    for (const s of states) {
      for (const o of options) {
        next.push({
          configuration: { ...s.configuration, [layer]: { scope: o.scope, ratio: o.ratio } },
          loss: s.loss + o.loss,
          saving: s.saving + o.macsSaved,
        });
      }
    }
    states = prune(next);
  }
  return states;
}

function prune(states: Choice[]): Choice[] {
  states.sort((a, b) => a.loss - b.loss || b.saving - a.saving);
  const kept: Choice[] = [];
  for (const s of states) if (kept.length === 0 || s.saving > kept[kept.length - 1].saving) kept.push(s);
  const cap = 4096;
  if (kept.length <= cap) return kept;
  const step = kept.length / cap;
  return Array.from({ length: cap }, (_, i) => kept[Math.floor(i * step)]).concat(kept[kept.length - 1]);
}

/** The most saving state whose loss is within `limit` (null when only the empty one is). */
export function bestWithin(frontier: readonly Choice[], limit: number): Choice | null {
  let best: Choice | null = null;
  for (const s of frontier) if (s.loss <= limit && s.saving > 0) best = s;
  return best;
}

// ------------------------------------------------------------------------------------------ naming

function configurationId(c: Configuration): string {
  const entries = Object.keys(c)
    .map(Number)
    .sort((a, b) => a - b)
    .map((l) => `${l}:${c[l].scope}:${c[l].ratio}`);
  return sha256(new TextEncoder().encode(entries.join(','))).slice(0, 16);
}

/** 'ffn k=4 on every layer', or per layer runs: 'L0-3 ffn k=4, L5 layer k=2'. */
export function describeConfiguration(c: Configuration, layers: readonly number[]): string {
  const chosen = Object.keys(c)
    .map(Number)
    .sort((a, b) => a - b);
  if (chosen.length === 0) return 'no layer compressed';
  const tag = (l: number) => `${c[l].scope} k=${c[l].ratio}`;
  if (chosen.length === layers.length && chosen.every((l) => tag(l) === tag(chosen[0]))) return `${tag(chosen[0])} on every layer`;
  const runs: string[] = [];
  let start = chosen[0];
  for (let i = 1; i <= chosen.length; i++) {
    const [prev, cur] = [chosen[i - 1], chosen[i]];
    if (cur === prev + 1 && tag(cur) === tag(prev)) continue;
    runs.push(`L${start === prev ? start : `${start}-${prev}`} ${tag(prev)}`);
    start = cur;
  }
  return runs.join(', ');
}

// ------------------------------------------------------------------------------------------ cache

/** Entries as DIR/<hash>.json (and DIR/<hash>.onnx for a plugin), the hash over the tune's context and the key. */
class Cache {
  constructor(
    private readonly dir: string | undefined,
    private readonly context: string,
  ) {
    if (dir) fs.mkdirSync(dir, { recursive: true });
  }

  private name(key: string): string {
    return sha256(new TextEncoder().encode(`${this.context}|${key}`)).slice(0, 32);
  }

  read(key: string): { value: unknown; file?: string } | undefined {
    if (!this.dir) return undefined;
    const base = path.join(this.dir, this.name(key));
    try {
      const value = JSON.parse(fs.readFileSync(`${base}.json`, 'utf8')) as { key: string; value: unknown };
      if (value.key !== key) return undefined;
      const file = `${base}.onnx`;
      return { value: value.value, file: fs.existsSync(file) ? file : undefined };
    } catch {
      return undefined; // absent or unreadable: computed again
    }
  }

  write(key: string, value: unknown, bytes?: Uint8Array): void {
    if (!this.dir) return;
    const base = path.join(this.dir, this.name(key));
    if (bytes) fs.writeFileSync(`${base}.onnx`, bytes);
    fs.writeFileSync(`${base}.json.tmp`, JSON.stringify({ key, value }));
    fs.renameSync(`${base}.json.tmp`, `${base}.json`);
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
