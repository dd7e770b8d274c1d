// Which step of which op needs an adapter: ADAPTERS[op][v] converts a node of `op` into the version that
// opset v defines. Every other version in OP_VERSIONS was checked against ONNX's changelog and is
// compatible: it adds types, allows negative axes or indices, documents what was meant, or adds an
// attribute or input whose default keeps the old meaning (ArgMax select_last_index, Reshape allowzero,
// Shape start/end, TopK largest/sorted, ScatterElements reduction, Resize antialias, Cast saturate,
// AveragePool dilations, RNN layout, DepthToSpace mode, ...). Three that look like changes are not:
// - Conv and ConvTranspose at 11 rewrote the auto_pad text; ONNX Runtime computes opset 1-10 and 11
//   identically, and the reference outputs of ONNX's backend tests agree.
// - Pooling at 10-11 and Gather at 11 only allow dilations and negative indices.
// - LRN at 13 only adds bfloat16.

import {
  batchNormSpatial,
  castTo,
  concatAxis,
  drop,
  dropConsumed,
  legacyBroadcast,
  lpPoolP,
  padRename,
  preluSlope,
  scanBatch,
  seluDefaults,
  splitSizesToAttribute,
  tileRepeats,
  upsampleScalesAttribute,
} from './legacy.js';
import {
  batchNormOutputs,
  dropoutMask,
  erfTypes,
  gridSampleMode,
  groupNormScale,
  resizeCoordinates,
  resizeModes,
  roiAlignMode,
  scatterToElements,
  softmaxAxis,
  upsampleToResize,
} from './semantics.js';
import type { Adapter } from './step.js';
import {
  clipBounds,
  dftAxis,
  dropoutRatio,
  padInputs,
  reduceAxes,
  reshapeShape,
  sliceBounds,
  splitCount,
  splitSizes,
  squeezeAxes,
  topkK,
  unsqueezeAxes,
  upsampleScales,
} from './to-inputs.js';

const consumedAt6 = [
  'Abs',
  'BatchNormalization',
  'Ceil',
  'Dropout',
  'Elu',
  'Exp',
  'Floor',
  'HardSigmoid',
  'InstanceNormalization',
  'LeakyRelu',
  'Log',
  'Max',
  'Mean',
  'Min',
  'Neg',
  'Reciprocal',
  'Relu',
  'Sigmoid',
  'Sqrt',
  'Sum',
  'Tanh',
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Clip',
];
const legacyBroadcastAt7 = ['Add', 'Sub', 'Mul', 'Div', 'Pow', 'And', 'Or', 'Xor', 'Equal', 'Greater', 'Less'];
const reducesAt18 = [
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceMax',
  'ReduceMean',
  'ReduceMin',
  'ReduceProd',
  'ReduceSumSquare',
];

function build(): Record<string, Record<number, Adapter>> {
  const table: Record<string, Record<number, Adapter>> = {};
  const add = (op: string, version: number, adapter: Adapter) => {
    (table[op] ??= {})[version] = adapter;
  };
  for (const op of consumedAt6) add(op, 6, dropConsumed);
  for (const op of legacyBroadcastAt7) add(op, 7, legacyBroadcast);
  for (const op of reducesAt18) add(op, 18, reduceAxes);
  for (const op of ['Softmax', 'LogSoftmax', 'Hardmax']) add(op, 13, softmaxAxis);
  for (const op of ['GRU', 'LSTM', 'RNN']) add(op, 7, drop('output_sequence'));
  for (const op of ['LpPool', 'GlobalLpPool']) add(op, 2, lpPoolP);

  add('Pad', 2, padRename);
  add('Pad', 11, padInputs);
  add('Split', 2, splitSizesToAttribute);
  add('Split', 13, splitSizes);
  add('Split', 18, splitCount);
  add('Concat', 4, concatAxis);
  add('Reshape', 5, reshapeShape);
  add('Cast', 6, castTo);
  add('Selu', 6, seluDefaults);
  add('Tile', 6, tileRepeats);
  add('Gemm', 7, drop('broadcast'));
  add('PRelu', 6, dropConsumed);
  add('PRelu', 7, preluSlope);
  add('BatchNormalization', 7, drop('is_test'));
  add('BatchNormalization', 9, batchNormSpatial);
  add('BatchNormalization', 14, batchNormOutputs);
  add('Dropout', 7, drop('is_test'));
  add('Dropout', 10, dropoutMask);
  add('Dropout', 12, dropoutRatio);
  add('Upsample', 7, upsampleScalesAttribute);
  add('Upsample', 9, upsampleScales);
  add('Upsample', 10, upsampleToResize);
  add('Resize', 11, resizeCoordinates);
  add('Resize', 13, resizeModes);
  add('Scatter', 11, scatterToElements);
  add('Scan', 9, scanBatch);
  add('Slice', 10, sliceBounds);
  add('TopK', 10, topkK);
  add('Clip', 11, clipBounds);
  add('Squeeze', 13, squeezeAxes);
  add('Unsqueeze', 13, unsqueezeAxes);
  add('ReduceSum', 13, reduceAxes);
  add('Erf', 13, erfTypes);
  add('RoiAlign', 16, roiAlignMode);
  add('GridSample', 20, gridSampleMode);
  add('DFT', 20, dftAxis);
  add('GroupNormalization', 21, groupNormScale);
  return table;
}

export const ADAPTERS: Readonly<Record<string, Readonly<Record<number, Adapter>>>> = build();
