// Attributes that became inputs: the value moves, unchanged, from the node's attribute list to a new
// constant input. An omitted attribute becomes an omitted input wherever the input's default means the
// same as the attribute's did.
import { DataType, dataTypeName } from '../../src/ir/types.js';
import type { Draft } from './draft.js';
import { type Adapter, constantOf, FLOAT_TYPES, int64s, type Step } from './step.js';

/** Attribute `name` (INTS) becomes the int64 1-D input at `index`; `required` refuses a missing one. */
export function intsToInput(name: string, index: number, options: { required?: boolean; keepEmpty?: boolean } = {}): Adapter {
  return (d: Draft, step: Step) => {
    const values = attrInts(d, step, name);
    d.remove(name);
    if (values === undefined || (values.length === 0 && !options.keepEmpty)) {
      if (options.required) step.fail(`attribute '${name}' is missing`);
      return;
    }
    d.setInput(index, int64s(step, name, values));
  };
}

/** The INTS attribute's values; refuses one that refers to an attribute of an enclosing function. */
export function attrInts(d: Draft, step: Step, name: string): number[] | undefined {
  const a = d.attr(name);
  if (!a) return undefined;
  if (a.refAttrName)
    step.fail(`attribute '${name}' refers to function attribute '${a.refAttrName}'; its value must be known to become an input`);
  return d.ints(name) ?? [];
}

function attrFloat(d: Draft, step: Step, name: string): number | undefined {
  const a = d.attr(name);
  if (!a) return undefined;
  if (a.refAttrName)
    step.fail(`attribute '${name}' refers to function attribute '${a.refAttrName}'; its value must be known to become an input`);
  return a.f ?? 0;
}

/** The element type of input 0, which a scalar input of the same type needs. */
function dataType(d: Draft, step: Step, why: string): number {
  const dtype = step.dtype(d.inputs[0]);
  if (dtype === undefined) step.fail(`the element type of input '${inputName(d)}' is unknown, and ${why} must be written in it`);
  return dtype;
}

function inputName(d: Draft): string {
  const x = d.inputs[0];
  return x && 'name' in x ? x.name : 'input 0';
}

/** Reduce ops: axes to input 1 (ReduceSum at 13, the others at 18); no axes still reduces everything. */
export const reduceAxes: Adapter = intsToInput('axes', 1);

/** Squeeze at 13: axes to input 1; without axes every 1-dim is still removed. */
export const squeezeAxes: Adapter = intsToInput('axes', 1);

/** Unsqueeze at 13: axes (required) to input 1. */
export const unsqueezeAxes: Adapter = intsToInput('axes', 1, { required: true, keepEmpty: true });

/** Split at 13: the `split` sizes to input 1. */
export const splitSizes: Adapter = intsToInput('split', 1);

/** Split at 18: without sizes it must say how many equal parts (before 18 the output count said it). */
export const splitCount: Adapter = (d) => {
  if (d.inputs[1]) return;
  d.setInt('num_outputs', d.outputs.length);
};

/** Reshape at 5: the target shape to input 1. */
export const reshapeShape: Adapter = (d: Draft, step: Step) => {
  d.remove('consumed_inputs');
  intsToInput('shape', 1, { required: true, keepEmpty: true })(d, step);
};

/** TopK at 10: k to the int64 [1] input K. */
export const topkK: Adapter = (d: Draft, step: Step) => {
  const a = d.attr('k');
  if (!a) step.fail(`attribute 'k' is missing`);
  if (a.refAttrName) step.fail(`attribute 'k' refers to function attribute '${a.refAttrName}'; its value must be known to become an input`);
  const k = d.int('k', 0);
  d.remove('k');
  d.setInput(1, int64s(step, 'k', [k]));
};

/** Slice at 10: starts, ends and axes to inputs 1-3 (steps, new, default to 1). */
export const sliceBounds: Adapter = (d: Draft, step: Step) => {
  const starts = attrInts(d, step, 'starts');
  const ends = attrInts(d, step, 'ends');
  if (!starts || !ends) step.fail(`attributes 'starts' and 'ends' are required`);
  const axes = attrInts(d, step, 'axes');
  d.remove('starts', 'ends', 'axes');
  d.setInput(1, int64s(step, 'starts', starts));
  d.setInput(2, int64s(step, 'ends', ends));
  if (axes) d.setInput(3, int64s(step, 'axes', axes));
};

/** Pad at 11: pads to the int64 input 1, value to the constant_value input 2 (of the data's type). */
export const padInputs: Adapter = (d: Draft, step: Step) => {
  const pads = attrInts(d, step, 'pads');
  if (!pads) step.fail(`attribute 'pads' is missing`);
  const value = attrFloat(d, step, 'value') ?? 0;
  const mode = d.string('mode', 'constant');
  d.remove('pads', 'value');
  d.setInput(1, int64s(step, 'pads', pads));
  if (mode === 'constant' && value !== 0) {
    d.setInput(2, constantOf(step, 'constant_value', dataType(d, step, 'the pad value'), [], [value]));
  }
};

/**
 * Clip at 11: min and max to inputs 1 and 2, of the data's type. Clip-6 clamps to +-3.402823e38 when a
 * bound is missing, which turns infinities finite; for float and double that bound is kept explicitly.
 */
export const clipBounds: Adapter = (d: Draft, step: Step) => {
  const min = attrFloat(d, step, 'min');
  const max = attrFloat(d, step, 'max');
  d.remove('min', 'max', 'consumed_inputs');
  const dtype = dataType(d, step, 'the bounds');
  if (!FLOAT_TYPES.has(dtype)) step.fail(`Clip-6 takes float tensors, not ${dataTypeName(dtype)}`);
  const keepDefault = dtype === DataType.FLOAT || dtype === DataType.DOUBLE;
  const bound = (value: number | undefined, fallback: number, hint: string) =>
    value !== undefined ? constantOf(step, hint, dtype, [], [value]) : keepDefault ? constantOf(step, hint, dtype, [], [fallback]) : null;
  d.setInput(1, bound(min, -FLT_MAX, 'min'));
  d.setInput(2, bound(max, FLT_MAX, 'max'));
};

const FLT_MAX = 3.4028234663852886e38;

/** Upsample at 9: scales to the float input 1. */
export const upsampleScales: Adapter = (d: Draft, step: Step) => {
  const a = d.attr('scales');
  if (!a?.floats) step.fail(`attribute 'scales' is missing`);
  d.remove('scales');
  d.setInput(1, constantOf(step, 'scales', DataType.FLOAT, [a.floats.length], a.floats));
};

/**
 * Dropout at 12: ratio to the float input 1 (it only matters in training mode, which stays off). The mask
 * an inference run returns turns from all false (ONNX Runtime, opsets 7-11; ONNX leaves it unsaid) to all
 * true, so a node whose mask is read is refused.
 */
export const dropoutRatio: Adapter = (d: Draft, step: Step) => {
  if (step.used(d.outputs[1] ?? null))
    step.fail(`its mask is read, and in inference the mask is all false before opset 12 (ONNX Runtime) and all true from 12`);
  const ratio = attrFloat(d, step, 'ratio');
  if (ratio === undefined) return;
  d.remove('ratio');
  d.setInput(1, constantOf(step, 'ratio', DataType.FLOAT, [], [ratio]));
};

/** DFT at 20: axis (default 1) to the int64 scalar input 2. */
export const dftAxis: Adapter = (d: Draft, step: Step) => {
  const a = d.attr('axis');
  if (a?.refAttrName)
    step.fail(`attribute 'axis' refers to function attribute '${a.refAttrName}'; its value must be known to become an input`);
  const axis = d.int('axis', 1);
  d.remove('axis');
  d.setInput(2, int64s(step, 'axis', [axis], []));
};
