// What an adapter sees while it converts one draft across one opset step, and the small tensors it makes.
import { Tensor } from '../../src/ir/tensor.js';
import { DataType, dataTypeName } from '../../src/ir/types.js';
import type { Draft, OutRef, Ref } from './draft.js';
import { NewConstant } from './draft.js';

/**
 * Converts `draft` from opset `step.from` to `step.to` (the version of its op that `to` defines). It edits
 * the draft in place, or returns the drafts that replace it, in topological order, the draft itself among
 * them. It never touches the graph; `step.fail` refuses the conversion.
 */
// biome-ignore lint/suspicious/noConfusingVoidType: an adapter that only edits the draft in place returns nothing
export type Adapter = (draft: Draft, step: Step) => Draft[] | void;

export interface Step {
  /** the opset the draft is written for */
  readonly from: number;
  /** the opset being entered */
  readonly to: number;
  /** Refuse: the message names the node, its op and this step. */
  fail(reason: string): never;
  rank(ref: Ref): number | undefined;
  dtype(ref: Ref): number | undefined;
  /** static dims, an undefined entry where a dim is not a known number */
  dims(ref: Ref): (number | undefined)[] | undefined;
  /** the constant tensor behind `ref`, when it is one */
  constant(ref: Ref): Tensor | undefined;
  /** whether anything reads this output (a node, a graph output, a subgraph) */
  used(ref: OutRef): boolean;
  /** A node the conversion adds, written for this step's opset (later steps carry it on). */
  node(op: string, inputs: Ref[], outputs: OutRef[]): Draft;
}

/** A new constant of `dtype`, data given as numbers (bigints for 64-bit integers are made here). */
export function constantOf(step: Step, hint: string, dtype: number, dims: number[], values: readonly number[]): NewConstant {
  const data = typedData(dtype, values);
  if (!data) step.fail(`cannot write a ${dataTypeName(dtype)} constant for ${hint}`);
  return new NewConstant(Tensor.fromArray(undefined, dtype, dims, data), hint);
}

export function int64s(step: Step, hint: string, values: readonly number[], dims: number[] = [values.length]): NewConstant {
  return constantOf(step, hint, DataType.INT64, dims, values);
}

/** The same data under new dims (a legacy broadcast's operand given its trailing 1s). */
export function reshapedConstant(tensor: Tensor, dims: number[], hint: string): NewConstant {
  if (tensor.storage.kind === 'strings') return new NewConstant(new Tensor(undefined, tensor.dataType, dims, tensor.storage), hint);
  return new NewConstant(Tensor.fromRaw(undefined, tensor.dataType, dims, tensor.bytes()), hint);
}

/** Integer elements of a constant ref, when it is one of an integer type. */
export function constantInts(step: Step, ref: Ref): number[] | undefined {
  const t = step.constant(ref);
  if (!t || !INTEGER_TYPES.has(t.dataType)) return undefined;
  try {
    return t.toNumbers();
  } catch {
    return undefined;
  }
}

/** Float elements of a constant ref of a floating type. */
export function constantFloats(step: Step, ref: Ref): number[] | undefined {
  const t = step.constant(ref);
  if (!t || !FLOAT_TYPES.has(t.dataType)) return undefined;
  return Array.from(t.toFloat32());
}

export const FLOAT_TYPES: ReadonlySet<number> = new Set([DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16, DataType.BFLOAT16]);
export const INTEGER_TYPES: ReadonlySet<number> = new Set([
  DataType.INT8,
  DataType.INT16,
  DataType.INT32,
  DataType.INT64,
  DataType.UINT8,
  DataType.UINT16,
  DataType.UINT32,
  DataType.UINT64,
]);

function typedData(dtype: number, values: readonly number[]): ArrayBufferView | undefined {
  switch (dtype) {
    case DataType.FLOAT:
      return Float32Array.from(values);
    case DataType.DOUBLE:
      return Float64Array.from(values);
    case DataType.FLOAT16:
      return Uint16Array.from(values, floatToHalf);
    case DataType.BFLOAT16:
      return Uint16Array.from(values, floatToBfloat16);
    case DataType.INT64:
      return BigInt64Array.from(values, (v) => BigInt(v));
    case DataType.UINT64:
      return BigUint64Array.from(values, (v) => BigInt(v));
    case DataType.INT32:
      return Int32Array.from(values);
    case DataType.UINT32:
      return Uint32Array.from(values);
    case DataType.INT16:
      return Int16Array.from(values);
    case DataType.UINT16:
      return Uint16Array.from(values);
    case DataType.INT8:
      return Int8Array.from(values);
    case DataType.UINT8:
    case DataType.BOOL:
      return Uint8Array.from(values);
    default:
      return undefined;
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> float16 bits, rounding to nearest even (values beyond the range become infinity). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mantissa | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return half;
}

function floatToBfloat16(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}
