// The modular pass (Modular Transformers): runs of consecutive layers replaced by modules.
//   --module START-END=m.onnx           a module file under the contract (contract.ts), spliced in with the
//                                       span's input as `hidden` and the model's own attention bias
//   --module START-END=builtin:keep-first  the span's first layer only (LayerDrop-style)
//   --module START-END=builtin:average     one layer: the first layer's structure, each weight the mean
//                                          of the span's layers' (average.ts)
// The removed layers' nodes and weights go with dead-code elimination. Everything is planned and checked
// first; the model changes only once every placement is known to work, so a refusal leaves it as it was.
// Module files are read above the pass (src/compile/load.ts) and handed in through a loader. The pass
// renumbers layers: it tells later passes how, through the pipeline context's layer map.
import { analyzeTransformer, type TransformerAnalysis } from '../../src/analysis/index.js';
import { type Label, msg, option, VcompileError } from '../../src/errors.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { checkOpsetMerge } from '../../src/ir/opsets.js';
import { cloneNodes } from '../../src/ir/transforms.js';
import { DataType, dataTypeName, isTensorType } from '../../src/ir/types.js';
import { BlockRewriter, recordProvenance } from '../common/blocks.js';
import { composeLayerMaps } from '../common/layers.js';
import type { Pass } from '../pipeline.js';
import { type Averaged, averageLayers } from './average.js';
import type { Module } from './contract.js';
import { attentionBias, checkRemovable, constantDerived, describeSpan, type Span, spanName } from './span.js';

/** Gives the module a request names (a file), checked against the contract, for a model at `target.opset`. */
export type ModuleLoader = (source: string, target: { opset: number }) => Module;

export const BUILTIN_MODULES = ['keep-first', 'average'] as const;
export type BuiltinModule = (typeof BUILTIN_MODULES)[number];

export interface ModuleRequest {
  /** first and last layer replaced (0-based, inclusive) */
  start: number;
  end: number;
  /** a module file, or builtin:keep-first / builtin:average */
  source: string;
  /** how messages name the request (default: the --module flag it comes from) */
  label?: string;
}

export interface ModularPassOptions {
  modules: ModuleRequest[];
  /** modules already loaded, by source (the assembler loads each file once) */
  loaded?: ReadonlyMap<string, Module>;
}

/** What the pass did to one span. */
export interface PlacedModule {
  start: number;
  end: number;
  kind: 'file' | BuiltinModule;
  source: string;
  sha256?: string;
}

export interface ModularReport {
  modules: PlacedModule[];
  removedNodes: number;
  removedInitializers: number;
  /**
   * For each layer of the output model (as analyzeTransformer numbers them), its index in the input
   * model, or null for a layer inside a module: translates plugin layer numbers after modules.
   */
  layerMap: (number | null)[];
  /** set when the output model's layers could not all be found (layerMap then covers those found) */
  layerMapNote?: string;
  notes: string[];
}

/** How messages name a request: its label, or a reference to the module option that made it. */
function flag(r: ModuleRequest): Label {
  const spec = `${r.start}-${r.end}=${r.source}`;
  return r.label ?? option('modules', spec, `module ${spec}`);
}

function builtinKind(source: string, r: ModuleRequest): BuiltinModule | undefined {
  if (!source.startsWith('builtin:')) return undefined;
  const kind = source.slice('builtin:'.length);
  if (!(BUILTIN_MODULES as readonly string[]).includes(kind)) {
    throw new VcompileError(
      msg`${flag(r)}: unknown built-in module '${kind}' (there are ${BUILTIN_MODULES.map((k) => `builtin:${k}`).join(' and ')})`,
    );
  }
  return kind as BuiltinModule;
}

export function modularPass(options: ModularPassOptions, load: ModuleLoader): Pass<ModularReport> {
  return {
    name: 'modules',
    run(model, context) {
      const analysis = analyzeTransformer(model);
      const placements = planModules(model, analysis, options, load);
      const rewriter = new ModuleRewriter(model);
      for (const p of placements) rewriter.apply(p);
      const removed = rewriter.finish();
      recordProvenance(model, 'vcompile.modules', placements.map(describePlacement));
      const report: ModularReport = {
        modules: placements.map(describePlacement),
        removedNodes: removed.nodes,
        removedInitializers: removed.initializers,
        ...layerMap(model, analysis),
        notes: placements.flatMap((p) => p.notes),
      };
      return {
        model,
        modified: placements.length > 0,
        report,
        summary: describeModules(report)
          .map((line) => line.replace(/^modules: /, ''))
          .join('; '),
        context: { ...context, layerMap: composeLayerMaps(context?.layerMap, report.layerMap) },
      };
    },
  };
}

/** One line per placed module, the layer map, and the pass's notes. */
export function describeModules(report: ModularReport): string[] {
  const lines = report.modules.map((m) => `modules: ${spanName(m.start, m.end)} <- ${m.kind === 'file' ? m.source : `builtin:${m.kind}`}`);
  lines.push(
    `modules: removed ${report.removedNodes} nodes and ${report.removedInitializers} weights; output layers are ${formatLayerMap(report.layerMap)}`,
  );
  if (report.layerMapNote) lines.push(`modules: note: ${report.layerMapNote}`);
  for (const note of report.notes) lines.push(`modules: note: ${note}`);
  return lines;
}

function formatLayerMap(map: readonly (number | null)[]): string {
  return `[${map.map((i) => (i === null ? 'module' : String(i))).join(', ')}] (original index per layer)`;
}

// ------------------------------------------------------------------------------------------ plan

export interface Placement {
  request: ModuleRequest;
  kind: PlacedModule['kind'];
  span: Span;
  module?: Module;
  /** the model's value wired to the module's attention_bias */
  bias?: Value;
  average?: Averaged;
  notes: string[];
}

/** Check every request against the model; throws the first problem, changing nothing. */
export function planModules(model: Model, analysis: TransformerAnalysis, options: ModularPassOptions, load: ModuleLoader): Placement[] {
  if (options.modules.length === 0) return [];
  if (analysis.error) throw new VcompileError(`cannot place modules: transformer analysis stopped: ${analysis.error.message}`);
  const hidden = analysis.hidden;
  if (hidden === undefined) throw new VcompileError('cannot place modules: the hidden size of the model is not fixed');
  const constantValues = constantDerived(model.graph);
  const requests = [...options.modules].sort((a, b) => a.start - b.start || a.end - b.end);
  const spans = requests.map((r) => describeSpan(analysis, r.start, r.end, constantValues, flag(r)));
  for (let i = 1; i < requests.length; i++) {
    const [a, b] = [requests[i - 1], requests[i]];
    if (b.start <= a.end) throw new VcompileError(msg`${flag(a)} and ${flag(b)} overlap (${spanName(b.start, Math.min(a.end, b.end))})`);
  }
  const loaded = new Map(options.loaded ?? []);
  return requests.map((request, i) => {
    const span = spans[i];
    // a module handed in already loaded (e.g. fitted from data) is placed like a file, whatever its name
    const kind = loaded.has(request.source) ? undefined : builtinKind(request.source, request);
    const what = flag(request);
    if (kind === 'keep-first') {
      const dropped = span.start === span.end ? [] : describeSpan(analysis, span.start + 1, span.end, constantValues, what).region;
      checkRemovable(dropped, span.output, analysis, msg`${what}: ${spanName(span.start + 1, span.end)}`);
      return { request, kind, span, notes: [] };
    }
    checkRemovable(span.region, span.output, analysis, msg`${what}: ${spanName(span.start, span.end)}`);
    if (kind === 'average') return { request, kind, span, average: averageLayers(span, analysis, constantValues, what), notes: [] };
    const module = loaded.get(request.source) ?? load(request.source, { opset: model.opsetVersion('') ?? 0 });
    loaded.set(request.source, module);
    return { request, kind: 'file', span, module, ...fitModule(module, model, span, analysis, hidden, what) };
  });
}

/** Whether `module` can stand in for `span`: span length, hidden size, opsets, attention bias. */
function fitModule(
  module: Module,
  model: Model,
  span: Span,
  analysis: TransformerAnalysis,
  hidden: number,
  what: Label,
): { bias?: Value; notes: string[] } {
  const count = span.end - span.start + 1;
  if (module.span !== count) {
    throw new VcompileError(
      msg`${what}: the module replaces ${module.span} layer${module.span === 1 ? '' : 's'} (vcompile.span = ${module.span}) but ${spanName(span.start, span.end)} ${count === 1 ? 'is 1 layer' : `are ${count} layers`}`,
    );
  }
  if (module.hidden !== undefined && module.hidden !== hidden)
    throw new VcompileError(`module ${module.source}: hidden size ${module.hidden} does not match the model's ${hidden}`);
  const stream = analysis.context.shapes.get(span.hidden).dtype;
  if (stream !== undefined && stream !== DataType.FLOAT)
    throw new VcompileError(msg`${what}: the model's residual stream is ${dataTypeName(stream)}; modules take and return float`);
  checkOpsetMerge(module.model, model, module.source, 'module');
  const notes: string[] = [];
  const single = span.start === span.end;
  if (!module.biasInput) {
    if (span.others.length)
      notes.push(
        `module ${module.source} takes no attention_bias: it ignores what ${spanName(span.start, span.end)} ${single ? 'applies to its' : 'apply to their'} attention scores`,
      );
    return { notes };
  }
  const bias = attentionBias(span, analysis, what);
  if (!bias)
    throw new VcompileError(
      msg`${what}: the module takes attention_bias, but ${spanName(span.start, span.end)} ${single ? 'applies nothing to its' : 'apply nothing to their'} attention scores`,
    );
  checkBiasType(module, bias, analysis, what);
  return { bias, notes };
}

function checkBiasType(module: Module, bias: Value, analysis: TransformerAnalysis, what: Label): void {
  const declared = module.biasInput!.type;
  if (!isTensorType(declared)) throw new VcompileError(`module ${module.source}: attention_bias must be a tensor`);
  const info = analysis.context.shapes.get(bias);
  if (declared.elemType !== undefined && info.dtype !== undefined && declared.elemType !== info.dtype) {
    throw new VcompileError(
      msg`${what}: the module's attention_bias is ${dataTypeName(declared.elemType)} but the model's (${bias.name}) is ${dataTypeName(info.dtype)}`,
    );
  }
  const theirs = declared.shape;
  const ours = info.shape;
  if (!theirs || !ours) return;
  if (theirs.length !== ours.length)
    throw new VcompileError(
      msg`${what}: the module's attention_bias has rank ${theirs.length} but the model's (${bias.name}) has rank ${ours.length}`,
    );
  theirs.forEach((d, axis) => {
    const mine = ours[axis]?.constant;
    if (d.value !== undefined && mine !== d.value) {
      throw new VcompileError(
        msg`${what}: the module's attention_bias has ${d.value} at axis ${axis} but the model's (${bias.name}) has ${ours[axis] ?? 'an unknown size'}`,
      );
    }
  });
}

// --------------------------------------------------------------------------------------- rewrite

class ModuleRewriter extends BlockRewriter {
  apply(p: Placement): void {
    // new nodes go where the replaced layers begin, so the layers keep their order in the graph (the
    // analysis numbers layers by graph order); toposort afterwards settles the order of inputs
    const b = new GraphBuilder(this.model.graph, this.names, {
      prefix: `vcompile/module/L${p.span.start}-${p.span.end}/`,
      before: p.span.region[0],
    });
    let result: Value;
    if (p.kind === 'keep-first') {
      result = this.current(p.span.layers[0].output);
    } else if (p.kind === 'average') {
      const avg = p.average!;
      const mapping = new Map<Value, Value>([[avg.input, this.current(avg.input)]]);
      for (const [weight, mean] of avg.means) mapping.set(weight, b.initializer(weight.name, mean));
      cloneNodes(avg.nodes, b, mapping);
      result = mapping.get(avg.output)!;
    } else {
      result = this.spliceModule(b, p);
    }
    if (result === p.span.output) return;
    if (result.isGraphOutput) result = b.op.Identity(result);
    this.replace(p.span.output, result);
  }

  private spliceModule(b: GraphBuilder, p: Placement): Value {
    const module = p.module!;
    for (const { domain, version } of checkOpsetMerge(module.model, this.model, module.source, 'module'))
      this.model.requireOpset(domain, version);
    if ((module.model.irVersion ?? 0) > (this.model.irVersion ?? 0)) this.model.irVersion = module.model.irVersion;
    const inputs = new Map<Value, Value>([[module.hiddenInput, this.current(p.span.hidden)]]);
    if (module.biasInput) inputs.set(module.biasInput, p.bias!);
    const outputs = this.splice(module, b, inputs);
    return outputs[module.model.graph.outputs.indexOf(module.output)];
  }
}

function describePlacement(p: Placement): PlacedModule {
  return { start: p.span.start, end: p.span.end, kind: p.kind, source: p.request.source, ...(p.module ? { sha256: p.module.sha256 } : {}) };
}

/** Each output-model layer's original index, matched by the identity of the value it outputs. */
function layerMap(model: Model, before: TransformerAnalysis): { layerMap: (number | null)[]; layerMapNote?: string } {
  const original = new Map(before.layers.map((l) => [l.output, l.index] as const));
  const after = analyzeTransformer(model);
  const map = after.layers.map((l) => original.get(l.output) ?? null);
  return after.error
    ? { layerMap: map, layerMapNote: `the output model's layers after ${map.length} could not be followed: ${after.error.message}` }
    : { layerMap: map };
}
