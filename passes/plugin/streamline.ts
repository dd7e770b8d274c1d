// A plugin as the pass splices it: the same function, with a restore that does less work. A Variator-style
// restore (PyTorch's export of one, and many hand-written plugins) runs an adapter on [repeat(inner); hidden]:
//   MatMul(Concat([Reshape(Expand(Unsqueeze(inner))), hidden], last axis), W)
// which copies both halves into a tensor twice as wide and multiplies rows that are k-fold repeats. Two
// rewrites, each only where it provably computes the same function:
//   split  MatMul(Concat([a1, ..., an], last axis), W) -> MatMul(a1, W1) + ... + MatMul(an, Wn), W's rows cut
//          at the pieces' widths (W a 2-D float constant, the Concat read by nothing else): no concatenation
//   hoist  MatMul(rows(Expand(x)), W) -> rows'(Expand'(MatMul(x, W))), where rows are Unsqueeze, Expand and
//          Reshape nodes that move or repeat whole rows (the last axis untouched): the product runs on the
//          rows before they are repeated, k times fewer, and the repeat copies m columns instead of d
//   group  Add(Reshape(Expand(s)), y), the Expand writing each row of s [b, g, 1, w] out k times, becomes
//          Reshape(Add(s, Reshape(y, [b, g, k, w])), shape(y)): each row of s is added to its group of k
//          by broadcasting, the repeat never written out; a constant bias on the last axis added to y (or
//          to the sum) moves onto s, added to its g rows instead of the g*k
//   weigh  ReduceSum(Mul(w, x), axes [2]), w [b, g, k, 1] weighing the k rows of each group of x [b, g, k, d]
//          (Variator's merge), becomes MatMul(w as [b, g, 1, k], x): one product per group, the weighted
//          copy of x never written out
// `split`, the moved bias and `weigh` reassociate a float sum, so results agree with the original up to
// rounding (about 1e-7 relative); `hoist` and `group` compute the same numbers. The plugin's own model is not
// changed: the rewrites are made on a copy, and a plugin with nothing to rewrite is returned as it is.
import { inferShapes, ShapeTable } from '../../src/analysis/shapes.js';
import { sameDim } from '../../src/analysis/symbolic.js';
import { GraphBuilder, ModelBuilder } from '../../src/ir/builder.js';
import { type Graph, type Node, replaceAllUses, type Value } from '../../src/ir/graph.js';
import { NameAuthority } from '../../src/ir/names.js';
import { MIN_OPSET, VersionedOps } from '../../src/ir/ops.js';
import { Tensor } from '../../src/ir/tensor.js';
import { eliminateDeadCode, spliceGraph, toposort } from '../../src/ir/transforms.js';
import { DataType } from '../../src/ir/types.js';
import type { Plugin } from './contract.js';
import { addToGroups, leadingDims } from './sequence.js';

/** `plugin` with its products split and hoisted where that is exact (a copy), or `plugin` itself when none is. */
export function streamlinePlugin(plugin: Plugin): Plugin {
  const opset = plugin.model.opsetVersion('') ?? 0;
  if (opset < MIN_OPSET || plugin.model.functions.length > 0) return plugin;
  const shapes = contractShapes(plugin);
  const nodes = plugin.model.graph.nodes;
  if (!nodes.some((n) => splittable(n, shapes) || hoistable(n, shapes) || groupSum(n, shapes) || weighedSum(n, shapes))) return plugin;
  const copy = copyPlugin(plugin, opset);
  const graph = copy.model.graph;
  const b = new GraphBuilder(graph, NameAuthority.forModel(copy.model), { prefix: 'streamlined/' });
  const ops = new VersionedOps(b, opset);
  const copied = contractShapes(copy);
  for (const node of [...graph.nodes]) {
    const split = splittable(node, copied);
    if (split) replaceAllUses(node.outputs[0]!, splitProduct(b, split));
  }
  // the split's products read the Concat's inputs, whose shapes are known already
  for (const node of [...graph.nodes]) {
    const hoist = hoistable(node, copied);
    if (hoist) replaceAllUses(node.outputs[0]!, hoistProduct(b, ops, node, hoist, copied));
  }
  // the hoisted repeats are new nodes: their shapes are inferred again, in order
  toposort(graph);
  const hoisted = contractShapes(copy);
  const outputs = new Map<Value, Value>();
  const replace = (old: Value, value: Value) => {
    if (old.isGraphOutput) outputs.set(old, value);
    replaceAllUses(old, value);
  };
  for (const node of [...graph.nodes]) {
    const sum = groupSum(node, hoisted);
    if (sum) replace(sum.output, addByGroups(b, ops, sum));
    const weighed = weighedSum(node, hoisted);
    if (weighed) replace(node.outputs[0]!, weighedProduct(b, ops, node, weighed));
  }
  eliminateDeadCode(graph);
  toposort(graph);
  // a replaced output keeps its name and declared type (its old value is gone)
  for (const [old, grouped] of outputs) [grouped.name, grouped.type] = [old.name, old.type];
  const output = (v: Value) => outputs.get(v) ?? v;
  return { ...copy, compressed: output(copy.compressed), restored: output(copy.restored) };
}

/**
 * The plugin's shapes with its contract stated: hidden is as long as inner times k (the pass pads it so),
 * which its declared types, two unrelated lengths, do not say.
 */
function contractShapes(plugin: Plugin): ShapeTable {
  const graph = plugin.model.graph;
  const declared = inferShapes(graph);
  const hidden = declared.shape(plugin.hiddenInput);
  const groups = declared.dim(plugin.innerInput, 1);
  if (hidden?.length !== 3 || !groups) return declared;
  const table = new ShapeTable();
  const shape = [hidden[0], groups.mul(plugin.ratio), hidden[2]];
  table.set(plugin.hiddenInput, { ...declared.get(plugin.hiddenInput), shape });
  return inferShapes(graph, table);
}

/** A copy of the plugin's model (weights shared, not copied) and its contract values in the copy. */
function copyPlugin(plugin: Plugin, opset: number): Plugin {
  const source = plugin.model;
  const b = new ModelBuilder(opset, source.graph.name);
  const model = b.model;
  model.irVersion = source.irVersion;
  model.opsetImports = source.opsetImports.map((o) => ({ ...o }));
  model.metadataProps = source.metadataProps?.map(([k, v]) => [k, v]);
  const inputs = new Map<Value, Value>();
  for (const input of source.graph.inputs) if (!input.initializer) inputs.set(input, b.input(input.name, input.type));
  const outputs = spliceGraph(source.graph, b, inputs);
  // an output that is an input or another output (an identity plugin) keeps its own value under a new name
  const named = outputs.map((out, i) => (out.isGraphInput || outputs.indexOf(out) !== i ? b.op.Identity(out) : out));
  source.graph.outputs.forEach((v, i) => b.output(named[i]!, v.name, v.type));
  const at = (v: Value) => named[source.graph.outputs.indexOf(v)]!;
  return {
    ...plugin,
    model,
    hiddenInput: inputs.get(plugin.hiddenInput)!,
    innerInput: inputs.get(plugin.innerInput)!,
    ...(plugin.keepInput ? { keepInput: inputs.get(plugin.keepInput)! } : {}),
    compressed: at(plugin.compressed),
    restored: at(plugin.restored),
  };
}

const isOp = (node: Node | null | undefined, opType: string): boolean => !!node && node.opType === opType && !node.domain;

/** The weight of `MatMul(x, W)`: a 2-D float constant. */
function productWeight(node: Node): Tensor | undefined {
  if (!isOp(node, 'MatMul')) return undefined;
  const weight = node.inputs[1]?.constTensor();
  return weight && weight.dims.length === 2 && weight.dataType === DataType.FLOAT ? weight : undefined;
}

interface Split {
  pieces: Value[];
  widths: number[];
  weight: Tensor;
}

/** `MatMul(Concat(pieces, last axis), W)` with every piece's width known and the Concat read only here. */
function splittable(node: Node, shapes: ShapeTable): Split | undefined {
  const weight = productWeight(node);
  const x = node.inputs[0];
  const concat = x?.producer;
  if (!weight || !x || !concat || !isOp(concat, 'Concat') || x.useCount !== 1 || x.isGraphOutput) return undefined;
  const rank = shapes.rank(x);
  const axis = concat.attrInt('axis', 0);
  if (rank === undefined || rank < 2 || (axis !== -1 && axis !== rank - 1)) return undefined;
  const pieces = concat.inputs.filter((v): v is Value => !!v);
  const widths = pieces.map((v) => (shapes.rank(v) === rank ? shapes.dim(v, -1)?.constant : undefined));
  if (pieces.length < 2 || widths.some((w) => !w)) return undefined;
  if (widths.reduce((sum: number, w) => sum + w!, 0) !== weight.dims[0]) return undefined;
  return { pieces, widths: widths as number[], weight };
}

/** MatMul(a1, W1) + ... + MatMul(an, Wn), each Wi the rows of W that meet piece i. */
function splitProduct(b: GraphBuilder, { pieces, widths, weight }: Split): Value {
  const columns = weight.dims[1]!;
  const values = weight.toFloat32();
  let row = 0;
  let sum: Value | undefined;
  pieces.forEach((piece, i) => {
    const rows = values.slice(row * columns, (row + widths[i]!) * columns);
    const part = b.op.MatMul(piece, b.initializer('weight_rows', Tensor.fromArray(undefined, DataType.FLOAT, [widths[i]!, columns], rows)));
    sum = sum ? b.op.Add(sum, part) : part;
    row += widths[i]!;
  });
  return sum!;
}

/**
 * For `MatMul(x, W)`: the chain of row-moving nodes from x down to the deepest Expand (x's producer first),
 * when there is one and the product can be computed before it.
 */
function hoistable(node: Node, shapes: ShapeTable): Node[] | undefined {
  const weight = productWeight(node);
  if (!weight || (shapes.rank(node.inputs[0]) ?? 0) < 2) return undefined;
  const width = weight.dims[0]!;
  const chain: Node[] = [];
  let deepestExpand = -1;
  for (let v = node.inputs[0]; v?.producer && movesRows(v.producer, width, shapes); v = v.producer.inputs[0]) {
    chain.push(v.producer);
    if (isOp(v.producer, 'Expand')) deepestExpand = chain.length - 1;
  }
  if (deepestExpand < 0 || (shapes.rank(chain[deepestExpand]!.inputs[0]) ?? 0) < 2) return undefined;
  return chain.slice(0, deepestExpand + 1);
}

/**
 * Whether `node` (Unsqueeze, Expand or Reshape) only moves or repeats whole rows of width `width`: its data
 * input and its output have that last dim, Unsqueeze inserts no last axis, Expand's (known) shape ends in 1
 * or the width, and Reshape, keeping the last dim, reads rows in order.
 */
function movesRows(node: Node, width: number, shapes: ShapeTable): boolean {
  const data = node.inputs[0];
  const output = node.outputs[0];
  if (!data || !output || shapes.dim(data, -1)?.constant !== width || shapes.dim(output, -1)?.constant !== width) return false;
  const rank = shapes.rank(output)!;
  if (isOp(node, 'Unsqueeze')) {
    const axes = node.inputs[1] ? shapes.ints(node.inputs[1]) : node.attrInts('axes', []);
    return !!axes && !axes.some((a) => (a < 0 ? a + rank : a) === rank - 1);
  }
  if (isOp(node, 'Expand')) {
    const shape = shapes.ints(node.inputs[1]);
    return !!shape && shape.length > 0 && (shape[shape.length - 1] === 1 || shape[shape.length - 1] === width);
  }
  return isOp(node, 'Reshape') && !!node.inputs[1];
}

/** The product computed on the rows before the chain's last node, and the chain rebuilt for its width. */
function hoistProduct(b: GraphBuilder, ops: VersionedOps, product: Node, chain: Node[], shapes: ShapeTable): Value {
  const columns = productWeight(product)!.dims[1]!;
  let out = b.op.MatMul(chain[chain.length - 1]!.inputs[0]!, product.inputs[1]!);
  for (const node of [...chain].reverse()) {
    const inputs = [out, ...node.inputs.slice(1)];
    if (isOp(node, 'Expand')) inputs[1] = b.int64s('expand_shape', [...shapes.ints(node.inputs[1])!.slice(0, -1), 1]);
    if (isOp(node, 'Reshape')) inputs[1] = lastDimAs(b, ops, node.inputs[1]!, columns, shapes);
    const copy = b.node(node.opType, inputs);
    copy.attributes = node.attributes.map((a) => ({ ...a }));
    out = copy.outputs[0]!;
  }
  return out;
}

/**
 * A shape vector with its last entry set to `last`: a constant when the shape is one; the same Concat but
 * for its last piece when that is a constant entry (exporters build shapes so); else computed.
 */
function lastDimAs(b: GraphBuilder, ops: VersionedOps, shape: Value, last: number, shapes: ShapeTable): Value {
  const known = shapes.ints(shape);
  if (known) return b.int64s('reshape_shape', [...known.slice(0, -1), last]);
  const concat = shape.producer;
  const pieces = concat?.inputs ?? [];
  const tail = pieces[pieces.length - 1];
  if (
    concat &&
    isOp(concat, 'Concat') &&
    tail &&
    shapes.shape(tail)?.length === 1 &&
    shapes.dim(tail, 0)?.constant === 1 &&
    shapes.ints(tail)
  )
    return b.op.Concat(...pieces.slice(0, -1), b.int64s('last_dim', [last]), { axis: 0 });
  const leading = ops.slice(shape, b.int64s('start', [0]), b.int64s('end', [-1]), 0);
  return b.op.Concat(leading, b.int64s('last_dim', [last]), { axis: 0 });
}

/** `Add(repeat, full)` (either order), repeat = Reshape(Expand(short)) writing short's rows out k times. */
interface GroupSum {
  /** [b, g, 1, w] */
  short: Value;
  /** [b, g * k, w] */
  full: Value;
  ratio: number;
  width: number;
  /** a constant bias on the last axis, added to `full` or to the sum in the original, moved onto `short` */
  bias?: Value;
  /** the value the rewrite replaces: the Add's output, or the bias Add's after it */
  output: Value;
}

function groupSum(node: Node, shapes: ShapeTable): GroupSum | undefined {
  if (!isOp(node, 'Add')) return undefined;
  for (const [i, repeated] of node.inputs.entries()) {
    const repeat = groupRepeat(repeated, shapes);
    const other = node.inputs[1 - i];
    if (!repeat || !other || !sameShape(other, repeated!, shapes)) continue;
    const { width } = repeat;
    const sum = { ...repeat, full: other, output: node.outputs[0]! };
    // a bias added to `other` alone, or to the sum alone, is added to the short rows instead
    const inner = other.producer;
    const innerBias = inner && other.useCount === 1 && !other.isGraphOutput ? lastAxisBias(inner, width) : undefined;
    if (innerBias && sameShape(innerBias.other, other, shapes)) return { ...sum, full: innerBias.other, bias: innerBias.bias };
    const [use, ...more] = node.outputs[0]!.uses();
    const outerBias = use && more.length === 0 && !node.outputs[0]!.isGraphOutput ? lastAxisBias(use.node, width) : undefined;
    if (outerBias) return { ...sum, bias: outerBias.bias, output: use!.node.outputs[0]! };
    return sum;
  }
  return undefined;
}

/**
 * s, k and w when `value` is `Reshape(Expand(s))` writing each row of s [b, g, 1, w] out k times in place
 * as [b, g * k, w] (k > 1, w known): Expand's output is [b, g, k, w] and the Reshape merges g and k.
 */
function groupRepeat(value: Value | null | undefined, shapes: ShapeTable): { short: Value; ratio: number; width: number } | undefined {
  const reshape = value?.producer;
  const expanded = reshape?.inputs[0];
  const expand = expanded?.producer;
  if (!reshape || !isOp(reshape, 'Reshape') || !expand || !isOp(expand, 'Expand')) return undefined;
  const [source, out, merged] = [shapes.shape(expand.inputs[0]), shapes.shape(expanded), shapes.shape(value)];
  if (source?.length !== 4 || out?.length !== 4 || merged?.length !== 3) return undefined;
  const ratio = out[2]?.constant;
  const width = out[3]?.constant;
  if (!ratio || ratio < 2 || !width || source[2]?.constant !== 1 || source[3]?.constant !== width) return undefined;
  if (!sameDim(source[0], out[0]) || !sameDim(source[1], out[1]) || !sameDim(merged[0], out[0])) return undefined;
  if (!out[1] || !sameDim(merged[1], out[1].mul(ratio)) || merged[2]?.constant !== width) return undefined;
  return { short: expand.inputs[0]!, ratio, width };
}

/** For `Add(x, c)` (either order), c a float constant that broadcasts along the last axis only: c and x. */
function lastAxisBias(node: Node, width: number): { bias: Value; other: Value } | undefined {
  if (!isOp(node, 'Add')) return undefined;
  for (const [i, bias] of node.inputs.entries()) {
    const tensor = bias?.constTensor();
    const other = node.inputs[1 - i];
    if (!tensor || !other || tensor.dataType !== DataType.FLOAT || tensor.dims.length > 3) continue;
    const last = tensor.dims[tensor.dims.length - 1] ?? 1;
    if ((last === width || last === 1) && tensor.dims.slice(0, -1).every((d) => d === 1)) return { bias: bias!, other };
  }
  return undefined;
}

function sameShape(a: Value, b: Value, shapes: ShapeTable): boolean {
  const [x, y] = [shapes.shape(a), shapes.shape(b)];
  return !!x && !!y && x.length === y.length && x.every((d, i) => sameDim(d, y[i]));
}

/** full with short (+ bias) added to its groups (sequence.ts, addToGroups). */
function addByGroups(b: GraphBuilder, ops: VersionedOps, { short, full, ratio, width, bias }: GroupSum): Value {
  return addToGroups(b, ops, full, bias ? b.op.Add(short, bias) : short, ratio, width);
}

/** For `ReduceSum(Mul(w, x), axes [2])`, w [b, g, k, 1] and x [b, g, k, d] (k known), the Mul read only here: w, x, k. */
interface WeighedSum {
  /** [b, g, k, 1] */
  weights: Value;
  /** [b, g, k, d] */
  rows: Value;
  ratio: number;
  width: number;
}

function weighedSum(node: Node, shapes: ShapeTable): WeighedSum | undefined {
  const product = node.inputs[0];
  const mul = product?.producer;
  if (!isOp(node, 'ReduceSum') || !mul || !isOp(mul, 'Mul') || product!.useCount !== 1 || product!.isGraphOutput) return undefined;
  const axes = node.inputs[1] ? shapes.ints(node.inputs[1]) : node.attrInts('axes', []);
  if (axes?.length !== 1 || (axes[0] !== 2 && axes[0] !== -2) || node.attrInt('noop_with_empty_axes', 0) !== 0) return undefined;
  for (const [i, weights] of mul.inputs.entries()) {
    const rows = mul.inputs[1 - i];
    const [w, x] = [shapes.shape(weights), shapes.shape(rows)];
    const [ratio, width] = [x?.[2]?.constant, x?.[3]?.constant];
    if (w?.length !== 4 || x?.length !== 4 || !ratio || !width || w[3]?.constant !== 1) continue;
    if ([0, 1, 2].every((axis) => sameDim(w[axis], x[axis]))) return { weights: weights!, rows: rows!, ratio, width };
  }
  return undefined;
}

/** MatMul(w as [b, g, 1, k], x): [b, g, 1, d], as [b, g, d] unless the ReduceSum keeps its dims. */
function weighedProduct(b: GraphBuilder, ops: VersionedOps, reduce: Node, { weights, rows, ratio, width }: WeighedSum): Value {
  const batchAndGroups = leadingDims(b, ops, weights, 2);
  const rowShape = b.op.Concat(batchAndGroups, b.int64s('weight_row', [1, ratio]), { axis: 0 });
  const sums = b.op.MatMul(b.op.Reshape(weights, rowShape), rows);
  if (reduce.attrInt('keepdims', 1)) return sums;
  return b.op.Reshape(sums, b.op.Concat(batchAndGroups, b.int64s('sum_width', [width]), { axis: 0 }));
}

/** Exposed for tests: the graph's nodes that `streamlinePlugin` would rewrite. */
export function streamlineCandidates(graph: Graph): { split: Node[]; hoist: Node[]; group: Node[]; weigh: Node[] } {
  const shapes = inferShapes(graph);
  return {
    split: graph.nodes.filter((n) => splittable(n, shapes)),
    hoist: graph.nodes.filter((n) => hoistable(n, shapes)),
    group: graph.nodes.filter((n) => groupSum(n, shapes)),
    weigh: graph.nodes.filter((n) => weighedSum(n, shapes)),
  };
}
