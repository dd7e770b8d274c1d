// Small matchers over the IR shared by the block analyses: follow producers through value-preserving
// ops, read constants and weights, and collect the nodes a block owns. A failed match carries the reason
// and the node where it stopped, so the layer walk can say exactly where a graph was not understood.
import type { Graph, Node, Use, Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import { isFloatType } from '../ir/tensor.js';
import { DataType } from '../ir/types.js';
import { EvaluationError, evaluate, type NumTensor, tensorOf } from './evaluate.js';
import { inferShapes, type ShapeTable } from './shapes.js';
import { product } from './symbolic.js';

/**
 * A match, or why not and where. `unrelated` marks an anchor that is not this kind of block at all
 * (a Softmax over logits), as opposed to a block of this kind that is not understood.
 */
export type Match<T> = { ok: true; value: T } | { ok: false; reason: string; node?: Node; unrelated?: boolean };

export const ok = <T>(value: T): Match<T> => ({ ok: true, value });
export const fail = <T = never>(reason: string, node?: Node): Match<T> => ({ ok: false, reason, node });

/** What every matcher reads: the graph, its inferred shapes, and each node's position. */
export interface Context {
  model: Model;
  graph: Graph;
  shapes: ShapeTable;
  order: Map<Node, number>;
}

export function makeContext(model: Model): Context {
  const graph = model.graph;
  const order = new Map(graph.nodes.map((n, i) => [n, i] as const));
  return { model, graph, shapes: inferShapes(graph), order };
}

/** How a node is named in messages: its name, else its op and position. */
export function nodeLabel(node: Node | null | undefined, ctx?: Context): string {
  if (!node) return '(graph input)';
  if (node.name) return `${node.name} (${node.qualifiedOp})`;
  const at = ctx?.order.get(node);
  return `${node.qualifiedOp}${at !== undefined ? ` #${at}` : ''}`;
}

/** Ops that pass a float tensor through unchanged at inference time. */
const PASS_THROUGH = new Set(['Identity', 'Cast', 'Dropout']);

export function isPassThrough(node: Node | null): boolean {
  return !!node && !node.domain && PASS_THROUGH.has(node.opType);
}

/** Follow producers back through Identity/Cast/Dropout. */
export function skipBack(v: Value): Value {
  let cur = v;
  while (isPassThrough(cur.producer) && cur.producer!.inputs[0]) cur = cur.producer!.inputs[0]!;
  return cur;
}

/** Uses that read data: Shape and Size read only metadata and do not count. */
export function dataUses(v: Value): Use[] {
  return v.uses().filter((u) => u.node.opType !== 'Shape' && u.node.opType !== 'Size');
}

/** Follow a value forward while its only data use is a pass-through op. */
export function skipForward(v: Value): Value {
  let cur = v;
  for (;;) {
    const uses = dataUses(cur);
    if (uses.length !== 1 || !isPassThrough(uses[0].node) || uses[0].index !== 0) return cur;
    const next = uses[0].node.outputs[0];
    if (!next) return cur;
    cur = next;
  }
}

/** The constant behind `v` (through Identity/Cast), if any. */
export function constantOf(v: Value | null | undefined): Tensor | undefined {
  if (!v) return undefined;
  return skipBack(v).constTensor();
}

/** A one-element numeric constant as a number. */
export function scalarOf(v: Value | null | undefined): number | undefined {
  const t = constantOf(v);
  if (t?.size !== 1) return undefined;
  try {
    return t.toFloat32()[0];
  } catch {
    return undefined;
  }
}

/**
 * A one-element value computed from constants and tensor shapes only, folded to a number: the
 * `1/sqrt(head size)` that PyTorch's scaled_dot_product_attention export reads from Shape(q) at run
 * time. Symbolic dims read on the way make it undefined (the value would depend on the input).
 */
export function foldedScalar(v: Value | null | undefined, ctx: Context): number | undefined {
  const direct = scalarOf(v);
  if (direct !== undefined || !v?.producer) return direct;
  const shape = ctx.shapes.shape(v);
  if (shape && product(shape)?.constant !== 1) return undefined;
  const feeds = new Map<Value, NumTensor>();
  const seen = new Set<Value>();
  const stack = [v];
  while (stack.length) {
    const cur = stack.pop()!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    if (seen.size > 48) return undefined;
    const p = cur.producer;
    if (cur.constTensor()) continue;
    if (!p) return undefined;
    if (p.opType === 'Shape') {
      const dims = ctx.shapes.get(cur).value;
      if (!dims) return undefined;
      feeds.set(
        cur,
        tensorOf(
          [dims.length],
          dims.map((d) => d?.constant ?? NaN),
          DataType.INT64,
        ),
      );
      continue;
    }
    for (const input of p.inputs) if (input) stack.push(input);
  }
  try {
    const { data } = evaluate([v], feeds)[0];
    return data.length === 1 && Number.isFinite(data[0]) ? data[0] : undefined;
  } catch (error) {
    if (error instanceof EvaluationError) return undefined;
    throw error;
  }
}

/** `x * k`, `k * x` or `x / k` with `k` a (folded) scalar: the factor and `x`. */
export function scaling(node: Node, ctx: Context): { factor: number; rest: Value } | undefined {
  if ((node.opType !== 'Mul' && node.opType !== 'Div') || node.domain) return undefined;
  const [a, b] = node.inputs;
  if (!a || !b) return undefined;
  const kb = foldedScalar(b, ctx);
  if (kb !== undefined) return { factor: node.opType === 'Div' ? 1 / kb : kb, rest: a };
  const ka = node.opType === 'Mul' ? foldedScalar(a, ctx) : undefined;
  return ka !== undefined ? { factor: ka, rest: b } : undefined;
}

export interface Weight {
  /** the constant value holding the weight (initializer or Constant output) */
  value: Value;
  tensor: Tensor;
  /** the constant reaches the product through an odd number of Transposes */
  transposed: boolean;
}

/** Ops that take part of a constant or rearrange it without mixing in other data. */
const CONSTANT_LAYOUT = new Set(['Identity', 'Cast', 'Transpose', 'Slice', 'Split', 'Reshape', 'Squeeze', 'Unsqueeze', 'Flatten']);

/**
 * The constant behind `v` when `v` is that constant, or a slice, split or rearrangement of it (PyTorch
 * exports nn.MultiheadAttention's projections as slices of one in_proj_weight), with whether the path
 * transposes it.
 */
export function constantSource(v: Value | null | undefined): { value: Value; transposed: boolean } | undefined {
  let cur = v;
  let transposed = false;
  for (let step = 0; cur && step < 16; step++) {
    if (cur.constTensor()) return { value: cur, transposed };
    const p = cur.producer;
    if (!p || p.domain || !CONSTANT_LAYOUT.has(p.opType) || !p.inputs[0]) return undefined;
    if (p.opType === 'Transpose') transposed = !transposed;
    cur = p.inputs[0];
  }
  return undefined;
}

/** A matrix weight behind `v`: a float constant, possibly sliced, transposed or cast. */
export function weightOf(v: Value | null | undefined): Weight | undefined {
  const source = constantSource(v);
  const tensor = source?.value.constTensor();
  if (!source || !tensor || !isFloatType(tensor.dataType) || tensor.dims.length < 1) return undefined;
  return { value: source.value, tensor, transposed: source.transposed };
}

/** A learned vector or matrix, or a slice of one (a bias, a norm's scale or shift). */
export function isLearned(v: Value | null | undefined): boolean {
  const source = constantSource(v);
  return !!source && isParameter(source.value);
}

/** A float constant with more than one element: a learned vector or matrix (not a scale or epsilon). */
export function isParameter(v: Value): boolean {
  const t = v.constTensor();
  return !!t && isFloatType(t.dataType) && t.size > 1;
}

/** The operand of a binary node that is not `v` (undefined when both or neither are `v`). */
export function otherOperand(node: Node, v: Value): Value | undefined {
  const [a, b] = node.inputs;
  if (a === v && b !== v) return b ?? undefined;
  if (b === v && a !== v) return a ?? undefined;
  return undefined;
}

/**
 * The nodes a block owns: the backward cone of `outputs`, stopped at `boundaries`, keeping only nodes
 * whose every result is consumed inside the cone (or is one of `outputs`). Shared helpers such as a
 * mask computed once for all layers stay outside. Returned in graph order.
 */
export function exclusiveCone(outputs: readonly Value[], boundaries: ReadonlySet<Value>, ctx: Context): Node[] {
  const cone = new Set<Node>();
  const stack = outputs.map((v) => v.producer).filter((n): n is Node => !!n);
  while (stack.length) {
    const node = stack.pop()!;
    if (cone.has(node) || node.graph !== ctx.graph) continue;
    cone.add(node);
    for (const input of node.inputs) {
      if (!input || boundaries.has(input) || !input.producer) continue;
      stack.push(input.producer);
    }
  }
  const results = new Set(outputs);
  const kept = new Set<Node>();
  const ordered = [...cone].sort((a, b) => ctx.order.get(b)! - ctx.order.get(a)!);
  for (const node of ordered) {
    const owned = node.outputs.every((o) => {
      if (!o) return true;
      if (results.has(o)) return true;
      if (o.isGraphOutput) return false;
      return o.uses().every((u) => kept.has(u.node));
    });
    if (owned) kept.add(node);
  }
  return [...kept].sort((a, b) => ctx.order.get(a)! - ctx.order.get(b)!);
}

/** Graph inputs whose data flows into `v` (reading only an input's shape does not count). */
export function dataInputs(v: Value, ctx: Context): Value[] {
  const found = new Set<Value>();
  const seen = new Set<Value>();
  const stack = [v];
  while (stack.length) {
    const cur = stack.pop()!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    if (cur.isGraphInput && cur.graph === ctx.graph) found.add(cur);
    const p = cur.producer;
    if (!p || p.opType === 'Shape' || p.opType === 'Size') continue;
    for (const input of p.inputs) if (input) stack.push(input);
  }
  return [...found];
}

/** Whether `target` depends on `source` (bounded backward search). */
export function dependsOn(target: Value, source: Value, limit = 200_000): boolean {
  const seen = new Set<Value>();
  const stack = [target];
  while (stack.length && seen.size < limit) {
    const cur = stack.pop()!;
    if (cur === source) return true;
    if (seen.has(cur)) continue;
    seen.add(cur);
    const p = cur.producer;
    if (p) for (const input of p.inputs) if (input) stack.push(input);
  }
  return false;
}

/** The reduction axes of a Reduce* node (attribute or constant input). */
export function reduceAxes(node: Node, ctx: Context): number[] | undefined {
  const attr = node.attr('axes')?.ints;
  if (attr) return attr.map(Number);
  return node.inputs[1] ? ctx.shapes.ints(node.inputs[1]) : undefined;
}

/** Whether a Reduce* node reduces exactly the last axis of its input. */
export function reducesLastAxis(node: Node, ctx: Context): boolean {
  const axes = reduceAxes(node, ctx);
  if (axes?.length !== 1) return false;
  if (axes[0] === -1) return true;
  const rank = ctx.shapes.rank(node.inputs[0]);
  return rank !== undefined && axes[0] === rank - 1;
}
