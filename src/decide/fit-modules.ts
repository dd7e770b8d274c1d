// Modular layers fitted from data, in closed form, no gradients (Modular Transformers without a training
// framework; ReplaceMe-style linear maps, arXiv 2505.02819).
//
// A module for layers S..E starts as one layer with the structure of layer S (builtin:keep-first: layer
// S's weights; builtin:average: the span's mean weights) and is fitted so that its output matches the
// span's output, the teacher, on the calibration data. What is fitted is what is linear given the rest:
// the last feed-forward output projection ("down projection", inc = a W + b). Per real position, with h
// the stream entering that sublayer, the target is t = y - h (pre-LN) or the teacher mapped back through
// the final norm (post-LN, passes/modular/capture.ts says how), and three variants fit it:
//   map    ridge of t on [inc ; 1]: a d x d map T and offset t0 on the projection's output, folded into it
//          (W' = W T, b' = b T + t0); `rank` makes T reduced-rank;
//   refit  ridge of t on [a ; 1]: the projection's weight and bias refitted directly;
//   context  ridge of t on [a ; 1 ; c], c the context features [h(t-1) ; h(t+1) ; mean(h)]
//          (passes/modular/context.ts): some of the dropped layers' position mixing, for 2d² more MACs
//          per position (a sixth of a BERT layer's); not fitted with `context: false`, nor where the
//          module cannot read its real positions off attention_bias (the report says why).
// A projection without a bias gets one (an Add after it). Lambda is chosen per variant on held-out
// calibration samples (every fifth). Then each candidate module (init and the fitted ones) runs on the held-out
// samples and the one whose output is closest to the span's (squared error over real positions) is
// kept: the choice is made in the output space, after the norm, where target errors are only a proxy.
// The report keeps every variant's error, and the error of dropping the span (identity).
//
// Several spans: fitted in order, each on the stream the earlier fitted modules produce (the stream is
// carried through the original layers between spans and through each fitted module, spliced in as the
// modular pass splices it). Mode 'independent' fits every span on the original model's stream instead
// (candidates for the assembler, which may overlap).
import { createHash } from 'node:crypto';
import { averageLayers } from '../../passes/modular/average.js';
import { captureModule, type ModuleInit } from '../../passes/modular/capture.js';
import { addContextMaps, CONTEXT_PARTS, type ContextKeep, contextMacs } from '../../passes/modular/context.js';
import { checkModuleContract } from '../../passes/modular/contract.js';
import { extractModule } from '../../passes/modular/extract.js';
import { downBias, downWeight, type FitSite, fitSite, setDownProjection } from '../../passes/modular/fitted.js';
import { attentionBias, checkRemovable, constantDerived, describeSpan, spanName } from '../../passes/modular/span.js';
import { biasKeepRule, findPaddingMask } from '../../passes/plugin/keep.js';
import { analyzeTransformer, type TransformerAnalysis } from '../analysis/index.js';
import { modularPass } from '../compile/passes.js';
import { type Label, msg, VcompileError } from '../errors.js';
import type { Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { DataType } from '../ir/types.js';
import { decodeModel, encodeModel } from '../onnx/file.js';
import type { DataBatch, DataSet } from '../runtime/data.js';
import { openSession, run } from '../runtime/session.js';
import { feedsFor, type SessionFlags, type Splits, type Streams, sliceAt, streamsInto } from './fit-plugins.js';
import {
  appendModuleStatistics,
  CONTEXT_SHIFT,
  MODULE_SHIFTS,
  ModuleEquations,
  type ModuleShifts,
  moduleShiftsOf,
  type Projection,
  solveContext,
  solveMap,
  solveRefit,
} from './module-statistics.js';

export interface SpanRequest {
  start: number;
  end: number;
  /** how refusals name the span (default: `layers S-E`) */
  label?: Label;
}

export interface ModuleFitOptions {
  spans: SpanRequest[];
  /** the module's starting point (default keep-first) */
  init?: ModuleInit;
  /** rank of the map variant's T (default: full) */
  rank?: number;
  /** fit the context variant too (default true) */
  context?: boolean;
  /** 'sequence' (default): each span on the stream the earlier fitted modules produce; 'independent': all on the original's */
  mode?: 'sequence' | 'independent';
  /** samples per run (default 8) */
  batchSize?: number;
  threads?: number;
  onProgress?: (event: ModuleFitProgress) => void;
  /** sees the stream entering each fitted span, batch by batch (what the span is fitted on) */
  onStream?: (start: number, batch: DataBatch, stream: Tensor) => void;
}

export interface ModuleFitProgress {
  span: string;
  stage: 'capture' | 'solve' | 'measure' | 'propagate';
  done: number;
  total: number;
}

export const VARIANTS = ['init', 'map', 'refit', 'context'] as const;
/** SpanFit.context's `skipped` when the fit was asked for no context maps */
export const CONTEXT_NOT_ASKED = 'not asked for';
export type Variant = (typeof VARIANTS)[number];

export interface SpanFit {
  start: number;
  end: number;
  init: ModuleInit;
  chosen: Variant;
  /**
   * Held-out squared error of the module's output against the span's, over the span output's variance
   * (real positions): for each variant, and for dropping the span (identity).
   */
  heldOut: { identity: number; init: number; map: number; refit: number; context?: number };
  /** held-out unexplained variance of the fitted target (the pre-norm residual sum for post-LN layers) */
  target: { map: number; refit: number; context?: number };
  lambda: { map: number; refit: number; context?: number };
  /** the context variant: how the module finds its real positions and what the maps cost, or why it was not fitted */
  context: { keep: ContextKeep; macs: { perPosition: number; perSequence: number } } | { skipped: string };
  /** the map's rank */
  rank: number | 'full';
  placement: 'pre' | 'post';
  /** the down projection had no bias: the fitted module adds one */
  addedBias: boolean;
  samples: number;
  tokens: number;
  heldOutTokens: number;
  seconds: number;
}

export interface ModuleFitResult {
  /** one module per span, keyed `L{S}-{E}`, with its fit report in metadata vcompile.fit */
  modules: Map<string, Model>;
  spans: SpanFit[];
  init: ModuleInit;
  modelSha256: string;
  dataSha256: string;
}

export const FIT_KEY = 'vcompile.fit';

/** Fit a module for each span of `file` (bytes of a model at opset >= 11) on `data`. */
export async function fitModules(file: string, bytes: Uint8Array, data: DataSet, options: ModuleFitOptions): Promise<ModuleFitResult> {
  const fitter = new Fitter(file, bytes, data, options);
  const spans = fitter.check(options.spans);
  const fits: { fit: SpanFit; module: Model }[] = [];
  let streams = await fitter.streamsAt(spans[0].start);
  let cursor = spans[0].start;
  if (options.mode === 'independent') {
    for (const span of spans) {
      if (cursor < span.start) streams = await fitter.through(streams, cursor, span.start - 1);
      cursor = span.start;
      fits.push(await fitter.fitSpan(span, streams, false));
    }
  } else {
    for (const [i, span] of spans.entries()) {
      if (cursor < span.start) streams = await fitter.through(streams, cursor, span.start - 1);
      const fitted = await fitter.fitSpan(span, streams, i < spans.length - 1);
      fits.push(fitted);
      if (fitted.next) streams = fitted.next;
      cursor = span.end + 1;
    }
  }
  return {
    modules: new Map(fits.map(({ fit, module }) => [`L${fit.start}-${fit.end}`, module])),
    spans: fits.map((f) => f.fit),
    init: fitter.init,
    modelSha256: sha256(bytes),
    dataSha256: data.sha256,
  };
}

/** The parts of a fit that every span shares: the model, its analysis, the data's splits. */
class Fitter {
  readonly init: ModuleInit;
  private readonly original: Model;
  private readonly analysis: TransformerAnalysis;
  private readonly d: number;
  private readonly splits: Splits;
  private readonly session: SessionFlags;
  private readonly samples: number;
  private readonly constants: Set<Value>;

  constructor(
    private readonly file: string,
    private readonly bytes: Uint8Array,
    private readonly data: DataSet,
    private readonly options: ModuleFitOptions,
  ) {
    this.init = options.init ?? 'keep-first';
    this.original = this.fresh();
    this.analysis = analyzeTransformer(this.original);
    if (this.analysis.error) throw new VcompileError(`cannot fit modules: transformer analysis stopped: ${this.analysis.error.message}`);
    if (this.analysis.hidden === undefined) throw new VcompileError('cannot fit modules: the hidden size of the model is not fixed');
    this.d = this.analysis.hidden;
    this.constants = constantDerived(this.original.graph);
    const held = [...Array(data.size).keys()].filter((i) => i % 5 === 4);
    const fit = [...Array(data.size).keys()].filter((i) => i % 5 !== 4);
    if (held.length === 0)
      throw new VcompileError(
        `${data.source}: ${data.size} sample${data.size === 1 ? '' : 's'} is too few to hold some out for choosing the fit; give at least 5`,
      );
    const batchSize = options.batchSize ?? 8;
    this.samples = fit.length;
    this.splits = { fit: data.subset(fit).batches(batchSize), held: data.subset(held).batches(batchSize) };
    this.session = { threads: options.threads, spinning: false };
  }

  fresh(): Model {
    return decodeModel(this.bytes, { label: this.file });
  }

  /** Every span checked against the model (as the extractor and the modular pass would), in layer order. */
  check(requests: readonly SpanRequest[]): SpanRequest[] {
    if (requests.length === 0) throw new Error('internal: no span to fit');
    const spans = [...requests].sort((a, b) => a.start - b.start || a.end - b.end);
    const label = (s: SpanRequest) => s.label ?? spanName(s.start, s.end);
    for (const span of spans) {
      const what = label(span);
      const { span: described } = extractModule(this.original, span.start, span.end, this.analysis, { label: what });
      checkRemovable(described.region, described.output, this.analysis, msg`${what}: ${spanName(span.start, span.end)}`);
      fitSite(this.analysis, span.start, what);
      if (this.init === 'average') averageLayers(described, this.analysis, this.constants, what);
    }
    if (this.options.mode !== 'independent') {
      for (let i = 1; i < spans.length; i++) {
        const [a, b] = [spans[i - 1], spans[i]];
        if (b.start <= a.end)
          throw new VcompileError(msg`${label(a)} and ${label(b)} overlap (${spanName(b.start, Math.min(a.end, b.end))})`);
      }
    }
    return spans;
  }

  async streamsAt(layer: number): Promise<Streams> {
    return streamsInto(this.fresh(), this.analysis.layers[layer], this.splits, this.session);
  }

  /** The stream leaving original layer `to`, from `streams` entering layer `from`. */
  async through(streams: Streams, from: number, to: number): Promise<Streams> {
    const model = sliceAt(this.fresh(), this.analysis.layers[from], [this.analysis.layers[to].output.name], this.d);
    const total = this.splits.fit.length + this.splits.held.length;
    const progress = (done: number) => this.options.onProgress?.({ span: spanName(from, to), stage: 'propagate', done, total: total });
    const fit = await this.runOn(model, this.splits.fit, streams.fit, progress);
    const held = await this.runOn(model, this.splits.held, streams.held, (done) => progress(done + this.splits.fit.length));
    return { fit, held };
  }

  /** Fit one span on `streams` (the stream entering it); with `carry`, also the stream the chosen module produces. */
  async fitSpan(span: SpanRequest, streams: Streams, carry: boolean): Promise<{ fit: SpanFit; module: Model; next?: Streams }> {
    const started = Date.now();
    const name = spanName(span.start, span.end);
    const what = span.label ?? name;
    const site = fitSite(this.analysis, span.start, what);
    if (this.options.onStream)
      for (const split of ['fit', 'held'] as const)
        this.splits[split].forEach((b, i) => this.options.onStream!(span.start, b, streams[split][i]));
    const context = this.contextKeep(span, what);
    const keep = 'keep' in context ? context.keep : undefined;
    const stats = await this.capture(span, site, streams, keep);
    const f = site.inner;
    if (stats.fit.count < f + 1)
      throw new VcompileError(
        msg`${what}: ${stats.fit.count} calibration positions cannot fit the ${f + 1} features of the feed-forward output projection (its ${f} inputs + 1); give more samples`,
      );
    this.options.onProgress?.({ span: name, stage: 'solve', done: 0, total: 1 });
    const means = this.means(span);
    const down: Projection = { weight: downWeight(site, means), bias: downBias(site, means) };
    const equations = { fit: stats.fit, held: stats.held };
    const refit = await solveRefit(equations, stats.shifts.a);
    const map = await solveMap(equations, stats.shifts.inc, down, this.options.rank);
    const withContext = keep && (await solveContext(equations, refit, stats.shifts.a, stats.shifts.context!));
    const built: Partial<Record<Variant, { model: Model; addedBias: boolean }>> = {
      init: this.build(span, site),
      map: this.build(span, site, map),
      refit: this.build(span, site, refit),
    };
    if (keep && withContext) built.context = this.build(span, site, withContext, { maps: withContext.maps, keep });
    const measured = await this.measure(span, built, stats.teacher, streams);
    let chosen: Variant = 'init';
    for (const v of VARIANTS) if (measured.errors[v] !== undefined && measured.errors[v] < measured.errors[chosen]!) chosen = v;
    const fit: SpanFit = {
      start: span.start,
      end: span.end,
      init: this.init,
      chosen,
      heldOut: {
        identity: measured.identity,
        init: measured.errors.init!,
        map: measured.errors.map!,
        refit: measured.errors.refit!,
        ...(withContext ? { context: measured.errors.context } : {}),
      },
      target: { map: map.unexplained, refit: refit.unexplained, ...(withContext ? { context: withContext.unexplained } : {}) },
      lambda: { map: map.lambda, refit: refit.lambda, ...(withContext ? { context: withContext.lambda } : {}) },
      context: 'skipped' in context ? context : { keep: context.keep, macs: contextMacs(this.d) },
      rank: this.options.rank !== undefined && this.options.rank < this.d ? this.options.rank : 'full',
      placement: site.ffn.placement,
      addedBias: chosen !== 'init' && built[chosen]!.addedBias,
      samples: this.samples,
      tokens: stats.fit.count,
      heldOutTokens: stats.held.count,
      seconds: 0,
    };
    const module = built[chosen]!.model;
    let next: Streams | undefined;
    if (carry) {
      const spliced = this.spliced(span, module);
      const total = this.splits.fit.length;
      const fitStreams = await this.runOn(spliced, this.splits.fit, streams.fit, (done) =>
        this.options.onProgress?.({ span: name, stage: 'propagate', done, total }),
      );
      next = { fit: fitStreams, held: measured.outputs[chosen]! };
    }
    fit.seconds = (Date.now() - started) / 1000;
    module.metadataProps = [...(module.metadataProps ?? []), [FIT_KEY, JSON.stringify(this.provenance(fit))]];
    return { fit, module, next };
  }

  private provenance(fit: SpanFit): object {
    const { seconds: _, ...rest } = fit;
    return { model: sha256(this.bytes), data: this.data.sha256, ...rest };
  }

  /**
   * How a module for `span` finds its real positions for the context maps (off its attention_bias, or all
   * of them without one), or why it cannot (then the context variant is not fitted).
   */
  private contextKeep(span: SpanRequest, what: Label): { keep: ContextKeep } | { skipped: string } {
    if (this.options.context === false) return { skipped: CONTEXT_NOT_ASKED };
    if (this.analysis.layers.slice(span.start, span.end + 1).some((l) => l.selfAttention.causal))
      return { skipped: 'causal self-attention: the maps would read the next position' };
    const described = describeSpan(this.analysis, span.start, span.end, this.constants, what);
    const bias = attentionBias(described, this.analysis, what);
    if (!bias) return { keep: 'all' };
    const layer = this.analysis.layers[span.start];
    const mask = findPaddingMask(layer.selfAttention, layer.input, this.analysis.context);
    if (!mask) return { skipped: `the attention bias ${bias.name} does not come from a padding mask among the model's inputs` };
    const rule = biasKeepRule(bias, mask, this.analysis.context);
    return 'rule' in rule
      ? { keep: rule.rule }
      : { skipped: `the module cannot read real positions off the attention bias ${bias.name}: ${rule.why}` };
  }

  /** The span's normal equations (fit and held-out splits), the shifts, and the teacher on held-out batches. */
  private async capture(span: SpanRequest, site: FitSite, streams: Streams, context: ContextKeep | undefined) {
    const layers = this.analysis.layers;
    const model = sliceAt(this.fresh(), layers[span.start], [layers[span.end].output.name], this.d);
    const captured = captureModule(model, span.end - span.start, this.init, { context: context !== undefined });
    appendModuleStatistics(model, captured, site.inner, this.d);
    const withContext = context !== undefined;
    const stats = {
      fit: new ModuleEquations(site.inner, this.d, withContext),
      held: new ModuleEquations(site.inner, this.d, withContext),
    };
    const teacher: Tensor[] = [];
    const session = await openSession(model, this.session);
    const name = spanName(span.start, span.end);
    try {
      const zero: ModuleShifts = {
        a: new Float32Array(site.inner),
        inc: new Float32Array(this.d),
        ...(withContext ? { context: new Float32Array(CONTEXT_PARTS * this.d) } : {}),
      };
      const probe = await run(session, { ...feedsFor(session, this.splits.fit[0], streams.fit[0]), ...shiftFeeds(zero) });
      const shifts = moduleShiftsOf(probe);
      const total = this.splits.fit.length + this.splits.held.length;
      let done = 0;
      for (const split of ['fit', 'held'] as const) {
        for (const [i, batch] of this.splits[split].entries()) {
          const outputs = await run(session, { ...feedsFor(session, batch, streams[split][i]), ...shiftFeeds(shifts) });
          stats[split].add(outputs);
          if (split === 'held') teacher.push(outputs[captured.y.name]);
          this.options.onProgress?.({ span: name, stage: 'capture', done: ++done, total });
        }
      }
      return { ...stats, shifts, teacher };
    } finally {
      await session.release();
    }
  }

  /** The module for `span`: layer S's structure (with the span's mean weights for average), and the fitted projection. */
  private build(
    span: SpanRequest,
    site: FitSite,
    projection?: Projection,
    context?: { maps: Float32Array; keep: ContextKeep },
  ): { model: Model; addedBias: boolean } {
    const what = span.label ?? spanName(span.start, span.end);
    const weights = this.means(span);
    const count = span.end - span.start + 1;
    const { module, values } = extractModule(this.original, span.start, span.start, this.analysis, {
      weights,
      replaces: count,
      label: what,
    });
    const addedBias = projection ? setDownProjection(module, values, site, projection.weight, projection.bias).addedBias : false;
    if (context) addContextMaps(module, values, site, context.maps, context.keep);
    module.graph.name = `vcompile_module_L${span.start}-${span.end}`;
    module.docString = `a module for ${spanName(span.start, span.end)} of a ${this.original.graph.name ?? 'model'} graph: layer ${span.start}'s structure (${this.init}), ${projection ? `its feed-forward output projection fitted from data${context ? ', with context maps' : ''}` : 'as it is'}, by vcompile`;
    return { model: module, addedBias };
  }

  /** builtin:average's mean weights for `span` (undefined for keep-first). */
  private means(span: SpanRequest): Map<Value, Tensor> | undefined {
    if (this.init !== 'average') return undefined;
    const what = span.label ?? spanName(span.start, span.end);
    const described = describeSpan(this.analysis, span.start, span.end, this.constants, what);
    return averageLayers(described, this.analysis, this.constants, what).means;
  }

  /** The sliced span with `module` spliced in its place (as the modular pass places a module file). */
  private spliced(span: SpanRequest, module: Model): Model {
    const layers = this.analysis.layers;
    const sliced = sliceAt(this.fresh(), layers[span.start], [layers[span.end].output.name], this.d);
    const source = 'vcompile fitted module';
    const checked = checkModuleContract(module, source, sha256(encodeModel(module)));
    return modularPass({ modules: [{ start: 0, end: span.end - span.start, source }], loaded: new Map([[source, checked]]) }).run(sliced)
      .model;
  }

  /** Each candidate's output on the held-out batches, and its error against the teacher's (and dropping the span's). */
  private async measure(span: SpanRequest, built: Partial<Record<Variant, { model: Model }>>, teacher: Tensor[], streams: Streams) {
    const name = spanName(span.start, span.end);
    const outputs: Partial<Record<Variant, Tensor[]>> = {};
    const errors: Partial<Record<Variant, number>> = {};
    const variants = VARIANTS.filter((v) => built[v]);
    const variance = new ErrorSum(this.d);
    this.splits.held.forEach((batch, i) => variance.addVariance(teacher[i], batch));
    const identity = new ErrorSum(this.d);
    this.splits.held.forEach((batch, i) => identity.add(streams.held[i], teacher[i], batch));
    let done = 0;
    for (const v of variants) {
      const out = await this.runOn(this.spliced(span, built[v]!.model), this.splits.held, streams.held);
      outputs[v] = out;
      const sum = new ErrorSum(this.d);
      this.splits.held.forEach((batch, i) => sum.add(out[i], teacher[i], batch));
      errors[v] = sum.squared / variance.variance();
      this.options.onProgress?.({ span: name, stage: 'measure', done: ++done, total: variants.length });
    }
    return { outputs, errors, identity: identity.squared / variance.variance() };
  }

  private async runOn(model: Model, batches: DataBatch[], streams: Tensor[], progress?: (done: number) => void): Promise<Tensor[]> {
    const session = await openSession(model, this.session);
    const output = model.graph.outputs[0].name;
    const out: Tensor[] = [];
    try {
      for (const [i, batch] of batches.entries()) {
        out.push((await run(session, feedsFor(session, batch, streams[i])))[output]);
        progress?.(i + 1);
      }
    } finally {
      await session.release();
    }
    return out;
  }
}

/** Squared errors, and the teacher's variance, over the real positions of batches. */
class ErrorSum {
  squared = 0;
  private readonly sum: Float64Array;
  private readonly sumSquares: Float64Array;
  private count = 0;

  constructor(private readonly d: number) {
    this.sum = new Float64Array(d);
    this.sumSquares = new Float64Array(d);
  }

  add(actual: Tensor, expected: Tensor, batch: DataBatch): void {
    const a = actual.toFloat32();
    const e = expected.toFloat32();
    forReal(expected, batch, this.d, (row) => {
      for (let j = 0; j < this.d; j++) this.squared += (a[row + j] - e[row + j]) ** 2;
    });
  }

  addVariance(expected: Tensor, batch: DataBatch): void {
    const e = expected.toFloat32();
    forReal(expected, batch, this.d, (row) => {
      this.count++;
      for (let j = 0; j < this.d; j++) {
        this.sum[j] += e[row + j];
        this.sumSquares[j] += e[row + j] ** 2;
      }
    });
  }

  variance(): number {
    let total = 0;
    for (let j = 0; j < this.d; j++) total += this.sumSquares[j] - (this.sum[j] * this.sum[j]) / Math.max(this.count, 1);
    return total;
  }
}

/** Calls `each` with the offset of every real position's row of a [batch, seq, d] tensor. */
function forReal(t: Tensor, batch: DataBatch, d: number, each: (row: number) => void): void {
  const positions = t.dims[0] * t.dims[1];
  for (let p = 0; p < positions; p++) if (!batch.real || batch.real[p]) each(p * d);
}

function shiftFeeds(shifts: ModuleShifts): Record<string, Tensor> {
  const [a, inc] = MODULE_SHIFTS;
  const feeds: Record<string, Tensor> = {
    [a]: Tensor.fromArray(a, DataType.FLOAT, [shifts.a.length], shifts.a),
    [inc]: Tensor.fromArray(inc, DataType.FLOAT, [shifts.inc.length], shifts.inc),
  };
  if (shifts.context) feeds[CONTEXT_SHIFT] = Tensor.fromArray(CONTEXT_SHIFT, DataType.FLOAT, [shifts.context.length], shifts.context);
  return feeds;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
