// Whole-graph transformations every pass relies on: topological sort, dead-code elimination, and
// splicing one graph's computation into another with fresh names.
import { GraphBuilder } from './builder.js';
import { type Attribute, Graph, type Node, replaceAllUses, Value } from './graph.js';
import type { NameAuthority } from './names.js';
import type { Tensor } from './tensor.js';
import type { IrType } from './types.js';

/** Producers inside `graph` that `node` depends on, including through its subgraphs' outer reads. */
function localDependencies(node: Node, graph: Graph): Node[] {
  const deps: Node[] = [];
  for (const v of [...node.inputs, ...node.implicitInputs()]) {
    const producer = v?.producer;
    if (producer && producer.graph === graph) deps.push(producer);
  }
  return deps;
}

/**
 * Order nodes so that every value is defined before it is used, moving as little as possible
 * (depth-first from each node in its current order). Returns whether the order changed.
 */
export function toposort(graph: Graph): boolean {
  const state = new Map<Node, 'visiting' | 'done'>();
  const order: Node[] = [];
  for (const root of graph.nodes) {
    if (state.has(root)) continue;
    const stack: { node: Node; deps: Node[]; next: number }[] = [{ node: root, deps: localDependencies(root, graph), next: 0 }];
    state.set(root, 'visiting');
    while (stack.length) {
      const top = stack[stack.length - 1];
      if (top.next < top.deps.length) {
        const dep = top.deps[top.next++];
        const s = state.get(dep);
        if (s === 'visiting') throw new Error(`graph ${graph.name ?? ''} has a cycle through ${dep}`);
        if (!s) {
          state.set(dep, 'visiting');
          stack.push({ node: dep, deps: localDependencies(dep, graph), next: 0 });
        }
        continue;
      }
      state.set(top.node, 'done');
      order.push(top.node);
      stack.pop();
    }
  }
  const changed = order.some((n, i) => n !== graph.nodes[i]);
  if (changed) graph.nodes.splice(0, graph.nodes.length, ...order);
  for (const node of graph.nodes) for (const sub of node.subgraphs()) toposort(sub);
  return changed;
}

/**
 * Remove nodes that no graph output depends on (in this graph and, recursively, in the subgraphs of
 * the nodes that stay), then initializers nothing reads. Graph inputs are kept: they are the interface.
 */
export function eliminateDeadCode(graph: Graph): { nodes: number; initializers: number } {
  const live = new Set<Node>();
  const pending = graph.outputs.map((v) => v.producer).filter((p): p is Node => !!p && p.graph === graph);
  while (pending.length) {
    const node = pending.pop()!;
    if (live.has(node)) continue;
    live.add(node);
    pending.push(...localDependencies(node, graph));
  }
  const dead = graph.nodes.filter((n) => !live.has(n));
  if (dead.length) graph.removeNodes(dead);
  let removed = { nodes: dead.length, initializers: 0 };
  for (const node of graph.nodes) {
    for (const sub of node.subgraphs()) {
      const inner = eliminateDeadCode(sub);
      removed = { nodes: removed.nodes + inner.nodes, initializers: removed.initializers + inner.initializers };
    }
  }
  removed.initializers += graph.removeUnusedInitializers();
  return removed;
}

/**
 * Copy `source`'s computation into the builder's graph: `inputs` maps each of source's graph inputs to
 * a value of the target; weights are copied as new initializers (or taken from `sharedWeights`, so one
 * plugin applied to many layers stores its weights once). Returns the target values of source's outputs.
 */
export function spliceGraph(
  source: Graph,
  b: GraphBuilder,
  inputs: Map<Value, Value>,
  sharedWeights?: Map<Value, Value>,
  /** where the weights go (default: the builder's own graph); an enclosing graph keeps them out of If branches */
  weightBuilder: GraphBuilder = b,
): Value[] {
  const mapping = new Map(inputs);
  for (const input of source.inputs) {
    if (!mapping.has(input) && !input.initializer) throw new Error(`splice: graph input ${input.name} is not connected`);
  }
  for (const weight of source.initializers) {
    if (mapping.has(weight)) continue;
    const shared = sharedWeights?.get(weight);
    const copy = shared ?? weightBuilder.initializer(weight.name, cloneTensorRef(weight));
    sharedWeights?.set(weight, copy);
    mapping.set(weight, copy);
  }
  for (const node of source.nodes) cloneNodeInto(node, b, mapping);
  return source.outputs.map((v) => {
    const mapped = mapping.get(v);
    if (!mapped) throw new Error(`splice: output ${v.name} is not computed by the graph`);
    return mapped;
  });
}

/** A new Tensor object (it gets its own name) over the same data: passes never mutate tensor data. */
function cloneTensorRef(weight: Value): Tensor {
  const t = weight.initializer!;
  return Object.assign(Object.create(Object.getPrototypeOf(t) as object) as Tensor, t);
}

/**
 * Copy `nodes` (in topological order) into the builder's graph. Inputs found in `mapping` are replaced
 * (and each copied output is added to it); other inputs are read as they are, shared with the originals.
 */
export function cloneNodes(nodes: readonly Node[], b: GraphBuilder, mapping: Map<Value, Value>): void {
  for (const node of nodes) cloneNodeInto(node, b, mapping, true);
}

function cloneNodeInto(node: Node, b: GraphBuilder, mapping: Map<Value, Value>, shareUnmapped = false): void {
  const inputs = node.inputs.map((v) => (v ? (shareUnmapped ? (mapping.get(v) ?? v) : mapped(v, mapping)) : null));
  const copy = b.node(node.opType, inputs, {}, node.outputs.length, node.domain);
  copy.overload = node.overload;
  copy.docString = node.docString;
  copy.metadataProps = node.metadataProps && [...node.metadataProps];
  copy.attributes = node.attributes.map((a) => cloneAttribute(a, b, mapping, shareUnmapped));
  for (const sub of copy.subgraphs()) sub.outerScope = b.graph;
  node.outputs.forEach((out, i) => {
    const target = copy.outputs[i]!;
    if (!out) {
      copy.setOutput(i, null);
      return;
    }
    target.type = out.type;
    mapping.set(out, target);
  });
}

function mapped(v: Value, mapping: Map<Value, Value>): Value {
  const m = mapping.get(v);
  if (!m) throw new Error(`splice: value ${v.name} is used before it is defined`);
  return m;
}

function cloneAttribute(a: Attribute, b: GraphBuilder, mapping: Map<Value, Value>, share: boolean): Attribute {
  const copy: Attribute = { ...a };
  if (a.g) copy.g = cloneSubgraph(a.g, b, mapping, share);
  if (a.graphs) copy.graphs = a.graphs.map((g) => cloneSubgraph(g, b, mapping, share));
  return copy;
}

/** A subgraph copy whose outer reads point at the mapped values; its own names are made fresh too. */
function cloneSubgraph(g: Graph, outer: GraphBuilder, outerMapping: Map<Value, Value>, share: boolean): Graph {
  const copy = new Graph(g.name);
  copy.docString = g.docString;
  const inner = new GraphBuilder(copy, outer.names);
  const mapping = new Map(outerMapping);
  for (const input of g.inputs) {
    const v = copy.addInput(new Value(outer.names.fresh(input.name), input.type));
    mapping.set(input, v);
  }
  for (const weight of g.initializers) mapping.set(weight, inner.initializer(weight.name, cloneTensorRef(weight)));
  for (const node of g.nodes) cloneNodeInto(node, inner, mapping, share);
  copy.outputs = g.outputs.map((v) => {
    const out = share ? (mapping.get(v) ?? v) : mapped(v, mapping);
    if (!out.type) out.type = v.type;
    return out;
  });
  return copy;
}

/**
 * Route every use of `old` to `replacement`, which takes over `old`'s name (`old` gets a fresh one): a
 * rewritten model keeps the names of the values it recomputes, so the stream leaving layer i can be found
 * by the original's name. When `old` is an output of its graph, the replacement takes its type too, so
 * the model's interface is unchanged.
 */
export function takePlace(old: Value, replacement: Value, names: NameAuthority): void {
  const isOutput = old.graph?.outputs.includes(old) ?? false;
  const named = replacement.isGraphInput || !!replacement.initializer || replacement.isGraphOutput; // their names are the interface
  replaceAllUses(old, replacement);
  if (named && !isOutput) return;
  const name = old.name;
  old.name = names.fresh(`${name}_replaced`);
  replacement.name = name;
  if (isOutput) replacement.type = old.type;
}

/**
 * Make `value` a graph input named `name` of type `type`: every use reads the new input instead, so what
 * computed `value` (if nothing else needs it) is left for dead-code elimination. The model then starts
 * where `value` was: a slice of the model from there on, run on values computed elsewhere.
 */
export function detachAsInput(graph: Graph, value: Value, name: string, type: IrType, names: NameAuthority): Value {
  if (value.graph !== graph) throw new Error(`detach: ${value.name} is not a value of graph ${graph.name ?? ''}`);
  names.claim(name);
  const input = graph.addInput(new Value(name, type));
  replaceAllUses(value, input);
  return input;
}
