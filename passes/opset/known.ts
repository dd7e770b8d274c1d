// What the upgrade can know of a value's rank and element type: shape inference first, then the declared
// type, then, for the ops that shape inference does not model, their input's (an op whose output keeps
// the rank or the element type of its first input passes them on).
import type { ShapeTable } from '../../src/analysis/shapes.js';
import type { Node, Value } from '../../src/ir/graph.js';
import { isTensorType } from '../../src/ir/types.js';

/** Ops whose first output has the element type of their first input. */
const SAME_TYPE = new Set([
  'TopK', 'Split', 'Dropout', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'GlobalMaxPool', 'LpPool', 'GlobalLpPool',
  'BatchNormalization', 'InstanceNormalization', 'LRN', 'LpNormalization', 'MeanVarianceNormalization', 'Upsample', 'Resize', 'Pad',
  'Slice', 'Tile', 'Transpose', 'Flatten', 'Reshape', 'Squeeze', 'Unsqueeze', 'Concat', 'Gather', 'GatherElements', 'GatherND', 'Expand',
  'Identity', 'Relu', 'LeakyRelu', 'PRelu', 'Elu', 'Selu', 'Celu', 'Sigmoid', 'HardSigmoid', 'HardSwish', 'Tanh', 'Softplus', 'Softsign',
  'Softmax', 'LogSoftmax', 'Hardmax', 'Clip', 'Abs', 'Neg', 'Exp', 'Log', 'Sqrt', 'Reciprocal', 'Floor', 'Ceil', 'Round', 'Sign',
  'Add', 'Sub', 'Mul', 'Div', 'Pow', 'Mod', 'Max', 'Min', 'Sum', 'Mean', 'MatMul', 'Gemm', 'Conv', 'ConvTranspose', 'ReduceSum',
  'ReduceMean', 'ReduceMax', 'ReduceMin', 'ReduceProd', 'ReduceL1', 'ReduceL2', 'ReduceLogSum', 'ReduceLogSumExp', 'ReduceSumSquare',
  'DepthToSpace', 'SpaceToDepth', 'ReverseSequence', 'Scatter', 'ScatterElements', 'ScatterND', 'CumSum', 'Trilu', 'Shrink',
  'ThresholdedRelu', 'Erf', 'Sin', 'Cos', 'Tan', 'Asin', 'Acos', 'Atan', 'Sinh', 'Cosh', 'Asinh', 'Acosh', 'Atanh', 'MaxUnpool',
  'RoiAlign', 'GridSample', 'Compress', 'Einsum', 'LayerNormalization', 'GroupNormalization',
]);

/** Ops whose first output has the rank of their first input. */
const SAME_RANK = new Set([
  'TopK', 'Dropout', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'GlobalMaxPool', 'LpPool', 'GlobalLpPool', 'BatchNormalization',
  'InstanceNormalization', 'LRN', 'LpNormalization', 'MeanVarianceNormalization', 'Upsample', 'Resize', 'Pad', 'Slice', 'Tile',
  'Transpose', 'Relu', 'LeakyRelu', 'PRelu', 'Elu', 'Selu', 'Celu', 'Sigmoid', 'HardSigmoid', 'HardSwish', 'Tanh', 'Softplus',
  'Softsign', 'Softmax', 'LogSoftmax', 'Hardmax', 'Clip', 'Abs', 'Neg', 'Exp', 'Log', 'Sqrt', 'Reciprocal', 'Floor', 'Ceil', 'Round',
  'Sign', 'Conv', 'ConvTranspose', 'DepthToSpace', 'SpaceToDepth', 'CumSum', 'Trilu', 'Shrink', 'ThresholdedRelu', 'Erf', 'Cast',
  'Concat', 'Identity', 'Split', 'Scatter', 'ScatterElements', 'ScatterND', 'RoiAlign', 'LayerNormalization', 'GroupNormalization',
]);

const DEPTH = 64;

export function knownRank(v: Value, shapes: ShapeTable): number | undefined {
  for (let at: Value | null | undefined = v, depth = 0; at && depth < DEPTH; depth++) {
    const rank = shapes.rank(at) ?? (isTensorType(at.type) ? at.type.shape?.length : undefined);
    if (rank !== undefined) return rank;
    const p: Node | null = at.producer;
    if (!p || (p.domain ?? '') !== '' || !SAME_RANK.has(p.opType) || (p.opType !== 'Split' && at.producerIndex !== 0)) return undefined;
    at = p.inputs[0];
  }
  return undefined;
}

export function knownDtype(v: Value, shapes: ShapeTable): number | undefined {
  for (let at: Value | null | undefined = v, depth = 0; at && depth < DEPTH; depth++) {
    const t = at.constTensor();
    if (t) return t.dataType;
    const dtype = shapes.get(at).dtype ?? (isTensorType(at.type) ? at.type.elemType : undefined);
    if (dtype !== undefined) return dtype;
    const p: Node | null = at.producer;
    if (!p || (p.domain ?? '') !== '' || !SAME_TYPE.has(p.opType) || (p.opType !== 'Split' && at.producerIndex !== 0)) return undefined;
    at = p.inputs[0];
  }
  return undefined;
}
