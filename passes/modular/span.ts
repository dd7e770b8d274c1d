// A run of consecutive layers as a piece of graph: the nodes between the stream entering its first layer
// and the stream leaving its last, and everything those nodes read from outside. Outside reads fall in
// three kinds: `hidden` (the stream itself), weights (constants, and values computed from constants
// only, e.g. a transposed weight matrix), and the rest (masks, position biases, encoder states). The
// module contract passes exactly one of the rest, as `attention_bias`.
import type { Layer, TransformerAnalysis } from '../../src/analysis/index.js';
import { dependsOn, nodeLabel } from '../../src/analysis/patterns.js';
import { regionBetween, regionInputs, sequenceDependentInput } from '../../src/analysis/region.js';
import { type Label, msg, VcompileError } from '../../src/errors.js';
import type { Graph, Node, Value } from '../../src/ir/graph.js';

export interface Span {
  start: number;
  end: number;
  layers: Layer[];
  /** the stream entering layer `start` */
  hidden: Value;
  /** the stream leaving layer `end` */
  output: Value;
  /** nodes on some path from `hidden` to `output`, in graph order */
  region: Node[];
  /** nodes outside the region computing, from constants only, values the region reads (graph order) */
  cone: Node[];
  /** constants (initializers, Constant outputs) read by the region or the cone */
  constants: Value[];
  /** other values read from outside: the attention bias when there is exactly one */
  others: Value[];
}

/** `layers S-E`, or `layer S` for a single layer, as messages name a span. */
export function spanName(start: number, end: number): string {
  return start === end ? `layer ${start}` : `layers ${start}-${end}`;
}

/** Check that `start..end` names consecutive layers of one residual stream. */
export function checkSpanRange(analysis: TransformerAnalysis, start: number, end: number, what: Label): Layer[] {
  const count = analysis.layers.length;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < 0)
    throw new VcompileError(msg`${what}: layers are numbered from 0`);
  if (start > end) throw new VcompileError(msg`${what}: START ${start} is after END ${end}`);
  if (end >= count)
    throw new VcompileError(
      msg`${what}: ${spanName(start, end)} ${start === end ? 'does' : 'do'} not exist (the model has layers 0-${count - 1})`,
    );
  const layers = analysis.layers.slice(start, end + 1);
  for (let i = 1; i < layers.length; i++) {
    if (layers[i].input !== layers[i - 1].output) {
      throw new VcompileError(
        msg`${what}: ${spanName(start, end)} are not consecutive on one residual stream (layer ${layers[i].index} starts the ${layers[i].stack} stack)`,
      );
    }
  }
  return layers;
}

/** The span's region and outside reads; `constantValues` is `constantDerived(graph)`. */
export function describeSpan(
  analysis: TransformerAnalysis,
  start: number,
  end: number,
  constantValues: ReadonlySet<Value>,
  what: Label,
): Span {
  const layers = checkSpanRange(analysis, start, end, what);
  const hidden = layers[0].input;
  const output = layers[layers.length - 1].output;
  const region = regionBetween(hidden, output, analysis.context.graph.nodes);
  if (region.length === 0) throw new VcompileError(msg`${what}: nothing lies between ${hidden.name} and ${output.name}`);
  const outside = regionInputs(region).filter((v) => v !== hidden);
  const cone = coneOf(
    outside.filter((v) => constantValues.has(v) && !v.constTensor()),
    analysis.context.graph,
  );
  const constants = [...new Set([...outside, ...regionInputs(cone)].filter((v) => v.constTensor()))];
  const others = outside.filter((v) => !constantValues.has(v));
  return { start, end, layers, hidden, output, region, cone, constants, others };
}

/**
 * Values of `graph` computed from constants only (constants included): weights, and what the exporter
 * left unfolded around them (Transpose of a weight, Constant shape vectors, ...).
 */
export function constantDerived(graph: Graph): Set<Value> {
  const found = new Set<Value>();
  for (const v of graph.initializers) if (v.constTensor()) found.add(v);
  for (const node of graph.nodes) {
    const reads = [...node.inputs, ...node.implicitInputs()].filter((v): v is Value => !!v);
    if (!reads.every((v) => found.has(v) || !!v.constTensor())) continue;
    for (const out of node.outputs) if (out) found.add(out);
  }
  return found;
}

/** The producers of `values` and their producers, back to constants, in graph order. */
function coneOf(values: readonly Value[], graph: Graph): Node[] {
  const nodes = new Set<Node>();
  const pending = [...values];
  while (pending.length) {
    const v = pending.pop()!;
    const p = v.producer;
    if (!p || v.constTensor() || nodes.has(p)) continue;
    nodes.add(p);
    for (const input of [...p.inputs, ...p.implicitInputs()]) if (input) pending.push(input);
  }
  return graph.nodes.filter((n) => nodes.has(n));
}

/**
 * The one value besides `hidden` and weights the span reads, which its layers apply to their attention
 * scores; undefined when it reads none. Anything else is refused, naming the value.
 */
export function attentionBias(span: Span, analysis: TransformerAnalysis, what: Label): Value | undefined {
  const ctx = analysis.context;
  const describe = (v: Value) =>
    `${v.name}${v.producer ? ` (from ${nodeLabel(v.producer, ctx)})` : v.isGraphInput ? ' (a graph input)' : ''}`;
  const where = msg`${what}: ${spanName(span.start, span.end)}`;
  const reads = span.start === span.end ? 'reads' : 'read';
  if (span.others.length > 1) {
    throw new VcompileError(
      msg`${where} ${reads} ${span.others.length} values besides hidden and weights (${span.others.map(describe).join(', ')}); the module contract has one attention_bias`,
    );
  }
  const bias = span.others[0];
  if (bias) {
    const applied = span.layers.some((layer) => layer.selfAttention.terms.some((t) => t.value === bias || dependsOn(t.value, bias)));
    if (!applied) {
      throw new VcompileError(
        msg`${where} ${reads} ${describe(bias)}, which is neither a weight nor what ${span.start === span.end ? 'it applies to its' : 'they apply to their'} attention scores; the module contract has only hidden and attention_bias`,
      );
    }
  }
  const shapes = ctx.shapes;
  const seqAtoms = new Set(shapes.dim(span.hidden, 1)?.atoms() ?? []);
  const allowed = new Set<Value>([span.hidden, ...(bias ? [bias] : [])]);
  const dependent = sequenceDependentInput([...regionInputs(span.region), ...regionInputs(span.cone)], allowed, seqAtoms, shapes);
  if (dependent)
    throw new VcompileError(msg`${where} ${reads} ${describe(dependent)}, which follows the sequence length and is not the attention bias`);
  return bias;
}

/**
 * Refuse removing a span whose nodes compute something used after it other than its output (a graph
 * output, a shape reused by a later layer, the normalized stream a fused SkipLayerNormalization hands
 * to the next layer): the removed layers would stay in the graph, or be read half-replaced.
 */
export function checkRemovable(removed: readonly Node[], keep: Value, analysis: TransformerAnalysis, what: Label): void {
  const inside = new Set(removed);
  const ctx = analysis.context;
  for (const node of removed) {
    for (const out of node.outputs) {
      if (!out || out === keep) continue;
      if (out.isGraphOutput) throw new VcompileError(msg`${what} cannot be removed: ${out.name}, computed inside, is a graph output`);
      const use = out.uses().find((u) => !inside.has(topLevel(u.node, ctx.graph)));
      if (use)
        throw new VcompileError(
          msg`${what} cannot be removed: ${out.name}, computed inside, is also read by ${nodeLabel(topLevel(use.node, ctx.graph), ctx)} outside`,
        );
    }
  }
}

/** The node of `main` that holds `node` (itself, or the If/Loop whose subgraph contains it). */
function topLevel(node: Node, main: Graph): Node {
  let current = node;
  while (current.graph && current.graph !== main && current.graph.outerScope) {
    const holder = current.graph.outerScope.nodes.find((n) => n.subgraphs().includes(current.graph!));
    if (!holder) break;
    current = holder;
  }
  return current;
}
