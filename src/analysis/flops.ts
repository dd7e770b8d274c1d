// Multiply-accumulate counts from inferred shapes, as symbolic expressions in the model's dims.
// Counted: matrix products (MatMul, Gemm), convolutions, and the products inside fused attention ops.
// Not counted: softmax, norms, activations and other elementwise work (linear in the tensor size and
// small next to the products).
import type { Node } from '../ir/graph.js';
import type { ShapeTable } from './shapes.js';
import { broadcastShapes, fusedMatMulOperands } from './shapes.js';
import { Expr, product } from './symbolic.js';

/** MACs of one node, zero for ops that are not counted, undefined when a shape is unknown. */
export function nodeMacs(node: Node, shapes: ShapeTable): Expr | undefined {
  if (node.domain && node.domain !== 'com.microsoft') return Expr.num(0);
  switch (node.opType) {
    case 'MatMul':
      return matmulMacs(shapes.shape(node.inputs[0]), shapes.shape(node.inputs[1]));
    case 'FusedMatMul':
      return node.domain === 'com.microsoft' ? matmulMacs(...fusedMatMulOperands(node, shapes)) : Expr.num(0);
    case 'Gemm': {
      const a = shapes.shape(node.inputs[0]);
      const b = shapes.shape(node.inputs[1]);
      if (!a || !b || a.length !== 2 || b.length !== 2) return undefined;
      const [m, k] = node.attrInt('transA', 0) ? [a[1], a[0]] : [a[0], a[1]];
      const n = node.attrInt('transB', 0) ? b[0] : b[1];
      return product([m, k, n]);
    }
    case 'Conv': {
      const out = shapes.shape(node.outputs[0]);
      const w = shapes.shape(node.inputs[1]);
      if (!out || !w) return undefined;
      // every output element takes (Cin/group) * kernel products; w is [Cout, Cin/group, k...]
      const perOutput = product(w.slice(1));
      const outputs = product(out);
      return perOutput && outputs ? perOutput.mul(outputs) : undefined;
    }
    case 'Attention':
      return node.domain === 'com.microsoft' ? fusedAttentionMacs(node, shapes) : Expr.num(0);
    default:
      return Expr.num(0);
  }
}

/** [..., m, k] x [..., k, n]: batch * m * k * n. */
export function matmulMacs(a: (Expr | undefined)[] | undefined, b: (Expr | undefined)[] | undefined): Expr | undefined {
  if (!a || !b || a.length === 0 || b.length === 0) return undefined;
  const a2 = a.length === 1 ? [Expr.num(1), a[0]] : a;
  const b2 = b.length === 1 ? [b[0], Expr.num(1)] : b;
  const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)]);
  if (!batch) return undefined;
  return product([...batch, a2[a2.length - 2], a2[a2.length - 1], b2[b2.length - 1]]);
}

/**
 * com.microsoft Attention: the QKV projection [b, s, d] x [d, 3d'] plus scores and context,
 * 2 * b * s * s * d' (the output projection is a separate MatMul in these graphs).
 */
function fusedAttentionMacs(node: Node, shapes: ShapeTable): Expr | undefined {
  const x = shapes.shape(node.inputs[0]);
  const w = shapes.shape(node.inputs[1]);
  if (!x || !w || x.length !== 3 || w.length !== 2) return undefined;
  const [b, s, d] = x;
  const sizes = node.attr('qkv_hidden_sizes')?.ints?.map(Number);
  const qk = sizes ? Expr.num(sizes[0]) : w[1]?.divExact(3);
  const v = sizes ? Expr.num(sizes[2]) : qk;
  const proj = product([b, s, d, w[1]]);
  const scores = product([b, s, s, qk]);
  const context = product([b, s, s, v]);
  return proj && scores && context ? proj.add(scores).add(context) : undefined;
}

/** Sum over `nodes`; `unknown` lists nodes whose count could not be derived. */
export function sumMacs(nodes: Iterable<Node>, shapes: ShapeTable): { macs: Expr; unknown: Node[] } {
  let macs = Expr.num(0);
  const unknown: Node[] = [];
  for (const node of nodes) {
    const m = nodeMacs(node, shapes);
    if (m) macs = macs.add(m);
    else unknown.push(node);
  }
  return { macs, unknown };
}
