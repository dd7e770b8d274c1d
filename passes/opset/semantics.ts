// Changes of meaning, not only of form: Softmax's axis, Upsample and Resize's coordinate rules, Dropout's
// mask type, BatchNormalization's training outputs, RoiAlign's and GridSample's defaults, GroupNormalization's
// per-channel scale. Each adapter keeps what the node computed, or refuses and says why.

import { versionAt } from '../../src/ir/op-versions.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType, dataTypeName } from '../../src/ir/types.js';
import { type Draft, Fresh, NewConstant } from './draft.js';
import { type Adapter, constantFloats, constantOf, FLOAT_TYPES, type Step } from './step.js';

/**
 * Softmax, LogSoftmax and Hardmax at 13. Before 13 they coerced the input to 2-D, [d0*...*d(axis-1),
 * d(axis)*...*dn], and normalized each row; from 13 they normalize along `axis` alone (default -1 instead
 * of 1). On the last axis the two agree; elsewhere the old computation is spelled out:
 * Reshape(op(Flatten(x, axis), axis=1), Shape(x)).
 */
export const softmaxAxis: Adapter = (d: Draft, step: Step) => {
  const x = d.inputs[0];
  const axis = d.int('axis', 1);
  const rank = step.rank(x);
  if (rank !== undefined && (axis < 0 ? axis + rank : axis) === rank - 1) {
    if (!d.has('axis')) d.setInt('axis', axis);
    return;
  }
  const dtype = step.dtype(x);
  const y = d.outputs[0];
  const flat = step.node('Flatten', [x], [new Fresh('flat', { rank: 2, dtype })]);
  flat.setInt('axis', axis);
  const shape = step.node('Shape', [x], [new Fresh('shape', { rank: 1, dtype: DataType.INT64 })]);
  const rows = new Fresh(`${d.op}_2d`, { rank: 2, dtype });
  d.setInput(0, flat.outputs[0]);
  d.setOutput(0, rows);
  d.setInt('axis', 1);
  const back = step.node('Reshape', [rows, shape.outputs[0]], [y]);
  return [flat, shape, d, back];
};

/**
 * Upsample at 10 becomes Resize-10, which computes the same for the two modes Upsample has. Upsample's
 * scales are >= 1 (ONNX says so and ONNX Runtime refuses others), which Resize at 11 relies on.
 */
export const upsampleToResize: Adapter = (d: Draft, step: Step) => {
  const mode = d.string('mode', 'nearest');
  if (mode !== 'nearest' && mode !== 'linear') step.fail(`mode '${mode}' has no Resize equivalent`);
  d.rename('Resize', versionAt('Resize', step.to)!);
  d.facts.add(ENLARGES);
};

const ENLARGES = 'scales >= 1';

/**
 * Resize at 11 (from 10, or from Upsample): Resize-10 maps output to input coordinates as x / scale
 * ('asymmetric') and, for nearest, rounds down when enlarging and up when shrinking (as ONNX Runtime
 * does); opset 11 says so with coordinate_transformation_mode and nearest_mode. It also takes a roi input.
 */
export const resizeCoordinates: Adapter = (d: Draft, step: Step) => {
  const mode = d.string('mode', 'nearest');
  if (mode !== 'nearest' && mode !== 'linear') step.fail(`mode '${mode}' is neither nearest nor linear`);
  const scales = d.inputs[1];
  d.setInput(2, scales);
  d.setInput(1, constantOf(step, 'roi', DataType.FLOAT, [0], []));
  d.setString('coordinate_transformation_mode', 'asymmetric');
  if (mode !== 'nearest') return;
  if (d.facts.has(ENLARGES)) {
    d.setString('nearest_mode', 'floor');
    return;
  }
  const values = constantFloats(step, scales);
  if (!values)
    step.fail(
      `nearest resizing rounds down when enlarging and up when shrinking; the scales are not constant, so no single nearest_mode says which`,
    );
  const enlarges = values.every((s) => s >= 1);
  const shrinks = values.every((s) => s <= 1);
  if (!enlarges && !shrinks)
    step.fail(`scales [${values.join(', ')}] enlarge some axes and shrink others, which no single nearest_mode rounds as before`);
  d.setString('nearest_mode', enlarges ? 'floor' : 'ceil');
};

/** Resize at 13: coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed. */
export const resizeModes: Adapter = (d: Draft, step: Step) => {
  const mode = d.string('coordinate_transformation_mode', 'half_pixel');
  if (mode === 'tf_half_pixel_for_nn') step.fail(`coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed and has no equivalent`);
};

/** Scatter at 11 became ScatterElements (same inputs, same meaning). */
export const scatterToElements: Adapter = (d: Draft, step: Step) => {
  d.rename('ScatterElements', versionAt('ScatterElements', step.to)!);
};

/**
 * Dropout at 10: the mask became bool; a mask that is read is cast back to the data's type. (In inference
 * ONNX Runtime's mask is all false through opset 11 and all true from 12: see dropoutRatio.)
 */
export const dropoutMask: Adapter = (d: Draft, step: Step) => {
  const mask = d.outputs[1];
  if (!mask || !step.used(mask)) return;
  const dtype = step.dtype(d.inputs[0]);
  if (dtype === undefined)
    step.fail(`the mask is read and the element type of the data is unknown, which the bool mask must be cast back to`);
  const bools = new Fresh('mask_bool', { dtype: DataType.BOOL });
  d.setOutput(1, bools);
  const cast = step.node('Cast', [bools], [mask]);
  cast.setInt('to', dtype);
  return [d, cast];
};

/**
 * BatchNormalization at 14: the optional outputs (running mean and var, saved mean and var) meant training
 * mode; from 14 `training_mode=1` says so and only the running statistics remain.
 */
export const batchNormOutputs: Adapter = (d: Draft, step: Step) => {
  if (d.outputs.slice(1).every((o) => !o)) return;
  const saved = [d.outputs[3], d.outputs[4]].find((o) => step.used(o ?? null));
  if (saved)
    step.fail(`output '${'name' in saved ? saved.name : 'saved'}' (saved mean or var, training outputs 3-4) was removed in opset 14`);
  d.setOutput(4, null);
  d.setOutput(3, null);
  d.setInt('training_mode', 1);
};

/** RoiAlign at 16: the default coordinate_transformation_mode became half_pixel; before it was output_half_pixel. */
export const roiAlignMode: Adapter = (d) => {
  if (!d.has('coordinate_transformation_mode')) d.setString('coordinate_transformation_mode', 'output_half_pixel');
};

/** GridSample at 20: modes bilinear and bicubic were renamed linear and cubic. */
export const gridSampleMode: Adapter = (d) => {
  const mode = d.string('mode', 'bilinear');
  const renamed = { bilinear: 'linear', bicubic: 'cubic' }[mode];
  if (renamed && d.has('mode')) d.setString('mode', renamed);
};

/** GroupNormalization at 21: scale and bias went from one value per group to one per channel. */
export const groupNormScale: Adapter = (d: Draft, step: Step) => {
  const groups = d.int('num_groups', 0);
  const channels = step.dims(d.inputs[0])?.[1];
  if (channels === undefined) step.fail(`the channel count (dim 1 of the input) is unknown, and scale and bias must be repeated to it`);
  if (groups <= 0 || channels % groups !== 0) step.fail(`${channels} channels do not split into ${groups} groups`);
  for (const index of [1, 2]) {
    const tensor = step.constant(d.inputs[index]);
    if (!tensor || tensor.size !== groups) step.fail(`input ${index} must be a constant of ${groups} values to be repeated per channel`);
    d.setInput(index, repeatEach(tensor, channels / groups, index === 1 ? 'scale' : 'bias'));
  }
};

function repeatEach(tensor: Tensor, times: number, hint: string): NewConstant {
  const bytes = tensor.bytes();
  const width = bytes.length / tensor.size;
  const out = new Uint8Array(bytes.length * times);
  for (let i = 0; i < tensor.size; i++) {
    for (let k = 0; k < times; k++) out.set(bytes.subarray(i * width, (i + 1) * width), (i * times + k) * width);
  }
  return new NewConstant(Tensor.fromRaw(undefined, tensor.dataType, [tensor.size * times], out), hint);
}

/** Erf at 13 takes float types only (Erf-9 also took integers). */
export const erfTypes: Adapter = (d: Draft, step) => {
  const dtype = step.dtype(d.inputs[0]);
  if (dtype !== undefined && !FLOAT_TYPES.has(dtype)) step.fail(`Erf-13 takes float tensors, not ${dataTypeName(dtype)}`);
};
