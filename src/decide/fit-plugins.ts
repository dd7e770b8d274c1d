// Calibration: fit a compression plugin for each layer in closed form from the user's data, no gradients.
//
// The fitted plugin (passes/plugin/builtin.ts `buildFittedPlugin`) compresses by the mean of each group's
// real positions and restores u + [u ; x] W: u is what the mean plugin restores (the block run on the
// k-times shorter sequence, repeated back; at layer scope each position keeps its own stream), x the
// block's input. W is the ridge regression of the teacher y (the original block's output at full length, on
// the same input) on [u ; x ; 1]; the rank-R fit is the reduced-rank regression (the full fit projected onto
// the top R principal directions of its fitted values), stored factored.
//
// Sequential: the residual stream is carried layer by layer through the already-compressed layers, so layer
// i is fitted on what its compressed predecessors produce. Only that stream (tokens x d floats) is held;
// each layer's statistics are accumulated batch by batch in float64 (src/decide/statistics.ts), the heavy
// products running in ONNX Runtime. Padded positions never enter them.
//
// Units (FFN scope): the features also hold g, a few of the block's own hidden units computed at every
// position (passes/plugin/units.ts): those whose activation is least affine in their pre-activation, weighted
// by the size of their output row, measured on the first calibration samples. They give the restore the
// curvature inside a group that no map linear in [u ; x] has.
//
// Lambda: chosen per layer from a grid by the error on a held-out fifth of the calibration samples (every
// fifth sample). A fit that explains less of the held-out target than the mean restore keeps the mean.
//
// Target 'stream' (opt-in): y is replaced by what the block must output for the stream leaving its sublayer
// to reproduce the ORIGINAL model's stream there (passes/plugin/capture.ts), so that a layer also corrects
// what its compressed predecessors got wrong. The original model's stream is then carried too, through the
// original layers: two streams of tokens x d floats, never all activations.

import { createHash } from 'node:crypto';
import { buildFittedPlugin, type FittedWeights, type Scope } from '../../passes/plugin/builtin.js';
import { CAPTURE_TARGET, captureBlock, FIT_TARGETS, type FitTarget, streamAfter } from '../../passes/plugin/capture.js';
import { checkPluginContract, type Plugin } from '../../passes/plugin/contract.js';
import { pluginPass } from '../../passes/plugin/index.js';
import { type Units, unitsOf, unitsRefusal } from '../../passes/plugin/units.js';
import type { Layer } from '../analysis/index.js';
import { analyzeTransformer, macsOf, shapesAt } from '../analysis/index.js';
import { regionBetween } from '../analysis/region.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { NameAuthority } from '../ir/names.js';
import { Tensor } from '../ir/tensor.js';
import { detachAsInput, eliminateDeadCode } from '../ir/transforms.js';
import { DataType, tensorType } from '../ir/types.js';
import { decodeModel, encodeModel } from '../onnx/file.js';
import type { DataBatch, DataSet } from '../runtime/data.js';
import { openSession, run, type Session } from '../runtime/session.js';
import { type Matrix, matrix, reducedRank, ridge } from './linalg.js';
import { appendStatistics, NormalEquations, SHIFTS, shiftsOf, unshift } from './statistics.js';

/** What one layer's plugin is fitted as. */
export interface PluginSetting {
  ratio: number;
  scope: Scope;
  /** adapter rank; 'full' for the full-rank fit; default: the largest whose arithmetic stays within budget (budgetFor) */
  rank?: number | 'full';
  /** FFN scope: the block's hidden units computed at full length (default: as many as half of BUDGET buys) */
  units?: number;
}

export interface PluginFitOptions extends PluginSetting {
  /** layers to fit (as the model numbers them); default: every layer whose self-attention is not causal */
  layers?: number[];
  /** a setting of its own for some layers (the rest take ratio, scope and rank) */
  settings?: ReadonlyMap<number, PluginSetting>;
  /** samples per run (default 8) */
  batchSize?: number;
  threads?: number;
  onProgress?: (event: FitProgress) => void;
  /** sees the residual stream entering each fitted layer, batch by batch (what the layer is fitted on) */
  onStream?: (layer: number, batch: DataBatch, stream: Tensor) => void;
  /**
   * what each restore is fitted to: 'block', the original block's output on the same input (default), or
   * 'stream', what the block must output for the layer's stream to reproduce the original model's
   */
  target?: FitTarget;
}

export interface FitProgress {
  layer: number;
  stage: 'capture' | 'solve' | 'propagate';
  done: number;
  total: number;
}

export interface LayerFit {
  layer: number;
  scope: Scope;
  ratio: number;
  /** what the restore was fitted to (PluginFitOptions.target) */
  target: FitTarget;
  /** calibration samples and real positions fitted on, and held out */
  samples: number;
  tokens: number;
  heldOutTokens: number;
  lambda: number;
  rank: number | 'full';
  /** the block's hidden units the restore computes at full length (FFN scope; empty: none) */
  units: number[];
  /** held-out unexplained variance of the target: the mean restore's, the fit's, and x-only linear control's (null: not fitted) */
  unexplained: { mean: number; fitted: number; linearControl: number | null };
  /** 'mean': the fit did worse than the mean restore on held-out positions and was not used */
  restore: 'fitted' | 'mean';
  seconds: number;
}

export interface PluginFitResult {
  /** one plugin per fitted layer, with its provenance in metadata_props */
  plugins: Map<number, Model>;
  layers: LayerFit[];
  ratio: number;
  scope: Scope;
  /** how the default rank was chosen, when it was */
  rankNote?: string;
  modelSha256: string;
  dataSha256: string;
}

/** A fitted plugin of one layer in one setting. */
export interface VariantFit {
  /** index into the variants asked for */
  variant: number;
  plugin: Model;
  fit: LayerFit;
}

export interface VariantFitOptions {
  variants: readonly PluginSetting[];
  /** layers to fit (default: every non-causal one) */
  layers?: number[];
  /** leave this layer's variant unfitted (e.g. a cached fit exists) */
  skip?: (layer: number, variant: number) => boolean;
  batchSize?: number;
  threads?: number;
  onProgress?: (event: FitProgress) => void;
  /** fit the x-only linear control too (default true): a diagnostic a search can do without */
  control?: boolean;
}

export const STREAM = 'vcompile_stream';

/**
 * Fit plugins for `file` (a model at opset >= 11) on `data`, sequentially: each layer on the stream its
 * fitted predecessors produce.
 */
export async function fitPlugins(file: string, bytes: Uint8Array, data: DataSet, options: PluginFitOptions): Promise<PluginFitResult> {
  const target = options.target ?? 'block';
  if (!FIT_TARGETS.includes(target))
    throw new VcompileError(msg`${option('fitTarget', target, `target '${target}'`)}: expected ${FIT_TARGETS.join(' or ')}`);
  const context = fitContext(file, bytes, data, options);
  const targets = selectLayers(context.analysis.layers, options.layers);
  const plan = new Map(targets.map((l) => [l.index, [options.settings?.get(l.index) ?? options]]));
  const fitted = await fitLayers(context, plan, true, target, options);
  const result: PluginFitResult = {
    plugins: new Map(fitted.map((f) => [f.fit.layer, f.plugin])),
    layers: fitted.map((f) => f.fit),
    ratio: options.ratio,
    scope: options.scope,
    modelSha256: sha256(bytes),
    dataSha256: data.sha256,
  };
  const note = fitted.find((f) => f.rankNote)?.rankNote;
  if (note) result.rankNote = note;
  for (const f of fitted) stamp(f.plugin, f.fit, result.modelSha256, result.dataSha256);
  return result;
}

/**
 * Fit every variant for every layer independently: each layer on the original model's stream (one pass
 * through the model serves them all). What a search compares layer by layer.
 */
export async function fitPluginVariants(file: string, bytes: Uint8Array, data: DataSet, options: VariantFitOptions): Promise<VariantFit[]> {
  const context = fitContext(file, bytes, data, options);
  const targets = selectLayers(context.analysis.layers, options.layers);
  const plan = new Map(targets.map((l) => [l.index, options.variants.map((v, i) => (options.skip?.(l.index, i) ? undefined : v))]));
  const fitted = await fitLayers(context, plan, false, 'block', options);
  const [model, dataSha] = [sha256(bytes), data.sha256];
  for (const f of fitted) stamp(f.plugin, f.fit, model, dataSha);
  return fitted.map((f) => ({ variant: f.variant, plugin: f.plugin, fit: f.fit }));
}

interface FitContext {
  fresh: () => Model;
  original: Model;
  analysis: ReturnType<typeof analyzeTransformer> & { hidden: number };
  d: number;
  splits: Splits;
  session: SessionFlags;
  samples: number;
}

function fitContext(file: string, bytes: Uint8Array, data: DataSet, options: { batchSize?: number; threads?: number }): FitContext {
  const fresh = () => decodeModel(bytes, { label: file });
  const original = fresh();
  const analysis = analyzeTransformer(original);
  if (analysis.error) throw new VcompileError(`cannot fit plugins: transformer analysis stopped: ${analysis.error.message}`);
  const d = analysis.hidden;
  if (d === undefined) throw new VcompileError('cannot fit plugins: the hidden size of the model is not fixed');
  const batchSize = options.batchSize ?? 8;
  const heldIndices = [...Array(data.size).keys()].filter((i) => i % 5 === 4);
  const fitIndices = [...Array(data.size).keys()].filter((i) => i % 5 !== 4);
  if (heldIndices.length === 0)
    throw new VcompileError(
      `${data.source}: ${data.size} sample${data.size === 1 ? '' : 's'} is too few to hold some out for choosing lambda; give at least 5`,
    );
  const splits = { fit: data.subset(fitIndices).batches(batchSize), held: data.subset(heldIndices).batches(batchSize) };
  return {
    fresh,
    original,
    analysis: analysis as FitContext['analysis'],
    d,
    splits,
    session: { threads: options.threads, spinning: false },
    samples: fitIndices.length,
  };
}

interface Fitted extends VariantFit {
  rankNote?: string;
}

/**
 * The fitting loop: walk the layers carrying the stream; at each planned layer capture and solve every
 * setting asked for (undefined: skipped). Sequential: the stream goes on through the layer's fitted plugin
 * (one setting per layer); otherwise through the original layer. With the stream target the original
 * model's stream goes along through the original layers (the same tensors until the streams part).
 */
async function fitLayers(
  context: FitContext,
  plan: ReadonlyMap<number, readonly (PluginSetting | undefined)[]>,
  sequential: boolean,
  target: FitTarget,
  options: {
    onProgress?: (event: FitProgress) => void;
    onStream?: (layer: number, batch: DataBatch, stream: Tensor) => void;
    control?: boolean;
  },
): Promise<Fitted[]> {
  const { fresh, original, analysis, d, splits, session } = context;
  const fitted: Fitted[] = [];
  const last = Math.max(-1, ...[...plan].filter(([, s]) => s.some((v) => v)).map(([layer]) => layer));
  if (last < 0) return fitted;
  // every setting's rank and units, refused here, before any work
  const budgets = new Map(
    [...plan].map(([index, settings]) => [index, settings.map((s) => s && budgetFor(s, analysis.layers[index], original, d))]),
  );
  let streams = await streamsInto(fresh(), analysis.layers[0], splits, session);
  let originals = target === 'stream' ? streams : undefined;
  for (const layer of analysis.layers) {
    if (layer.index > last) break;
    const started = Date.now();
    const settings = plan.get(layer.index) ?? [];
    let plugin: Plugin | undefined;
    if (settings.some((s) => s) && options.onStream)
      for (const split of ['fit', 'held'] as const) splits[split].forEach((b, i) => options.onStream!(layer.index, b, streams[split][i]));
    // the original model's stream after each setting's block (what the stream target reproduces), and
    // leaving the layer when the two streams have parted
    let originalOut: Map<string, Streams> | undefined;
    if (originals) {
      const wanted = new Set(settings.flatMap((s) => (s ? [streamAfter(layer, s.scope).name] : [])));
      if (layer.index < last && (wanted.size || originals !== streams)) wanted.add(layer.output.name);
      const names = [...wanted];
      if (names.length) originalOut = await runSplits(sliceAt(fresh(), layer, names, d), splits, originals, session, names);
    }
    for (const [variant, setting] of settings.entries()) {
      if (!setting) continue;
      const targets = originalOut?.get(streamAfter(layer, setting.scope).name);
      const { rank, units: count, note } = budgets.get(layer.index)![variant]!;
      const units = count ? unitsOf(layer.ffn, d, await selectUnits(fresh(), layer, count, splits, streams, session, d)) : undefined;
      const stats = await capture(fresh(), layer, setting, units, splits, streams, targets, session, d, options.onProgress);
      checkTokens(stats.fit, layer.index);
      options.onProgress?.({ layer: layer.index, stage: 'solve', done: 0, total: 1 });
      const solved = await solve(stats, rank, d, units, options.control ?? true);
      const model = buildFittedPlugin(
        { ratio: setting.ratio, hidden: d, scope: setting.scope, opset: original.opsetVersion('') ?? 17 },
        solved.weights,
      );
      if (sequential) plugin = checkPluginContract(model, `fitted L${layer.index}`, sha256(encodeModel(model)));
      const fit: LayerFit = {
        layer: layer.index,
        scope: setting.scope,
        ratio: setting.ratio,
        target,
        samples: context.samples,
        tokens: stats.fit.count,
        heldOutTokens: stats.held.count,
        lambda: solved.lambda,
        rank,
        units: solved.weights.units?.units.indices ?? [],
        unexplained: solved.unexplained,
        restore: solved.restore,
        seconds: (Date.now() - started) / 1000,
      };
      fitted.push({ variant, plugin: model, fit, rankNote: setting.rank === undefined ? note : undefined });
    }
    if (layer.index < last) {
      const next = await propagate(fresh(), layer, plugin, splits, streams, session, options.onProgress);
      if (originals) originals = originals === streams && !plugin ? next : originalOut!.get(layer.output.name)!;
      streams = next;
    }
    if (sequential && fitted.length && fitted[fitted.length - 1].fit.layer === layer.index)
      fitted[fitted.length - 1].fit.seconds = (Date.now() - started) / 1000;
  }
  return fitted;
}

/** The fit's provenance, in the plugin's metadata_props. */
function stamp(plugin: Model, fit: LayerFit, model: string, data: string): void {
  const record = {
    model,
    data,
    layer: fit.layer,
    scope: fit.scope,
    ratio: fit.ratio,
    // recorded when not the default, so that default fits stay byte-identical to those made before it existed
    ...(fit.target === 'block' ? {} : { target: fit.target }),
    samples: fit.samples,
    tokens: fit.tokens,
    rank: fit.rank,
    ...(fit.units.length ? { units: fit.units } : {}),
    lambda: fit.lambda,
    restore: fit.restore,
  };
  plugin.metadataProps = [...(plugin.metadataProps ?? []), ['vcompile.fit', JSON.stringify(record)]];
}

function selectLayers(layers: readonly Layer[], requested: number[] | undefined): Layer[] {
  if (!requested) return layers.filter((l) => !l.selfAttention.causal);
  for (const index of requested) {
    const layer = layers[index];
    if (!layer) throw new VcompileError(`layer ${index} does not exist (the model has layers 0-${layers.length - 1})`);
    if (layer.selfAttention.causal)
      throw new VcompileError(`layer ${index} uses causal self-attention: merging positions would leak future tokens`);
  }
  return layers.filter((l) => requested.includes(l.index));
}

/**
 * Share of the block's MACs per position a default plugin's arithmetic may take (units and adapter together).
 * 2%, not the 3% first planned: the plugin's thin products and full-length adds run slower per MAC than the
 * block's wide products, so on BERT-base a 3% plugin cost 2-3.5% of the mean plugin's speed-up, and a 2% one at
 * most 1.6% (BENCHMARKS.md, "The default budget").
 */
export const BUDGET = 0.02;

/**
 * The adapter rank and the units: as asked, or by default within BUDGET of the block's MACs per position.
 * At FFN scope the units take half (a unit costs d MACs a position, a rank about 2d), the adapter the rest;
 * elsewhere the adapter takes it all. A rank is a multiple of 8, at least 8. Refuses units the block cannot have.
 */
function budgetFor(options: PluginSetting, layer: Layer, model: Model, d: number): { rank: number | 'full'; units: number; note?: string } {
  const asked = option('units', options.units, `units ${options.units}`);
  if (options.units !== undefined && !(Number.isSafeInteger(options.units) && options.units >= 0))
    throw new VcompileError(msg`${asked}: expected a whole number from 0`);
  if (options.units && options.scope !== 'ffn')
    throw new VcompileError(msg`${asked}: full-length units are a feed-forward block's hidden units; scope ${options.scope} has none`);
  const refusal = options.scope === 'ffn' ? unitsRefusal(layer.ffn, d) : 'no hidden units';
  if (options.units && refusal) throw new VcompileError(msg`layer ${layer.index}: ${asked}: ${refusal}`);
  if (options.units && options.units > layer.ffn.inner)
    throw new VcompileError(msg`layer ${layer.index}: ${asked}: the feed-forward block has ${layer.ffn.inner} hidden units`);
  const bounds =
    options.scope === 'ffn'
      ? [layer.ffn.input, layer.ffn.output]
      : options.scope === 'attention'
        ? [layer.selfAttention.input, layer.selfAttention.output]
        : [layer.input, layer.output];
  const seq = 128;
  const block =
    macsOf(regionBetween(bounds[0], bounds[1], model.graph.nodes), shapesAt(model, { batch: 1, seq }), `layer ${layer.index}`) / seq;
  const units = options.units ?? (refusal ? 0 : Math.min(Math.floor(((BUDGET / 2) * block) / d), Math.floor(layer.ffn.inner / 4)));
  if (options.rank !== undefined) return { rank: options.rank, units };
  // per position: hidden A_x (d r), z B (r d), and u A_u on the k-times shorter sequence (d r / k)
  const perRank = d * (2 + 1 / options.ratio);
  const share = units > 0 ? BUDGET / 2 : BUDGET;
  const rank = Math.min(Math.max(8, Math.floor((share * block) / perRank / 8) * 8), d);
  const cost = units * d + rank * (perRank + units);
  const unitsPart = units ? ` and ${units} full-length unit${units === 1 ? '' : 's'}` : '';
  return {
    rank,
    units,
    note: `rank ${rank}${unitsPart}: ${Math.round(cost)} MACs per position, ${((100 * cost) / block).toFixed(1)}% of the ${options.scope} block's ${Math.round(block)} (budget ${BUDGET * 100}%; the rank is at least 8)`,
  };
}

/**
 * The `m` hidden units of `layer`'s FFN whose activation is least affine in its pre-activation, weighted by
 * the squared norm of the unit's row of the down projection (what it adds to the output), over the real
 * positions of the first UNIT_SAMPLES calibration samples. Ties go to the lower index; returned in order.
 */
async function selectUnits(model: Model, layer: Layer, m: number, splits: Splits, streams: Streams, session: SessionFlags, d: number) {
  const { up, down, inner: f } = layer.ffn;
  sliceAt(model, layer, [up.output.name, down.input.name], d);
  const opened = await openSession(model, session);
  // per unit: count, sum p, sum a, sum p^2, sum a^2, sum p a
  const sums = Array.from({ length: 6 }, () => new Float64Array(f));
  try {
    let seen = 0;
    for (const [i, batch] of splits.fit.entries()) {
      if (seen >= UNIT_SAMPLES) break;
      seen += batch.samples.length;
      const out = await run(opened, feedsFor(opened, batch, streams.fit[i]));
      const [p, a] = [out[up.output.name].readFloat32(), out[down.input.name].readFloat32()];
      for (let row = 0; row * f < p.length; row++) {
        if (batch.real && !batch.real[row]) continue;
        for (let j = 0, o = row * f; j < f; j++, o++) {
          sums[0][j]++;
          sums[1][j] += p[o];
          sums[2][j] += a[o];
          sums[3][j] += p[o] * p[o];
          sums[4][j] += a[o] * a[o];
          sums[5][j] += p[o] * a[o];
        }
      }
    }
  } finally {
    await opened.release();
  }
  const w = down.weight.tensor.toFloat32();
  const score = (j: number) => {
    const [n, sp, sa, spp, saa, spa] = sums.map((s) => s[j]);
    const [vp, va, cpa] = [spp - (sp * sp) / n, saa - (sa * sa) / n, spa - (sp * sa) / n];
    const bend = vp > 0 ? va - (cpa * cpa) / vp : va;
    let out = 0;
    for (let i = 0; i < d; i++) out += (down.weight.transposed ? w[i * f + j] : w[j * d + i]) ** 2;
    return Math.max(bend, 0) * out;
  };
  const scores = Array.from({ length: f }, (_, j) => score(j));
  const order = [...scores.keys()].sort((i, j) => scores[j] - scores[i] || i - j);
  return order.slice(0, m).sort((i, j) => i - j);
}

/** Calibration samples that choose the units (their statistics are per unit: a few thousand positions do). */
const UNIT_SAMPLES = 32;

// ------------------------------------------------------------------------------------------ streams

export interface Splits {
  fit: DataBatch[];
  held: DataBatch[];
}

/** The residual stream entering each batch's current layer. */
export interface Streams {
  fit: Tensor[];
  held: Tensor[];
}

/** The stream entering `layer` (the first layer), for every batch. */
export async function streamsInto(model: Model, layer: Layer, splits: Splits, options: SessionFlags): Promise<Streams> {
  const value = model.graph.lookup(layer.input.name);
  if (!value) throw new Error(`internal: no value ${layer.input.name}`);
  model.graph.outputs = [value];
  eliminateDeadCode(model.graph);
  return (await runSplits(model, splits, undefined, options, [value.name])).get(value.name)!;
}

export interface SessionFlags {
  threads?: number;
  spinning: boolean;
}

/** `model` sliced to start at `layer`'s input (a graph input named vcompile_stream) and end at `end`. */
export function sliceAt(model: Model, layer: Layer, end: string[], d: number): Model {
  const names = NameAuthority.forModel(model);
  const input = model.graph.lookup(layer.input.name);
  if (!input) throw new Error(`internal: no value ${layer.input.name}`);
  detachAsInput(model.graph, input, STREAM, tensorType(DataType.FLOAT, ['batch', 'seq', d]), names);
  model.graph.outputs = end.map((name) => {
    const v = model.graph.lookup(name);
    if (!v) throw new Error(`internal: no value ${name}`);
    return v;
  });
  eliminateDeadCode(model.graph);
  model.graph.inputs = model.graph.inputs.filter((v) => v.name === STREAM || v.initializer || v.uses().length > 0);
  return model;
}

async function capture(
  model: Model,
  layer: Layer,
  options: PluginSetting,
  units: Units | undefined,
  splits: Splits,
  streams: Streams,
  targets: Streams | undefined,
  session: SessionFlags,
  d: number,
  onProgress: ((event: FitProgress) => void) | undefined,
) {
  sliceAt(model, layer, [layer.output.name], d);
  const m = units?.indices.length ?? 0;
  const captured = captureBlock(model, {
    layer: 0,
    scope: options.scope,
    ratio: options.ratio,
    target: targets ? 'stream' : 'block',
    units: units?.indices,
  });
  appendStatistics(model, captured, d, m);
  const stats = { fit: new NormalEquations(d, m), held: new NormalEquations(d, m) };
  const opened = await openSession(model, session);
  try {
    // the shifts: means over the first batch's real positions (a run with zero shifts)
    const zero = new Float32Array(d);
    const target = (split: keyof Streams, i: number): Record<string, Tensor> => (targets ? { [CAPTURE_TARGET]: targets[split][i] } : {});
    const probe = await run(opened, {
      ...feedsFor(opened, splits.fit[0], streams.fit[0]),
      ...target('fit', 0),
      ...shiftFeeds(zero, new Float32Array(d + m)),
    });
    const shifts = shiftsOf(probe);
    const total = splits.fit.length + splits.held.length;
    let done = 0;
    for (const split of ['fit', 'held'] as const) {
      for (const [i, batch] of splits[split].entries()) {
        const feeds = { ...feedsFor(opened, batch, streams[split][i]), ...target(split, i), ...shiftFeeds(shifts.shift, shifts.shiftX) };
        stats[split].add(await run(opened, feeds));
        onProgress?.({ layer: layer.index, stage: 'capture', done: ++done, total });
      }
    }
    return { ...stats, shifts };
  } finally {
    await opened.release();
  }
}

/** The stream leaving `layer` (with the fitted plugin, when there is one), for every batch. */
async function propagate(
  model: Model,
  layer: Layer,
  plugin: Plugin | undefined,
  splits: Splits,
  streams: Streams,
  session: SessionFlags,
  onProgress: ((event: FitProgress) => void) | undefined,
): Promise<Streams> {
  const d = streams.fit[0]?.dims[2] ?? streams.held[0].dims[2];
  sliceAt(model, layer, [layer.output.name], d);
  if (plugin) pluginPass({ plugins: [{ source: plugin.source }], layers: [0] }, () => plugin).run(model);
  const output = model.graph.outputs[0].name;
  const outputs = await runSplits(model, splits, streams, session, [output], (done, total) =>
    onProgress?.({ layer: layer.index, stage: 'propagate', done, total }),
  );
  return outputs.get(output)!;
}

/** `model` run on every batch of both splits (with `streams` as its stream input): the values `outputs` names. */
async function runSplits(
  model: Model,
  splits: Splits,
  streams: Streams | undefined,
  options: SessionFlags,
  outputs: string[],
  progress?: (done: number, total: number) => void,
): Promise<Map<string, Streams>> {
  const opened = await openSession(model, options);
  const out = new Map(outputs.map((name) => [name, { fit: [], held: [] } as Streams]));
  try {
    const total = splits.fit.length + splits.held.length;
    let done = 0;
    for (const split of ['fit', 'held'] as const) {
      for (const [i, batch] of splits[split].entries()) {
        const result = await run(opened, feedsFor(opened, batch, streams?.[split][i]));
        for (const name of outputs) out.get(name)![split].push(result[name]);
        progress?.(++done, total);
      }
    }
  } finally {
    await opened.release();
  }
  return out;
}

export function feedsFor(session: Session, batch: DataBatch, stream: Tensor | undefined): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const name of session.inputNames) {
    if (name === STREAM) feeds[name] = stream!;
    else if (batch.feeds[name]) feeds[name] = batch.feeds[name];
  }
  return feeds;
}

function shiftFeeds(shift: Float32Array, shiftX: Float32Array): Record<string, Tensor> {
  const [a, b] = SHIFTS;
  return {
    [a]: Tensor.fromArray(a, DataType.FLOAT, [shift.length], shift),
    [b]: Tensor.fromArray(b, DataType.FLOAT, [shiftX.length], shiftX),
  };
}

// ------------------------------------------------------------------------------------------ solving

function checkTokens(stats: NormalEquations, layer: number): void {
  if (stats.count < stats.n) {
    const units = stats.m ? ` + ${stats.m} units` : '';
    throw new VcompileError(
      `layer ${layer}: ${stats.count} calibration positions cannot fit a restore with ${stats.n} features per position (2 x hidden${units} + 1); give more samples`,
    );
  }
}

/** Ridge on [u ; x ; g ; 1], then the reduced rank; the x-only control if asked; the mean restore when the fit is worse. */
async function solve(
  stats: { fit: NormalEquations; held: NormalEquations; shifts: { shift: Float32Array; shiftX: Float32Array } },
  rank: number | 'full',
  d: number,
  units: Units | undefined,
  withControl: boolean,
) {
  const n = stats.fit.n;
  const { fit, held } = stats;
  const g = matrix(n, n, fit.g);
  const h = matrix(n, d, fit.h);
  const gHeld = matrix(n, n, held.g);
  const hHeld = matrix(n, d, held.h);
  const yyHeld = matrix(d, d, held.c);
  const full = await ridge({ g, h, gHeld, hHeld, yyHeld }, { unpenalized: [n - 1], seed: 0 });
  const meanError = held.meanError();
  const variance = held.targetVariance();
  let error = full.heldOutError;
  let weights: FittedWeights;
  const { shift, shiftX } = stats.shifts;
  if (rank === 'full') {
    unshift(full.w.data, d, d, shift, shiftX);
    weights = split(full.w, d, undefined, units);
  } else {
    const reduced = await reducedRank(full.w, g, rank, { gHeld, hHeld, yyHeld: meanError });
    error = reduced.heldOutError!;
    unshift(reduced.a.data, rank, d, shift, shiftX);
    weights = split(reduced.a, d, reduced.b, units);
  }
  const control = withControl ? await linearControl(fit, held, d) : null;
  const restore: 'fitted' | 'mean' = error < meanError ? 'fitted' : 'mean';
  if (restore === 'mean') weights = zeroWeights(d, rank === 'full' ? d : rank);
  return {
    weights,
    lambda: full.lambda,
    restore,
    unexplained: {
      mean: meanError / variance,
      fitted: Math.min(error, meanError) / variance,
      linearControl: control === null ? null : control / variance,
    },
  };
}

/** [u ; x ; g ; 1] x r coefficients as the plugin's matrices (rows 0..d-1: u, d..2d-1: x, then the m units, then the constant). */
function split(a: Matrix, d: number, b: Matrix | undefined, units: Units | undefined): FittedWeights {
  const r = a.cols;
  const m = units?.indices.length ?? 0;
  const rows = (from: number, count: number) => Float32Array.from(a.data.subarray(from * r, (from + count) * r));
  return {
    fromRestored: rows(0, d),
    fromHidden: rows(d, d),
    bias: rows(2 * d + m, 1),
    up: b ? Float32Array.from(b.data) : undefined,
    ...(units ? { units: { units, fromUnits: rows(2 * d, m) } } : {}),
  };
}

function zeroWeights(d: number, r: number): FittedWeights {
  return {
    fromRestored: new Float32Array(d * r),
    fromHidden: new Float32Array(d * r),
    bias: new Float32Array(r),
    up: r === d ? undefined : new Float32Array(r * d),
  };
}

/**
 * The control a fit must beat: the best per-token linear map of x alone (y ~ [x ; 1] V), whose held-out error
 * says how far the block is from linear. Its statistics are blocks of the same normal equations.
 */
async function linearControl(fit: NormalEquations, held: NormalEquations, d: number): Promise<number> {
  const sub = (s: NormalEquations) => {
    const n = s.n;
    const k = d + 1; // rows d..2d-1 (x) and n-1 (the constant) of [u ; x ; g ; 1]
    const row = (i: number) => (i < d ? d + i : n - 1);
    const g = matrix(k, k);
    const h = matrix(k, d);
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) g.data[i * k + j] = s.g[row(i) * n + row(j)];
      // x^T y = x^T r + x^T u: y = r + u
      for (let j = 0; j < d; j++) h.data[i * d + j] = s.h[row(i) * d + j] + s.g[row(i) * n + j];
    }
    // y^T y = r^T r + u^T r + r^T u + u^T u (d x d)
    const yy = matrix(d, d);
    for (let i = 0; i < d; i++)
      for (let j = 0; j < d; j++) yy.data[i * d + j] = s.c[i * d + j] + s.h[i * d + j] + s.h[j * d + i] + s.g[i * n + j];
    return { g, h, yy };
  };
  const t = sub(fit);
  const v = sub(held);
  const control = await ridge({ g: t.g, h: t.h, gHeld: v.g, hHeld: v.h, yyHeld: v.yy }, { unpenalized: [d] });
  return control.heldOutError;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
