// What the plugin and modular passes share: the transformer analysis they start from, one rewriter that
// replaces blocks of a layer (or runs of layers) by new computations, and the provenance they record.
//
// The rewriter keeps one invariant: a value replaced by an earlier placement is never read again. A
// layer-scope result is the next layer's input, so placements look their inputs up through `current`.
// A plugin or module spliced in more than once stores its weights once (keyed by the plugin or module).
import { analyzeTransformer, type TransformerAnalysis } from '../../src/analysis/index.js';
import { VcompileError } from '../../src/errors.js';
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Graph, Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { eliminateDeadCode, spliceGraph, takePlace, toposort } from '../../src/ir/transforms.js';
import { VCOMPILE_VERSION } from '../../src/version.js';

/** The transformer in `model`, or a one-line refusal saying why `what` (plugins, modules) cannot be placed. */
export function analyzeFor(model: Model, what: string): TransformerAnalysis & { hidden: number } {
  const analysis = analyzeTransformer(model);
  if (analysis.error) throw new VcompileError(`cannot place ${what}: transformer analysis stopped: ${analysis.error.message}`);
  if (analysis.hidden === undefined) throw new VcompileError(`cannot place ${what}: the hidden size of the model is not fixed`);
  return analysis as TransformerAnalysis & { hidden: number };
}

export class BlockRewriter {
  readonly names: NameAuthority;
  /** values replaced by earlier placements, and what replaced them */
  private readonly replaced = new Map<Value, Value>();
  /** per spliced plugin or module: its weights as copied into the model */
  private readonly weights = new Map<object, Map<Value, Value>>();

  constructor(readonly model: Model) {
    this.names = NameAuthority.forModel(model);
  }

  /** `v`, or what replaced it. */
  current(v: Value): Value {
    let cur = v;
    while (this.replaced.has(cur)) cur = this.replaced.get(cur)!;
    return cur;
  }

  /** Every use of `old` (a graph output included) reads `result` instead. */
  replace(old: Value, result: Value): void {
    takePlace(old, result, this.names);
    this.replaced.set(old, result);
  }

  /**
   * Copy `source`'s graph in with `b`, its inputs bound by `inputs`; returns its outputs in order. Weights
   * go to `weightsTo` (default `b`), once per source however often it is spliced.
   */
  splice(source: { model: Model }, b: GraphBuilder, inputs: Map<Value, Value>, weightsTo?: GraphBuilder): Value[] {
    const weights = this.weights.get(source) ?? new Map<Value, Value>();
    this.weights.set(source, weights);
    return spliceGraph(source.model.graph, b, inputs, weights, weightsTo);
  }

  /** After every placement: drop what the replaced blocks leave unused, restore topological order. */
  finish(graph: Graph = this.model.graph): { nodes: number; initializers: number } {
    const removed = eliminateDeadCode(graph);
    toposort(graph);
    return removed;
  }
}

/** Record what a pass applied in the model's metadata_props (`vcompile.plugins`, `vcompile.modules`), with the version. */
export function recordProvenance(model: Model, key: 'vcompile.plugins' | 'vcompile.modules', applied: readonly object[]): void {
  if (applied.length === 0) return;
  model.setMetadata(key, JSON.stringify(applied));
  model.setMetadata('vcompile.version', VCOMPILE_VERSION);
}

/** "0-2,5": layer indices as runs. */
export function formatLayers(layers: readonly number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < layers.length; i++) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j] + 1) j++;
    runs.push(i === j ? `${layers[i]}` : `${layers[i]}-${layers[j]}`);
    i = j;
  }
  return runs.join(',');
}
