// The plugin pass (Variator): around a block of each selected layer, compress the block's input by k,
// run the unchanged block on the short sequence, and restore the length:
//   hidden -> pad to a multiple of k -> plugin.compressed -> [block, copied] -> inner
//   plugin.restored(inner, hidden) -> crop -> where the block's result was used
// Padding costs a copy of the stream each way, so it is done no more than needed: not at all where the
// analysis proves the length a multiple of k; the pad arithmetic once per length and ratio; and where a
// block's input is the (cropped) result of the block before (consecutive layers at layer scope), from
// that block's uncropped result with its padded tail zeroed, so the crop between them goes away. The
// plugin itself is spliced streamlined (streamline.ts): its restore does less work, same function.
// Scopes: ffn (the feed-forward block), attention (the self-attention block), layer (the whole layer);
// for attention and layer the scores' masks and position biases are pooled to the compressed length.
// A plugin that declares the optional `keep` input gets which positions are real ([batch, seq], the
// model's padding mask, padded with zeros where hidden is), computed once and shared like the pooled masks.
// Everything is planned and checked first; the graph changes only once every layer is known to work.
// Plugin files are read above the pass (src/compile/load.ts) and handed in through a loader, which also
// generates `builtin:` plugins for the model's hidden size and opset.
import type { AttentionBlock, Layer, ScoreTerm, ShapeTable, TransformerAnalysis } from '../../src/analysis/index.js';
import { regionBetween, regionInputs, sequenceDependentInput } from '../../src/analysis/region.js';
import type { SymDim } from '../../src/analysis/symbolic.js';
import { msg, option, VcompileError } from '../../src/errors.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import { type Graph, Value as IrValue, type Node, replaceAllUses, type Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { MIN_OPSET, VersionedOps } from '../../src/ir/ops.js';
import { checkOpsetMerge } from '../../src/ir/opsets.js';
import { cloneNodes } from '../../src/ir/transforms.js';
import { DataType } from '../../src/ir/types.js';
import { analyzeFor, BlockRewriter, formatLayers, recordProvenance } from '../common/blocks.js';
import { translateLayers } from '../common/layers.js';
import type { Pass, PipelineContext } from '../pipeline.js';
import type { Scope } from './builtin.js';
import { checkRatio, type Plugin } from './contract.js';
import { findPaddingMask, keepOf, type PaddingMask } from './keep.js';
import { poolGroups, poolGroupsOverReal, SequencePadding } from './sequence.js';
import { streamlinePlugin } from './streamline.js';

/** What a `builtin:` plugin is generated for. */
export interface PluginTarget {
  hidden: number;
  opset: number;
}

/** Gives the plugin a request names (a file, or builtin:KIND:K[:SCOPE] generated for `target`), checked against the contract. */
export type PluginLoader = (source: string, target: PluginTarget) => Plugin;

export interface PluginRequest {
  /** a plugin file or builtin:KIND:K[:SCOPE] */
  source: string;
  /** apply to this layer only (`--plugin L=FILE`); otherwise to every selected layer */
  layer?: number;
}

export interface PluginPassOptions {
  plugins: PluginRequest[];
  /** layers to compress (0-based); default: every layer whose self-attention is not causal */
  layers?: number[];
  /** causal self-attention layers the user explicitly accepts compressing (leaks future tokens) */
  compressCausal?: number[];
  /** refuse, saying why, when no layer gets a plugin (instead of returning the model unchanged) */
  refuseNoop?: boolean;
}

/** A score term to shorten: which axes follow the sequence, and how it acts on the scores. */
interface PooledTerm {
  term: ScoreTerm;
  axes: number[];
  rank: number;
  elemType: number;
  /** a position bias pooled over real positions only (the plugin declares keep; axis 0 is the batch or 1) */
  overReal: boolean;
}

export interface Placement {
  layer: Layer;
  plugin: Plugin;
  hidden: Value;
  output: Value;
  region: Node[];
  /** the sequence dim of `hidden`, as the analysis knows it (undefined: unknown) */
  seq: SymDim;
  terms: PooledTerm[];
  /** for a plugin that declares `keep`: the model's padding mask (none: every position is real) */
  keep?: { mask?: PaddingMask; key: string };
}

export interface PluginReport {
  layers: { layer: number; scope: Scope; ratio: number; plugin: string }[];
  skippedCausal: number[];
  removedNodes: number;
}

export function pluginPass(options: PluginPassOptions, load: PluginLoader): Pass<PluginReport> {
  return {
    name: 'plugins',
    run(model, context) {
      const analysis = analyzeFor(model, 'plugins');
      const placements = plan(model, analysis, inInputNumbers(options, context), load);
      if (options.refuseNoop && placements.length === 0) throw nothingCompressed(analysis);
      const rewriter = new PluginRewriter(model);
      for (const p of placements) rewriter.apply(p);
      const removed = rewriter.finish();
      recordPlugins(model, placements);
      const skipped = causalLayers(analysis).filter((i) => !placements.some((p) => p.layer.index === i));
      return {
        model,
        modified: placements.length > 0,
        summary: summarizePlacements(placements) + (skipped.length ? `; causal layers left alone: ${skipped.join(', ')}` : ''),
        report: {
          layers: placements.map((p) => ({ layer: p.layer.index, scope: p.plugin.scope, ratio: p.plugin.ratio, plugin: p.plugin.source })),
          skippedCausal: skipped,
          removedNodes: removed.nodes,
        },
      };
    },
  };
}

/**
 * Layer numbers in the options are the input model's. After a pass that renumbered layers (modules), they
 * are translated, and by default plugins go on the original layers that remain, not inside modules.
 */
export function inInputNumbers(options: PluginPassOptions, context: PipelineContext | undefined): PluginPassOptions {
  const layerMap = context?.layerMap;
  if (!layerMap) return options;
  const remaining = layerMap.flatMap((original, index) => (original === null ? [] : [index]));
  return {
    plugins: options.plugins.map((p) => (p.layer === undefined ? p : { ...p, layer: translateLayers(layerMap, [p.layer], 'plugins')[0] })),
    layers: options.layers ? translateLayers(layerMap, options.layers, 'layers') : remaining,
    compressCausal: options.compressCausal && translateLayers(layerMap, options.compressCausal, 'compressCausal'),
  };
}

// ------------------------------------------------------------------------------------------ plan

export function plan(
  model: Model,
  analysis: TransformerAnalysis & { hidden: number },
  options: PluginPassOptions,
  loader: PluginLoader,
): Placement[] {
  const opset = model.opsetVersion('') ?? 0;
  if (opset < MIN_OPSET)
    throw new VcompileError(`plugins need opset >= ${MIN_OPSET} (dynamic Pad and Slice); the model declares opset ${opset}`);
  const hidden = analysis.hidden;
  const loaded = new Map<string, Plugin>();
  const load = (source: string) => {
    if (!loaded.has(source)) loaded.set(source, loader(source, { hidden, opset }));
    return loaded.get(source)!;
  };
  const defaults = options.plugins.filter((r) => r.layer === undefined);
  if (defaults.length > 1)
    throw new VcompileError(
      msg`give one ${option('plugins', undefined, 'plugin')} for all layers, and ${option('plugins', 'L=FILE', 'per-layer plugins')} for single layers`,
    );
  const byLayer = new Map(options.plugins.filter((r) => r.layer !== undefined).map((r) => [r.layer!, load(r.source)]));
  const fallback = defaults[0] && load(defaults[0].source);
  for (const plugin of loaded.values()) checkPluginFits(plugin, model, hidden);

  const count = analysis.layers.length;
  for (const index of [...(options.layers ?? []), ...byLayer.keys(), ...(options.compressCausal ?? [])]) {
    if (!Number.isInteger(index) || index < 0 || index >= count)
      throw new VcompileError(`layer ${index} does not exist (the model has layers 0-${count - 1})`);
  }
  const explicit = new Set([...(options.layers ?? []), ...byLayer.keys()]);
  const allowedCausal = new Set(options.compressCausal ?? []);
  const selected = analysis.layers.filter((layer) => {
    const chosen = options.layers
      ? options.layers.includes(layer.index) || byLayer.has(layer.index)
      : byLayer.has(layer.index) || !!fallback;
    if (!chosen) return false;
    if (!layer.selfAttention.causal || allowedCausal.has(layer.index)) return true;
    if (explicit.has(layer.index)) {
      throw new VcompileError(
        msg`layer ${layer.index} uses causal self-attention: merging positions would leak future tokens (${option('compressCausal', layer.index)} forces it)`,
      );
    }
    return false;
  });
  return selected.map((layer) => place(layer, byLayer.get(layer.index) ?? fallback!, analysis));
}

/** Why a compile that asked for plugins placed none. */
export function nothingCompressed(analysis: TransformerAnalysis): VcompileError {
  const causal = causalLayers(analysis);
  if (causal.length === 0) return new VcompileError('no layer was compressed: the selection holds no layer');
  const every = causal.length === analysis.layers.length;
  return new VcompileError(
    msg`no layer was compressed: ${every ? 'every layer uses' : 'the selected layers use'} causal self-attention (layer${causal.length === 1 ? '' : 's'} ${formatLayers(causal)}); ${option('compressCausal', 'LAYERS')} compresses them anyway, leaking future tokens`,
  );
}

function causalLayers(analysis: TransformerAnalysis): number[] {
  return analysis.layers.filter((l) => l.selfAttention.causal).map((l) => l.index);
}

function checkPluginFits(plugin: Plugin, model: Model, hidden: number): void {
  if (plugin.hidden !== undefined && plugin.hidden !== hidden) {
    throw new VcompileError(`plugin ${plugin.source}: hidden size ${plugin.hidden} does not match the model's ${hidden}`);
  }
  // the contract checked the ratio when the plugin fixes its hidden size; otherwise it is checked at the model's
  if (plugin.hidden === undefined) checkRatio(plugin, hidden);
  for (const { domain, version } of checkOpsetMerge(plugin.model, model, plugin.source)) model.requireOpset(domain, version);
}

/** Where the plugin goes in `layer`, checked: the region must be able to run on a shorter sequence. */
export function place(layer: Layer, plugin: Plugin, analysis: TransformerAnalysis): Placement {
  const { hidden, output, attention } = scopeBounds(layer, plugin.scope);
  const region = regionBetween(hidden, output, analysis.context.graph.nodes);
  const where = `layer ${layer.index} (${plugin.scope} scope)`;
  if (region.length === 0) throw new VcompileError(`${where}: nothing lies between ${hidden.name} and ${output.name}`);
  const inside = new Set(region);
  const terms = (attention?.terms ?? []).filter((t) => !(t.value.producer && inside.has(t.value.producer)));
  const unknown = terms.find((t) => t.kind === 'unknown');
  if (unknown)
    throw new VcompileError(`${where}: cannot tell how to shorten ${unknown.value.name}, added to the attention scores at ${unknown.node}`);
  const shapes = analysis.context.shapes;
  const seqAtoms = new Set(shapes.dim(hidden, 1)?.atoms() ?? []);
  const dependent = sequenceDependentInput(regionInputs(region), new Set([hidden, ...terms.map((t) => t.value)]), seqAtoms, shapes);
  if (dependent) {
    throw new VcompileError(
      `${where}: the block reads ${dependent.name}${dependent.producer ? ` (from ${dependent.producer})` : ''}, which follows the sequence length; it cannot run on the compressed sequence`,
    );
  }
  const pooled = terms.map((term) => {
    const axes = poolAxes(term, hidden, shapes, where);
    const rank = shapes.rank(term.value)!;
    const first = shapes.dim(term.value, 0);
    const batchFirst = rank > axes.length && !!first && (first.equals(1) || first.equals(shapes.dim(hidden, 0) ?? -1));
    const overReal = !!plugin.keepInput && term.kind === 'positionBias' && term.mode !== 'select' && batchFirst;
    return { term, axes, rank, elemType: shapes.get(term.value).dtype ?? DataType.FLOAT, overReal };
  });
  return {
    layer,
    plugin,
    hidden,
    output,
    region,
    seq: shapes.dim(hidden, 1),
    terms: pooled,
    ...(plugin.keepInput ? { keep: keepSource(layer, hidden, analysis) } : {}),
  };
}

/** Where `keep` comes from: the padding mask the layer's self-attention reads, or none; `key` shares it. */
function keepSource(layer: Layer, hidden: Value, analysis: TransformerAnalysis): { mask?: PaddingMask; key: string } {
  const mask = findPaddingMask(layer.selfAttention, hidden, analysis.context);
  if (mask) return { mask, key: `mask ${mask.input.name}` };
  const shapes = analysis.context.shapes;
  return { key: `all ${shapes.dim(hidden, 0) ?? '?'} x ${shapes.dim(hidden, 1) ?? '?'}` };
}

function scopeBounds(layer: Layer, scope: Scope): { hidden: Value; output: Value; attention?: AttentionBlock } {
  switch (scope) {
    case 'ffn':
      return { hidden: layer.ffn.input, output: layer.ffn.output };
    case 'attention':
      return { hidden: layer.selfAttention.input, output: layer.selfAttention.output, attention: layer.selfAttention };
    case 'layer':
      return { hidden: layer.input, output: layer.output, attention: layer.selfAttention };
  }
}

/** The axes of a score term that follow the sequence: the last (keys) must; the one before (queries) may. */
function poolAxes(term: ScoreTerm, hidden: Value, shapes: ShapeTable, where: string): number[] {
  const shape = shapes.shape(term.value);
  const seq = shapes.dim(hidden, 1);
  const isSeq = (axis: number) => !!seq && !!shape && shape.length >= -axis && !!shape[shape.length + axis]?.equals(seq);
  if (!isSeq(-1)) {
    throw new VcompileError(`${where}: cannot tell which axes of ${term.value.name} (applied to the attention scores) follow the sequence`);
  }
  return isSeq(-2) ? [-1, -2] : [-1];
}

// --------------------------------------------------------------------------------------- rewrite

/** A stream padded to a multiple of k, and how to crop a result of the same length back. */
interface PaddedStream {
  value: Value;
  crop: (restored: Value) => Value;
  padding?: SequencePadding;
}

export class PluginRewriter extends BlockRewriter {
  readonly ops: (b: GraphBuilder) => VersionedOps;
  private readonly pooled = new Map<string, Value>();
  private readonly keeps = new Map<string, Value>();
  /** per sequence length and ratio: its padding, computed once */
  private readonly paddings = new Map<string, SequencePadding>();
  /** a cropped block result -> the uncropped one and its padding (the next block may start from it) */
  private readonly uncropped = new Map<Value, { restored: Value; padding: SequencePadding }>();
  private readonly streamlined = new Map<Plugin, Plugin>();

  constructor(model: Model) {
    super(model);
    const opset = model.opsetVersion('') ?? MIN_OPSET;
    this.ops = (b) => new VersionedOps(b, opset);
  }

  /** Rewrite the model's graph: the block's result is replaced by the plugin-wrapped computation. */
  apply(p: Placement): void {
    const main = this.builder(this.model.graph, p);
    this.replace(p.output, this.compressedRun(p, main, main));
  }

  builder(graph: Graph, p: Placement): GraphBuilder {
    return new GraphBuilder(graph, this.names, { prefix: `vcompile/plugin/L${p.layer.index}/` });
  }

  /**
   * Build, with `b` (the main graph or an If branch), the block run on the compressed sequence, wrapped in
   * the plugin; returns the restored, cropped result. Plugin weights and pooled masks go to `main`.
   */
  compressedRun(p: Placement, b: GraphBuilder, main: GraphBuilder): Value {
    const plugin = this.streamline(p.plugin);
    const k = plugin.ratio;
    const hidden = this.current(p.hidden);
    const stream = this.padStream(p, b, main, hidden);
    const inner = new IrValue(this.names.fresh(`vcompile/plugin/L${p.layer.index}/inner`));
    const inputs = new Map([
      [plugin.hiddenInput, stream.value],
      [plugin.innerInput, inner],
    ]);
    if (plugin.keepInput) inputs.set(plugin.keepInput, this.keep(main, this.ops(main), p, hidden, stream.padding));
    const outputs = this.splice(plugin, b, inputs, main);
    const pluginOutput = (v: Value) => outputs[plugin.model.graph.outputs.indexOf(v)];
    const mapping = new Map<Value, Value>([
      [p.hidden, pluginOutput(plugin.compressed)],
      [hidden, pluginOutput(plugin.compressed)],
    ]);
    for (const pooled of p.terms) {
      const keep = pooled.overReal ? this.keep(main, this.ops(main), p, hidden) : undefined;
      mapping.set(pooled.term.value, this.pool(main, this.ops(main), pooled, k, keep));
    }
    replaceAllUses(inner, this.copyRegion(p, b, mapping));
    const restored = pluginOutput(plugin.restored);
    const result = stream.crop(restored);
    if (stream.padding) this.uncropped.set(result, { restored, padding: stream.padding });
    return result;
  }

  /**
   * `hidden` padded to a multiple of the plugin's ratio, built with `b`: as it is where the analysis proves
   * its length a multiple already; from the uncropped result of the block before, its tail zeroed, where
   * `hidden` is that block's cropped result in the same graph (the crop then goes unused unless something
   * else reads it); else padded with zeros. Padding (length, amount) is computed once per length and ratio.
   */
  private padStream(p: Placement, b: GraphBuilder, main: GraphBuilder, hidden: Value): PaddedStream {
    const k = p.plugin.ratio;
    if (k === 1 || (p.seq && p.seq.divExact(k) !== undefined)) return { value: hidden, crop: (restored) => restored };
    const padding = this.padding(p, main, hidden);
    const ops = this.ops(b);
    const crop = (restored: Value) => padding.crop(b, ops, restored, 1);
    const before = this.uncropped.get(hidden);
    if (before && before.padding === padding && before.restored.graph === b.graph)
      return { value: padding.zeroTail(b, before.restored), crop, padding };
    return { value: padding.pad(ops, hidden, 1, 3, b.scalar('zero', 0)), crop, padding };
  }

  /** The padding of `p`'s sequence length to a multiple of its ratio, shared by every block of that length. */
  private padding(p: Placement, main: GraphBuilder, hidden: Value): SequencePadding {
    // an unknown length is shared by no other block: the key names the value it is read from
    const key = `${p.seq?.toString() ?? `? ${hidden.name}`}|${p.plugin.ratio}`;
    let padding = this.paddings.get(key);
    if (!padding) this.paddings.set(key, (padding = new SequencePadding(main, this.ops(main), hidden, 1, p.plugin.ratio)));
    return padding;
  }

  /** `plugin` as it is spliced: streamlined once, so that its weights are still stored once. */
  private streamline(plugin: Plugin): Plugin {
    let streamlined = this.streamlined.get(plugin);
    if (!streamlined) this.streamlined.set(plugin, (streamlined = streamlinePlugin(plugin)));
    return streamlined;
  }

  /** Which positions of `p`'s block input are real ([batch, seq] float), for a plugin that declares keep. */
  realPositions(p: Placement, b: GraphBuilder): Value {
    return this.keep(b, this.ops(b), p, this.current(p.hidden));
  }

  /** The block as it is (no plugin), built with `b`: the uncompressed branch of a switchable model. */
  uncompressedRun(p: Placement, b: GraphBuilder): Value {
    return this.copyRegion(p, b, new Map([[p.hidden, this.current(p.hidden)]]));
  }

  private copyRegion(p: Placement, b: GraphBuilder, mapping: Map<Value, Value>): Value {
    cloneNodes(p.region, b, mapping);
    const result = mapping.get(p.output);
    if (!result) throw new Error(`internal: the copied region does not compute ${p.output.name}`);
    return result;
  }

  /**
   * `keep` for `p`'s plugin, padded with zeros as hidden is by `padding` (none: as it is), shared by every
   * layer with the same padding mask (built from `hidden`'s shape, in the main graph, when the model has
   * none).
   */
  private keep(b: GraphBuilder, ops: VersionedOps, p: Placement, hidden: Value, padding?: SequencePadding): Value {
    const key = (ratio: number) => `${p.keep!.key}|${ratio}`;
    let keep = this.keeps.get(key(1));
    if (!keep) this.keeps.set(key(1), (keep = keepOf(b, ops, p.keep!.mask, hidden)));
    if (!padding) return keep;
    let padded = this.keeps.get(key(padding.k));
    if (!padded) this.keeps.set(key(padding.k), (padded = padding.pad(ops, keep, 1, 2, b.scalar('zero', 0))));
    return padded;
  }

  /**
   * A score term pooled to the compressed length, shared by every layer that reads it; over the real
   * positions `keep` marks ([batch, seq], unpadded), when given.
   */
  private pool(b: GraphBuilder, ops: VersionedOps, { term, axes, rank, elemType }: PooledTerm, k: number, keep?: Value): Value {
    if (k === 1) return term.value;
    const key = `${term.value.name}|${k}|${term.mode}|${term.keepWhen}|${keep?.name ?? ''}`;
    const cached = this.pooled.get(key);
    if (cached) return cached;
    const spec = { mode: term.mode, keepWhen: term.keepWhen, elemType };
    const pooled =
      keep && spec.mode !== 'select'
        ? poolGroupsOverReal(b, ops, term.value, rank, axes, k, { ...spec, mode: spec.mode }, keep)
        : poolGroups(b, ops, term.value, rank, axes, k, spec);
    this.pooled.set(key, pooled);
    return pooled;
  }
}

/** "layers 0-2: ffn k=4 (builtin:mean:4)", one clause per plugin. */
export function summarizePlacements(placements: readonly Placement[]): string {
  if (placements.length === 0) return 'no layer compressed';
  const byPlugin = new Map<Plugin, number[]>();
  for (const p of placements) byPlugin.set(p.plugin, [...(byPlugin.get(p.plugin) ?? []), p.layer.index]);
  return [...byPlugin]
    .map(
      ([plugin, layers]) =>
        `layer${layers.length > 1 ? 's' : ''} ${formatLayers(layers)}: ${plugin.scope} k=${plugin.ratio} (${plugin.source})`,
    )
    .join('; ');
}

/** `vcompile.plugins`: each plugin applied, with its sha256 and the layers it went on. */
export function recordPlugins(model: Model, placements: readonly Placement[]): void {
  const byPlugin = new Map<Plugin, number[]>();
  for (const p of placements) byPlugin.set(p.plugin, [...(byPlugin.get(p.plugin) ?? []), p.layer.index]);
  const applied = [...byPlugin].map(([plugin, layers]) => ({
    source: plugin.source,
    sha256: plugin.sha256,
    ratio: plugin.ratio,
    scope: plugin.scope,
    layers,
  }));
  recordProvenance(model, 'vcompile.plugins', applied);
}
