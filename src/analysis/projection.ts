// Linear projections: a MatMul or Gemm by a constant weight, with its bias and the layout ops that
// bring the result back to the stream's shape. Attention and feed-forward blocks are made of these.
import type { Node, Value } from '../ir/graph.js';
import { type Context, dataUses, isLearned, skipForward, type Weight, weightOf } from './patterns.js';

export interface Projection {
  /** the MatMul or Gemm (for a fused attention op, the op itself) */
  matmul: Node;
  /** the activation operand */
  input: Value;
  weight: Weight;
  bias?: Value;
  /** the Add applying `bias` (absent when the bias rides in Gemm or in a fused op) */
  biasAdd?: Node;
  /** the projection's result, after its bias */
  output: Value;
  /** width of the result */
  outFeatures?: number;
  /** for a fused QKV projection: the node taking this part out of the fused result, and which part */
  part?: { node: Node; index: number };
}

/** A MatMul or Gemm whose second operand is a constant weight. */
export function isProjection(node: Node): boolean {
  return (node.opType === 'MatMul' || node.opType === 'Gemm') && !node.domain && !!weightOf(node.inputs[1]);
}

/** Layout ops a projection's result may pass through on its way back to the stream. */
const LAYOUT = new Set(['Transpose', 'Reshape', 'Squeeze', 'Unsqueeze', 'Flatten', 'Identity', 'Cast', 'Dropout']);

/**
 * The projection computed by `node`, read forward: its bias (an Add of a learned vector, or Gemm's C),
 * and, with `restoreLayout`, the reshapes that follow (a projection done on [batch*seq, d]).
 */
export function projectionAt(node: Node, ctx: Context, restoreLayout = false): Projection {
  const weight = weightOf(node.inputs[1])!;
  const gemmTransB = node.opType === 'Gemm' && node.attrInt('transB', 0) === 1;
  let output = skipForward(node.outputs[0]!);
  let bias = node.opType === 'Gemm' ? (node.inputs[2] ?? undefined) : undefined;
  let biasAdd: Node | undefined;
  const uses = dataUses(output);
  if (uses.length === 1 && uses[0].node.opType === 'Add' && !uses[0].node.domain) {
    const other = uses[0].node.inputs[1 - uses[0].index];
    if (isLearned(other)) {
      bias = other!;
      biasAdd = uses[0].node;
      output = skipForward(uses[0].node.outputs[0]!);
    }
  }
  if (restoreLayout) {
    for (
      let next = dataUses(output);
      next.length === 1 && next[0].index === 0 && LAYOUT.has(next[0].node.opType) && !next[0].node.domain;
      next = dataUses(output)
    ) {
      output = skipForward(next[0].node.outputs[0]!);
    }
  }
  return {
    matmul: node,
    input: node.inputs[0]!,
    weight: { ...weight, transposed: weight.transposed !== gemmTransB },
    bias,
    biasAdd,
    output,
    outFeatures: ctx.shapes.dim(node.outputs[0], -1)?.constant,
  };
}
