// Opsets 2-9: the changes of ONNX's first releases. Attributes that were dropped (consumed_inputs, is_test,
// output_sequence, broadcast), defaults that moved, and the forms that changed shape: legacy broadcasting
// along an axis, Tile along one axis, per-channel PRelu slopes, per-activation BatchNormalization.
import { AttributeType } from '../../src/ir/graph.js';
import { versionAt } from '../../src/ir/op-versions.js';
import { DataType } from '../../src/ir/types.js';
import { type Draft, Fresh } from './draft.js';
import { type Adapter, constantOf, int64s, reshapedConstant, type Step } from './step.js';

/** Drop attributes whose removal does not change what the node computes. */
export function drop(...names: string[]): Adapter {
  return (d) => d.remove(...names);
}

/** Every op that lost the `consumed_inputs` optimization hint at opset 6 (Reshape at 5). */
export const dropConsumed: Adapter = drop('consumed_inputs');

/**
 * Add, Sub, Mul, Div, Pow, And, Or, Xor, Equal, Greater, Less at 7: `broadcast=1` matched B against a
 * run of A's dims starting at `axis` (by default A's last dims, which is what numpy-style broadcasting
 * does); from 7 broadcasting is numpy-style, so B gets trailing 1s where the run ended before A's end.
 */
export const legacyBroadcast: Adapter = (d: Draft, step: Step) => {
  const broadcast = d.int('broadcast', 0);
  const hasAxis = d.has('axis');
  const axis = d.int('axis', 0);
  d.remove('broadcast', 'axis', 'consumed_inputs');
  if (broadcast !== 1 || !hasAxis) return;
  const [a, b] = d.inputs;
  const ra = step.rank(a);
  const rb = step.rank(b);
  if (ra === undefined || rb === undefined)
    step.fail(`broadcasting along axis ${axis} needs the ranks of both inputs, and they are unknown`);
  const start = axis < 0 ? axis + ra : axis;
  const trailing = ra - start - rb;
  if (start < 0 || trailing < 0) step.fail(`input B (rank ${rb}) does not fit input A (rank ${ra}) at axis ${axis}`);
  if (trailing === 0) return;
  return withTrailingOnes(d, step, 1, rb, trailing);
};

/** Give input `index` (rank `rank`) `count` trailing 1-dims: reshape a constant, else Unsqueeze it. */
// biome-ignore lint/suspicious/noConfusingVoidType: an Adapter (see step.ts)
function withTrailingOnes(d: Draft, step: Step, index: number, rank: number, count: number): Draft[] | void {
  const input = d.inputs[index];
  const axes = Array.from({ length: count }, (_, i) => rank + i);
  const tensor = step.constant(input);
  if (tensor) {
    d.setInput(index, reshapedConstant(tensor, [...tensor.dims, ...axes.map(() => 1)], 'broadcast'));
    return;
  }
  const unsqueeze = step.node('Unsqueeze', [input], [new Fresh('broadcast', { rank: rank + count, dtype: step.dtype(input) })]);
  unsqueeze.setInts('axes', axes);
  d.setInput(index, unsqueeze.outputs[0]);
  return [unsqueeze, d];
}

/** Cast at 6: `to` was a type name, it became the TensorProto data type number. */
export const castTo: Adapter = (d: Draft, step: Step) => {
  const a = d.attr('to');
  if (!a?.s) return;
  const name = d.string('to', '').toUpperCase();
  const dtype = (DataType as Record<string, number>)[name];
  if (dtype === undefined || dtype === DataType.UNDEFINED) step.fail(`'to' names no data type: '${d.string('to', '')}'`);
  d.setInt('to', dtype);
};

/** Concat at 4: axis became required; it used to default to 1. */
export const concatAxis: Adapter = (d) => {
  if (!d.has('axis')) d.setInt('axis', 1);
};

/** Pad at 2: `paddings` was renamed `pads`. */
export const padRename: Adapter = (d) => {
  const a = d.attr('paddings');
  if (!a) return;
  d.remove('paddings');
  d.set({ ...a, name: 'pads' });
};

/** Split at 2: the sizes could be a second input; from 2 they are the `split` attribute only. */
export const splitSizesToAttribute: Adapter = (d: Draft, step: Step) => {
  const sizes = d.inputs[1];
  if (!sizes) return;
  const values = constantNumbers(step, sizes);
  if (!values) step.fail(`the split sizes (input 1) are not a constant, and from opset 2 they must be an attribute`);
  d.setInput(1, null);
  d.setInts('split', values);
};

/** LpPool and GlobalLpPool at 2: p went from float to int. */
export const lpPoolP: Adapter = (d: Draft, step: Step) => {
  const a = d.attr('p');
  if (!a || a.f === undefined) return;
  if (!Number.isInteger(a.f)) step.fail(`p = ${a.f} is not a whole number, and from opset 2 p is an integer`);
  d.setInt('p', a.f);
};

/** Selu at 6: the defaults became the float32 values of the exact constants; keep the old ones. */
export const seluDefaults: Adapter = (d) => {
  d.remove('consumed_inputs');
  if (!d.has('alpha')) d.setFloat('alpha', 1.6732);
  if (!d.has('gamma')) d.setFloat('gamma', 1.0507);
};

/** Tile at 6: (tiles, axis) along one axis became `repeats` for every axis. */
export const tileRepeats: Adapter = (d: Draft, step: Step) => {
  const tiles = constantNumbers(step, d.inputs[1]);
  const axis = constantNumbers(step, d.inputs[2]);
  const rank = step.rank(d.inputs[0]);
  if (!tiles || !axis) step.fail(`tiles and axis must be constants to become repeats`);
  if (rank === undefined) step.fail(`the rank of the input is unknown, and repeats needs one entry per axis`);
  const repeats = Array<number>(rank).fill(1);
  const at = axis[0] < 0 ? axis[0] + rank : axis[0];
  if (at < 0 || at >= rank) step.fail(`axis ${axis[0]} is out of range for rank ${rank}`);
  repeats[at] = tiles[0];
  d.setInput(2, null);
  d.setInput(1, int64s(step, 'repeats', repeats));
};

/**
 * PRelu at 7: a 1-D slope of C values applied per channel (axis 1); from 7 the slope broadcasts numpy-style
 * (against the last axes), so a per-channel slope gets trailing 1s for the spatial axes.
 */
export const preluSlope: Adapter = (d: Draft, step: Step) => {
  d.remove('consumed_inputs');
  const dims = step.dims(d.inputs[1]);
  if (!dims) step.fail(`the shape of the slope is unknown`);
  if (dims.length !== 1 || dims[0] === 1) return;
  const rank = step.rank(d.inputs[0]);
  if (rank === undefined) step.fail(`the rank of the input is unknown, and a per-channel slope must be reshaped to it`);
  if (rank <= 2) return;
  return withTrailingOnes(d, step, 1, 1, rank - 2);
};

/** Upsample at 7: width_scale and height_scale became `scales` for every axis (NCHW), bilinear became linear. */
export const upsampleScalesAttribute: Adapter = (d: Draft, step: Step) => {
  const h = d.attr('height_scale')?.f;
  const w = d.attr('width_scale')?.f;
  if (h === undefined || w === undefined) step.fail(`attributes 'height_scale' and 'width_scale' are required`);
  d.remove('height_scale', 'width_scale');
  d.set({ name: 'scales', type: AttributeType.FLOATS, floats: [1, 1, h, w] });
  const mode = d.string('mode', 'nearest');
  if (mode === 'bilinear') d.setString('mode', 'linear');
  else if (mode !== 'nearest') step.fail(`mode '${mode}' is neither nearest nor bilinear`);
};

/**
 * BatchNormalization at 9: `spatial=0` (statistics per activation: scale, B, mean and var of shape
 * [C, D1, ...]) has no opset-9 form, so it becomes its formula, (X - mean) * (scale / sqrt(var + epsilon)) + B;
 * the node itself becomes the final Add.
 */
export const batchNormSpatial: Adapter = (d: Draft, step: Step) => {
  const spatial = d.int('spatial', 1);
  d.remove('spatial');
  if (spatial === 1) return;
  if (d.outputs.slice(1).some((o) => o)) step.fail(`per-activation (spatial=0) statistics in training mode have no opset-9 form`);
  const [x, scale, bias, mean, variance] = d.inputs;
  const dtype = step.dtype(x);
  if (dtype === undefined) step.fail(`the element type of the input is unknown, and epsilon must be written in it`);
  const epsilon = constantOf(step, 'epsilon', dtype, [], [d.float('epsilon', 1e-5)]);
  const node = (op: string, inputs: Draft['inputs'], hint: string) => step.node(op, inputs, [new Fresh(hint, { dtype })]);
  const shifted = node('Add', [variance, epsilon], 'var_eps');
  const std = node('Sqrt', [shifted.outputs[0]], 'std');
  const ratio = node('Div', [scale, std.outputs[0]], 'ratio');
  const centered = node('Sub', [x, mean], 'centered');
  const scaled = node('Mul', [centered.outputs[0], ratio.outputs[0]], 'scaled');
  d.rename('Add', versionAt('Add', step.to)!);
  d.attributes = [];
  d.inputs = [scaled.outputs[0], bias];
  return [shifted, std, ratio, centered, scaled, d];
};

/** Scan at 9: Scan-8 runs over a batch (a batch axis and sequence_lens) that Scan-9 no longer has. */
export const scanBatch: Adapter = (_d: Draft, step: Step) => {
  step.fail(`Scan-8 scans a batch of sequences (batch axis, sequence_lens) and Scan-9 has no batch axis`);
};

/** Numbers of a constant of any numeric type (Tile-1 and Split-1 took them as float tensors). */
function constantNumbers(step: Step, ref: Draft['inputs'][number]): number[] | undefined {
  const t = step.constant(ref);
  if (!t || t.storage.kind === 'strings') return undefined;
  try {
    return t.toNumbers().map((v) => Math.round(v));
  } catch {
    return undefined;
  }
}
