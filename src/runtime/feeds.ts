// Model inputs for verification and benchmarks: generated from each input's type and (symbolic) shape
// so they look like what a tokenizer or an image pipeline would produce, or read from files.
//
// Generated feeds, by input:
//   - name contains "mask": 1 for real positions, 0 for padding; a [batch, seq] mask pads row b's tail
//     so that it keeps seq - floor(b * seq / batch) real positions (row 0 is full; at least 1).
//   - name contains "position" (or is pos_ids): 0, 1, 2, ... along the last axis.
//   - name contains "token_type" or "segment": zeros.
//   - floating point: standard normal.
//   - other integers: uniform in [0, vocab), vocab read from the embedding table the input indexes
//     (a Gather whose data is a weight, or ORT's EmbedLayerNormalization); without one, [0, 2).
//     Ids at padded positions are 0, as tokenizers pad.
// Input roles and dim binding come from src/analysis/inputs.ts. Everything is seeded (src/random.ts): the same seed gives the same feeds.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bindDims, type DimBinding, dimKey, type InputSpec, shapeOf } from '../analysis/inputs.js';
import { msg, option, VcompileError } from '../errors.js';
import { Tensor } from '../ir/tensor.js';
import { DataType, dataTypeName } from '../ir/types.js';
import { readTensorFile } from '../onnx/tensor-file.js';
import { Rng } from '../random.js';
import { readNpy } from './npy.js';

export {
  bindDims,
  checkDimNames,
  type DimBinding,
  describeInputs,
  dimKey,
  dimKind,
  type InputRole,
  type InputSpec,
  shapeOf,
  vocabularyBounds,
} from '../analysis/inputs.js';

export function generateFeeds(specs: readonly InputSpec[], binding: DimBinding, seed = 0): Record<string, Tensor> {
  const unshaped = specs.find((s) => s.unshaped);
  if (unshaped)
    throw new VcompileError(
      msg`input ${unshaped.name}: no declared shape; give its values with ${option('inputsDir', 'DIR', 'inputsDir')}`,
    );
  const values = bindDims(specs, binding);
  const feeds: Record<string, Tensor> = {};
  const masks: { spec: InputSpec; data: number[] }[] = [];
  for (const spec of specs.filter((s) => s.role === 'mask')) {
    const data = maskValues(shapeOf(spec, values));
    masks.push({ spec, data });
    feeds[spec.name] = tensorFrom(spec, shapeOf(spec, values), data);
  }
  for (const spec of specs.filter((s) => s.role !== 'mask')) {
    const shape = shapeOf(spec, values);
    const rng = new Rng(seed, spec.name);
    const data = inputValues(spec, shape, rng);
    if (spec.role === 'ids') padIds(data, spec, masks, values);
    feeds[spec.name] = tensorFrom(spec, shape, data);
  }
  return feeds;
}

function inputValues(spec: InputSpec, shape: number[], rng: Rng): number[] {
  const size = shape.reduce((a, b) => a * b, 1);
  const last = shape.length ? shape[shape.length - 1] : 1;
  switch (spec.role) {
    case 'positions':
      return Array.from({ length: size }, (_, i) => i % last);
    case 'tokenTypes':
      return new Array<number>(size).fill(0);
    case 'float':
      return Array.from({ length: size }, () => rng.normal());
    case 'ids':
      return Array.from({ length: size }, () => rng.int(spec.vocab ?? 2));
    default:
      return Array.from({ length: size }, () => rng.int(2));
  }
}

/** A [batch, seq] mask with padded tails: row b keeps seq - floor(b * seq / batch) positions, at least 1. */
function maskValues(shape: number[]): number[] {
  const size = shape.reduce((a, b) => a * b, 1);
  if (shape.length !== 2) return new Array<number>(size).fill(1);
  const [batch, seq] = shape;
  const out: number[] = [];
  for (let b = 0; b < batch; b++) {
    const keep = realPositions(b, batch, seq);
    for (let s = 0; s < seq; s++) out.push(s < keep ? 1 : 0);
  }
  return out;
}

export function realPositions(row: number, batch: number, seq: number): number {
  return Math.max(1, seq - Math.floor((row * seq) / batch));
}

/** Tokenizers put the pad id (0 here) where the mask is 0: do the same for ids shaped like a mask. */
function padIds(data: number[], spec: InputSpec, masks: { spec: InputSpec; data: number[] }[], values: ReadonlyMap<string, number>): void {
  const keys = spec.dims.map((d, axis) => dimKey(spec.name, axis, d));
  const mask = masks.find(
    (m) =>
      m.spec.dims.length === spec.dims.length &&
      m.spec.dims.every(
        (d, axis) => dimKey(m.spec.name, axis, d) === keys[axis] || (d.value !== undefined && d.value === spec.dims[axis].value),
      ),
  );
  if (!mask || shapeOf(mask.spec, values).length !== 2) return;
  for (let i = 0; i < data.length; i++) if (mask.data[i] === 0) data[i] = 0;
}

function tensorFrom(spec: InputSpec, dims: number[], data: number[]): Tensor {
  const t = spec.dataType;
  switch (t) {
    case DataType.FLOAT:
      return Tensor.fromArray(spec.name, t, dims, Float32Array.from(data));
    case DataType.DOUBLE:
      return Tensor.fromArray(spec.name, t, dims, Float64Array.from(data));
    case DataType.FLOAT16:
      return Tensor.fromArray(spec.name, t, dims, Uint16Array.from(data, floatToHalf));
    case DataType.INT64:
      return Tensor.fromArray(
        spec.name,
        t,
        dims,
        BigInt64Array.from(data, (v) => BigInt(v)),
      );
    case DataType.UINT64:
      return Tensor.fromArray(
        spec.name,
        t,
        dims,
        BigUint64Array.from(data, (v) => BigInt(v)),
      );
    case DataType.INT32:
      return Tensor.fromArray(spec.name, t, dims, Int32Array.from(data));
    case DataType.UINT32:
      return Tensor.fromArray(spec.name, t, dims, Uint32Array.from(data));
    case DataType.INT16:
      return Tensor.fromArray(spec.name, t, dims, Int16Array.from(data));
    case DataType.UINT16:
      return Tensor.fromArray(spec.name, t, dims, Uint16Array.from(data));
    case DataType.INT8:
      return Tensor.fromArray(spec.name, t, dims, Int8Array.from(data));
    case DataType.UINT8:
    case DataType.BOOL:
      return Tensor.fromArray(spec.name, t, dims, Uint8Array.from(data));
    default:
      throw new VcompileError(
        msg`input ${spec.name}: cannot generate ${dataTypeName(t)} values; give them with ${option('inputsDir', 'DIR', 'inputsDir')}`,
      );
  }
}

/** float -> IEEE half bits, rounding to nearest even (test inputs stay far from the edge cases anyway). */
export function floatToHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  const mantissa = bits & 0x7fffff;
  if (((bits >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  if (exponent >= 31) return sign | 0x7c00;
  if (exponent <= 0) {
    if (exponent < -10) return sign;
    const m = (mantissa | 0x800000) >>> (1 - exponent);
    return sign | ((m + 0x1000 + ((m >>> 13) & 1) - 1) >>> 13);
  }
  let half = sign | (exponent << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return half;
}

/**
 * Feeds from a folder: ONNX test data (`input_0.pb`, `input_1.pb`, ...: TensorProto files, matched by
 * the name inside when it names an input, else by position) or NumPy files (`NAME.npy` or `input_N.npy`).
 */
export function readFeedFolder(dir: string, specs: readonly InputSpec[]): Record<string, Tensor> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new VcompileError(msg`${option('inputsDir', dir)}: not a folder`);
  const names = new Set(specs.map((s) => s.name));
  const byName = new Map<string, Tensor>();
  const byIndex = new Map<number, Tensor>();
  for (const file of fs.readdirSync(dir).sort()) {
    const full = path.join(dir, file);
    const indexed = /^input_(\d+)\.(pb|npy)$/.exec(file);
    if (file.endsWith('.pb') && indexed) {
      const tensor = readTensorFile(full);
      if (tensor.name && names.has(tensor.name)) byName.set(tensor.name, tensor);
      else byIndex.set(Number(indexed[1]), tensor);
    } else if (file.endsWith('.npy')) {
      const stem = file.slice(0, -4);
      if (names.has(stem)) byName.set(stem, readNpy(full, stem));
      else if (indexed) byIndex.set(Number(indexed[1]), readNpy(full));
    }
  }
  const feeds: Record<string, Tensor> = {};
  specs.forEach((spec, index) => {
    const tensor = byName.get(spec.name) ?? byIndex.get(index);
    if (!tensor)
      throw new VcompileError(
        msg`${option('inputsDir', dir)}: no file for input ${spec.name} (input_${index}.pb, ${spec.name}.npy or input_${index}.npy)`,
      );
    checkFeed(spec, tensor, dir);
    tensor.name = spec.name;
    feeds[spec.name] = tensor;
  });
  return feeds;
}

function checkFeed(spec: InputSpec, tensor: Tensor, dir: string): void {
  const where = `--inputs ${dir}: input ${spec.name}`;
  if (tensor.dataType !== spec.dataType)
    throw new VcompileError(`${where}: the file holds ${dataTypeName(tensor.dataType)}, the model takes ${dataTypeName(spec.dataType)}`);
  if (spec.unshaped) return;
  if (tensor.dims.length !== spec.dims.length)
    throw new VcompileError(`${where}: the file has rank ${tensor.dims.length}, the model takes rank ${spec.dims.length}`);
  spec.dims.forEach((d, axis) => {
    if (d.value !== undefined && d.value !== tensor.dims[axis])
      throw new VcompileError(`${where}: dim ${axis} is ${tensor.dims[axis]} in the file, ${d.value} in the model`);
  });
}

/** Each symbolic dim's value in a set of feeds (for MAC counts and reports), by the same keys as bindDims. */
export function dimsOfFeeds(specs: readonly InputSpec[], feeds: Record<string, Tensor>): Map<string, number> {
  const values = new Map<string, number>();
  for (const spec of specs) {
    spec.dims.forEach((dim, axis) => {
      const key = dimKey(spec.name, axis, dim);
      if (dim.value === undefined && !values.has(key)) values.set(key, feeds[spec.name].dims[axis]);
    });
  }
  return values;
}
