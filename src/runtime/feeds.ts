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
// Everything is seeded (src/runtime/random.ts): the same seed gives the same feeds.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VcompileError } from '../errors.js';
import type { Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { Tensor, isFloatType } from '../ir/tensor.js';
import { DataType, type Dim, dataTypeName, isTensorType } from '../ir/types.js';
import { readTensorFile } from '../onnx/tensor-file.js';
import { readNpy } from './npy.js';
import { Rng } from './random.js';

export type InputRole = 'mask' | 'positions' | 'tokenTypes' | 'float' | 'ids' | 'other';

export interface InputSpec {
  name: string;
  dataType: number;
  /** declared dims; a dim without value is symbolic (named by `param`, or unnamed) */
  dims: Dim[];
  role: InputRole;
  /** exclusive upper bound of generated ids (integer inputs that index an embedding table) */
  vocab?: number;
  /** the model declares no shape (allowed only when the values come from files) */
  unshaped?: true;
}

/** Values for symbolic dims: `batch` and `seq` by the rule in `dimKind`, and any dim by name. */
export interface DimBinding {
  batch: number;
  seq: number;
  /** by dim name (dim_param), or `input.axis` for an unnamed dim; wins over batch/seq */
  dims?: Readonly<Record<string, number>>;
}

/**
 * The inputs a caller must feed (inputs with an initializer have a default and are left out).
 * `allowUnshaped`: accept inputs without a declared shape (for feeds read from files).
 */
export function describeInputs(model: Model, options: { allowUnshaped?: boolean } = {}): InputSpec[] {
  const graph = model.graph;
  const withDefault = new Set(graph.initializers.map((v) => v.name));
  const vocab = vocabularyBounds(model);
  return graph.inputs
    .filter((v) => !withDefault.has(v.name))
    .map((v) => {
      if (!isTensorType(v.type) || v.type.elemType === undefined) throw new VcompileError(`input ${v.name}: not a tensor of known element type; give its values with --inputs DIR`);
      if (!v.type.shape && !options.allowUnshaped) throw new VcompileError(`input ${v.name}: no declared shape; give its values with --inputs DIR`);
      const dataType = v.type.elemType;
      const role = roleOf(v.name, dataType, vocab.has(v.name));
      const spec: InputSpec = { name: v.name, dataType, dims: v.type.shape ?? [], role, ...(role === 'ids' && vocab.has(v.name) ? { vocab: vocab.get(v.name) } : {}) };
      if (!v.type.shape) spec.unshaped = true;
      return spec;
    });
}

function roleOf(name: string, dataType: number, indexesTable: boolean): InputRole {
  if (/mask/i.test(name)) return 'mask';
  if (isFloatType(dataType)) return 'float';
  if (/position/i.test(name) || /^pos_?ids?$/i.test(name)) return 'positions';
  if (/token_?type|segment/i.test(name)) return 'tokenTypes';
  if (indexesTable || /ids$|^tokens?$/i.test(name)) return 'ids';
  return 'other';
}

/** Ops that carry indices through unchanged in value (only the shape or the integer type changes). */
const INDEX_PASS_THROUGH = new Set(['Cast', 'Identity', 'Reshape', 'Unsqueeze', 'Squeeze', 'Flatten', 'Expand']);

/**
 * Vocabulary size per graph input: the smallest table among the embedding lookups the input feeds
 * (Gather with a weight as data, directly or through casts and reshapes; ORT's EmbedLayerNormalization).
 */
export function vocabularyBounds(model: Model): Map<string, number> {
  const graph = model.graph;
  const inputs = new Set(graph.inputs);
  const bounds = new Map<string, number>();
  const record = (indices: Value | null | undefined, rows: number | undefined) => {
    const source = traceIndices(indices);
    if (!source || !inputs.has(source) || rows === undefined) return;
    bounds.set(source.name, Math.min(bounds.get(source.name) ?? Infinity, rows));
  };
  for (const node of graph.nodes) {
    const domain = node.domain ?? '';
    if (node.opType === 'Gather' && domain === '') {
      const table = node.inputs[0]?.constTensor();
      if (!table) continue;
      const axis = node.attrInt('axis', 0);
      record(node.inputs[1], table.dims[axis < 0 ? axis + table.dims.length : axis]);
    } else if (node.opType === 'EmbedLayerNormalization' && domain === 'com.microsoft') {
      record(node.inputs[0], node.inputs[2]?.constTensor()?.dims[0]);
      record(node.inputs[1], node.inputs[4]?.constTensor()?.dims[0]);
    }
  }
  return bounds;
}

function traceIndices(value: Value | null | undefined): Value | undefined {
  let v = value ?? undefined;
  for (let steps = 0; v && steps < 16; steps++) {
    const p = v.producer;
    if (!p || !INDEX_PASS_THROUGH.has(p.opType) || (p.domain ?? '') !== '') return v;
    v = p.inputs[0] ?? undefined;
  }
  return v;
}

/** How a symbolic dim is bound when --dim does not name it: axis 0 is the batch unless its name says length. */
export function dimKind(dim: Dim, axis: number): 'batch' | 'seq' {
  const name = dim.param ?? '';
  if (/batch/i.test(name)) return 'batch';
  if (axis === 0 && !/seq|len|time|step|token|position|width|height|past|total|decoder/i.test(name)) return 'batch';
  return 'seq';
}

/** The name a symbolic dim is bound by: its dim_param, or `input.axis` (as shape inference names unnamed dims). */
export function dimKey(input: string, axis: number, dim: Dim): string {
  return dim.param ?? `${input}.${axis}`;
}

/**
 * Every symbolic dim of the inputs with its value. Dims sharing a name share a value; the first input
 * that names a dim decides whether it is a batch or a sequence dim.
 */
export function bindDims(specs: readonly InputSpec[], binding: DimBinding): Map<string, number> {
  const values = new Map<string, number>();
  for (const spec of specs) {
    spec.dims.forEach((dim, axis) => {
      if (dim.value !== undefined) return;
      const key = dimKey(spec.name, axis, dim);
      if (values.has(key)) return;
      values.set(key, binding.dims?.[key] ?? (dimKind(dim, axis) === 'batch' ? binding.batch : binding.seq));
    });
  }
  return values;
}

export function shapeOf(spec: InputSpec, values: ReadonlyMap<string, number>): number[] {
  return spec.dims.map((dim, axis) => dim.value ?? values.get(dimKey(spec.name, axis, dim))!);
}

/** Generated feeds for every input at `binding`, deterministic in `seed`. */
export function generateFeeds(specs: readonly InputSpec[], binding: DimBinding, seed = 0): Record<string, Tensor> {
  const unshaped = specs.find((s) => s.unshaped);
  if (unshaped) throw new VcompileError(`input ${unshaped.name}: no declared shape; give its values with --inputs DIR`);
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
  const mask = masks.find((m) => m.spec.dims.length === spec.dims.length && m.spec.dims.every((d, axis) => dimKey(m.spec.name, axis, d) === keys[axis] || (d.value !== undefined && d.value === spec.dims[axis].value)));
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
      return Tensor.fromArray(spec.name, t, dims, BigInt64Array.from(data, (v) => BigInt(v)));
    case DataType.UINT64:
      return Tensor.fromArray(spec.name, t, dims, BigUint64Array.from(data, (v) => BigInt(v)));
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
      throw new VcompileError(`input ${spec.name}: cannot generate ${dataTypeName(t)} values; give them with --inputs DIR`);
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
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new VcompileError(`--inputs ${dir}: not a folder`);
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
    if (!tensor) throw new VcompileError(`--inputs ${dir}: no file for input ${spec.name} (input_${index}.pb, ${spec.name}.npy or input_${index}.npy)`);
    checkFeed(spec, tensor, dir);
    tensor.name = spec.name;
    feeds[spec.name] = tensor;
  });
  return feeds;
}

function checkFeed(spec: InputSpec, tensor: Tensor, dir: string): void {
  const where = `--inputs ${dir}: input ${spec.name}`;
  if (tensor.dataType !== spec.dataType) throw new VcompileError(`${where}: the file holds ${dataTypeName(tensor.dataType)}, the model takes ${dataTypeName(spec.dataType)}`);
  if (spec.unshaped) return;
  if (tensor.dims.length !== spec.dims.length) throw new VcompileError(`${where}: the file has rank ${tensor.dims.length}, the model takes rank ${spec.dims.length}`);
  spec.dims.forEach((d, axis) => {
    if (d.value !== undefined && d.value !== tensor.dims[axis]) throw new VcompileError(`${where}: dim ${axis} is ${tensor.dims[axis]} in the file, ${d.value} in the model`);
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
