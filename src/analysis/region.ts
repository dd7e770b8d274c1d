// The region a plugin wraps: every node between the block's input (`hidden`) and its result — the
// nodes that depend on `hidden` and that the result depends on. Running the block "on the compressed
// sequence" means copying exactly these nodes with `hidden` replaced; everything else they read
// (weights, masks, shapes computed elsewhere) is shared, and must not depend on the sequence length.
import type { Node, Value } from '../ir/graph.js';
import type { ShapeTable } from './shapes.js';
import type { SymDim } from './symbolic.js';

/** Nodes on some path from `from` to `to`, in graph order. */
export function regionBetween(from: Value, to: Value, order: readonly Node[]): Node[] {
  const downstream = new Set<Node>();
  const pending = [from];
  while (pending.length) {
    for (const use of pending.pop()!.uses()) {
      const node = topLevel(use.node);
      if (downstream.has(node)) continue;
      downstream.add(node);
      for (const out of node.outputs) if (out) pending.push(out);
    }
  }
  const region = new Set<Node>();
  const back = [to];
  const seen = new Set<Value>();
  while (back.length) {
    const v = back.pop()!;
    if (seen.has(v)) continue;
    seen.add(v);
    const producer = v.producer;
    if (!producer || !downstream.has(producer)) continue;
    region.add(producer);
    for (const input of [...producer.inputs, ...producer.implicitInputs()]) if (input) back.push(input);
  }
  return order.filter((n) => region.has(n));
}

/** The node of the main graph that holds `node` (itself, or the If/Loop whose subgraph contains it). */
function topLevel(node: Node): Node {
  let current = node;
  while (current.graph?.outerScope) {
    const holder = current.graph.outerScope.nodes.find((n) => n.subgraphs().includes(current.graph!));
    if (!holder) break;
    current = holder;
  }
  return current;
}

/** Values the region reads from outside itself (weights, masks, shapes, `hidden`). */
export function regionInputs(region: readonly Node[]): Value[] {
  const inside = new Set(region);
  const found = new Set<Value>();
  for (const node of region) {
    for (const v of [...node.inputs, ...node.implicitInputs()]) {
      if (v && !(v.producer && inside.has(v.producer))) found.add(v);
    }
  }
  return [...found];
}

/**
 * An outside value the region reads that follows the sequence length: a tensor with a sequence-sized
 * dim, or a shape vector computed from the sequence length. Such a block cannot run on a shorter
 * sequence unless the value is rewritten too (masks and position biases are, by the pass).
 */
export function sequenceDependentInput(
  inputs: readonly Value[],
  allowed: ReadonlySet<Value>,
  seqAtoms: ReadonlySet<string>,
  shapes: ShapeTable,
): Value | undefined {
  const mentionsSeq = (dims: readonly SymDim[] | undefined) => !!dims?.some((d) => d && [...d.atoms()].some((a) => seqAtoms.has(a)));
  return inputs.find((v) => !allowed.has(v) && !v.initializer && (mentionsSeq(shapes.get(v).value) || mentionsSeq(shapes.shape(v))));
}
