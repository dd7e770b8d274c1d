// The data a user brings (`--data PATH`): samples of the model's inputs, and optionally reference labels,
// read, checked against the model and batched. Three formats:
//   - a folder of .npy files named after the model's inputs (`input_ids.npy`), first axis = samples, and
//     optionally `labels.npy`;
//   - a .jsonl file, one sample per line: keys = input names, values = (nested) arrays without the batch
//     axis; optionally a `labels` key;
//   - a folder of ONNX test data sets (`test_data_set_*/input_*.pb`): each set is one ready batch.
// Every sample is checked when the data is opened (element type, rank, fixed dims, ids against the
// embedding table they index), so bad data is refused in one line naming the file, the sample and the
// input before any model runs or any file is written.
//
// Batching: samples whose lengths differ are sorted by length and padded to the longest in their batch
// when the model takes a [batch, seq] padding mask (the mask is 0 on padding; ids, positions and token
// types are 0 there, labels -100); without such a mask only samples of the same shape share a batch.
// A sample may omit the mask (all ones over its length), position ids (0, 1, 2, ...) and token types
// (zeros). Labels are integer class ids, -100 = ignore, shaped like the leading dims of the outputs they
// label: per sequence ([N]) or per position ([N, seq]).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dimKind, type InputSpec } from '../analysis/inputs.js';
import { VcompileError } from '../errors.js';
import { isFloatType, Tensor } from '../ir/tensor.js';
import { DataType, type Dim, dataTypeName } from '../ir/types.js';
import { readFileOrFail } from '../onnx/file.js';
import { readTensorFile } from '../onnx/tensor-file.js';
import { floatToHalf } from './feeds.js';
import { decodeNpy } from './npy.js';

export const LABELS = 'labels';
export const IGNORE_LABEL = -100;

/** One sample's value for one input (or its labels), without the batch axis. */
interface Item {
  dims: number[];
  data: Float64Array | Float32Array;
}

interface Sample {
  values: Map<string, Item>;
  labels?: Item;
  /** how messages name it: `data.jsonl: line 3`, `input_ids.npy: sample 3` */
  where: string;
}

/** A batch ready to run. */
export interface DataBatch {
  feeds: Record<string, Tensor>;
  /** the samples in the batch, as indices into the data set */
  samples: number[];
  /** int64 labels shaped like the batch's leading dims (-100 = ignore), when the data has labels */
  labels?: Tensor;
  /**
   * Per row and position of the padded axis, 1 for a real position (from the data, not the model's mask),
   * shaped [batch, seq]; absent when nothing was padded.
   */
  real?: Uint8Array;
}

export interface DataSet {
  /** the path as given */
  source: string;
  format: 'npy' | 'jsonl' | 'onnx-test-data';
  /** sha256 over the data's files (for provenance) */
  sha256: string;
  size: number;
  hasLabels: boolean;
  /** Batches of up to `batchSize` samples (ONNX test data sets come as they are stored). */
  batches(batchSize: number): DataBatch[];
  /** The same data restricted to these samples (in this order), e.g. a held-out split. */
  subset(indices: readonly number[]): DataSet;
}

export interface DataOptions {
  /** leave out the first N samples (e.g. those a fit used) */
  skip?: number;
  /** keep N samples (after the skipped ones) */
  samples?: number;
}

/** The samples `options` keeps of `all`. */
function kept<T>(all: T[], options: DataOptions): T[] {
  const from = options.skip ?? 0;
  return all.slice(from, options.samples === undefined ? undefined : from + options.samples);
}

/** Open `file` for a model with inputs `specs`; every sample is checked now. */
export function openData(file: string, specs: readonly InputSpec[], options: DataOptions = {}): DataSet {
  const stat = statOrFail(file);
  if (stat.isDirectory()) {
    const entries = fs.readdirSync(file).sort();
    if (entries.some((e) => /^test_data_set_\d+$/.test(e))) return testDataSets(file, entries, specs, options);
    return fromSamples(
      file,
      'npy',
      npyFolder(file, entries, specs),
      specs,
      options,
      hashFiles(entries.filter((e) => e.endsWith('.npy')).map((e) => path.join(file, e))),
    );
  }
  if (!stat.isFile()) throw new VcompileError(`${file}: not a regular file or folder`);
  if (!/\.jsonl$/i.test(file))
    throw new VcompileError(`${file}: data must be a .jsonl file or a folder (.npy files or ONNX test data sets)`);
  return fromSamples(file, 'jsonl', jsonLines(file, specs), specs, options, hashFiles([file]));
}

function statOrFail(file: string): fs.Stats {
  try {
    return fs.statSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new VcompileError(`${file}: ${code === 'ENOENT' ? 'no such file or folder' : (error as Error).message}`);
  }
}

function hashFiles(files: string[]): string {
  const hash = createHash('sha256');
  for (const f of files) hash.update(path.basename(f)).update(readFileOrFail(f));
  return hash.digest('hex');
}

// ------------------------------------------------------------------------------------------ readers

/** Samples from NAME.npy files (and labels.npy): row i of every array is sample i. */
function npyFolder(dir: string, entries: string[], specs: readonly InputSpec[]): Sample[] {
  const names = new Set(specs.map((s) => s.name));
  const arrays = new Map<string, { tensor: Tensor; file: string }>();
  for (const entry of entries) {
    if (!entry.endsWith('.npy')) continue;
    const stem = entry.slice(0, -4);
    const file = path.join(dir, entry);
    if (!names.has(stem) && stem !== LABELS) {
      throw new VcompileError(
        `${file}: '${stem}' is not an input of the model (inputs: ${[...names].join(', ')}; labels go in ${LABELS}.npy)`,
      );
    }
    let tensor: Tensor;
    try {
      tensor = decodeNpy(readFileOrFail(file), stem, file);
    } catch (error) {
      if (error instanceof VcompileError && /only numeric and bool arrays/.test(error.message)) {
        throw new VcompileError(`${file}: not a numeric array (ragged rows? put samples of different lengths in a .jsonl file)`);
      }
      throw error;
    }
    if (tensor.dims.length === 0) throw new VcompileError(`${file}: a scalar; the first axis must count the samples`);
    arrays.set(stem, { tensor, file });
  }
  if (![...arrays.keys()].some((k) => k !== LABELS))
    throw new VcompileError(`${dir}: no .npy file named after an input of the model (${[...names].join(', ')})`);
  const counts = [...arrays.values()].map((a) => a.tensor.dims[0]);
  const [first] = arrays.values();
  for (const { tensor, file } of arrays.values()) {
    if (tensor.dims[0] !== first.tensor.dims[0]) {
      throw new VcompileError(`${file} has ${tensor.dims[0]} samples but ${first.file} has ${first.tensor.dims[0]}`);
    }
  }
  const rows = new Map([...arrays].map(([name, { tensor, file }]) => [name, { file, rows: rowsOf(tensor, name, file, specs) }]));
  return Array.from({ length: counts[0] }, (_, i) => {
    const values = new Map<string, Item>();
    let labels: Item | undefined;
    for (const [name, { rows: items }] of rows) {
      if (name === LABELS) labels = items[i];
      else values.set(name, items[i]);
    }
    return { values, labels, where: `${path.basename(dir)}: sample ${i}` };
  });
}

/** Each row of an [N, ...] array as an item; element types are checked against the input's. */
function rowsOf(tensor: Tensor, name: string, file: string, specs: readonly InputSpec[]): Item[] {
  const spec = specs.find((s) => s.name === name);
  const wantFloat = spec ? isFloatType(spec.dataType) : false;
  const isFloat = isFloatType(tensor.dataType);
  if (wantFloat !== isFloat) {
    const wanted = spec ? `input ${name} takes ${dataTypeName(spec.dataType)}` : 'labels are integer class ids';
    throw new VcompileError(`${file}: ${dataTypeName(tensor.dataType)} values, but ${wanted}`);
  }
  const [count, ...dims] = tensor.dims;
  const per = dims.reduce((a, b) => a * b, 1);
  const all: Float64Array | Float32Array = isFloat ? tensor.toFloat32() : Float64Array.from(tensor.toBigInts(), Number);
  return Array.from({ length: count }, (_, i) => ({ dims, data: all.subarray(i * per, (i + 1) * per) }));
}

/** Samples from a .jsonl file, one JSON object per line. */
function jsonLines(file: string, specs: readonly InputSpec[]): Sample[] {
  const names = new Set(specs.map((s) => s.name));
  const text = new TextDecoder().decode(readFileOrFail(file));
  const samples: Sample[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${path.basename(file)}: line ${i + 1}`;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (error) {
      throw new VcompileError(`${where}: not JSON (${(error as Error).message})`);
    }
    if (typeof row !== 'object' || row === null || Array.isArray(row))
      throw new VcompileError(`${where}: expected an object of input names to arrays`);
    const values = new Map<string, Item>();
    let labels: Item | undefined;
    for (const [key, value] of Object.entries(row)) {
      if (key !== LABELS && !names.has(key))
        throw new VcompileError(`${where}: '${key}' is not an input of the model (inputs: ${[...names].join(', ')})`);
      const spec = specs.find((s) => s.name === key);
      const item = nested(value, `${where}: ${key}`, spec ? isFloatType(spec.dataType) : false);
      if (key === LABELS) labels = item;
      else values.set(key, item);
    }
    samples.push({ values, labels, where });
  });
  if (samples.length === 0) throw new VcompileError(`${file}: no samples`);
  return samples;
}

/** A nested array of numbers as dims and values; ragged nesting and non-numbers are refused. */
function nested(value: unknown, where: string, float: boolean): Item {
  const dims: number[] = [];
  for (let v = value; Array.isArray(v); v = v[0]) dims.push(v.length);
  const out: number[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (depth === dims.length) {
      if (Array.isArray(v)) throw new VcompileError(`${where}: ragged nesting at depth ${depth + 1} (rows of different lengths)`);
      if (typeof v !== 'number' && typeof v !== 'boolean') throw new VcompileError(`${where}: ${JSON.stringify(v)} is not a number`);
      const n = Number(v);
      if (!float && !Number.isInteger(n)) throw new VcompileError(`${where}: ${n} is not an integer`);
      out.push(n);
      return;
    }
    if (!Array.isArray(v) || v.length !== dims[depth])
      throw new VcompileError(`${where}: ragged nesting at depth ${depth + 1} (rows of different lengths)`);
    for (const x of v) walk(x, depth + 1);
  };
  walk(value, 0);
  return { dims, data: float ? Float32Array.from(out) : Float64Array.from(out) };
}

/** ONNX test data sets: each `test_data_set_N` holds one batch (input_K.pb, matched by name or position). */
function testDataSets(dir: string, entries: string[], specs: readonly InputSpec[], options: DataOptions): DataSet {
  const sets = entries.filter((e) => /^test_data_set_\d+$/.test(e)).sort((a, b) => Number(a.split('_').pop()) - Number(b.split('_').pop()));
  const files: string[] = [];
  const batches: DataBatch[] = sets.map((set, index) => {
    const folder = path.join(dir, set);
    const inputs = fs.readdirSync(folder).filter((f) => /^input_\d+\.pb$/.test(f));
    const byName = new Map<string, Tensor>();
    const byIndex = new Map<number, Tensor>();
    for (const f of inputs) {
      const full = path.join(folder, f);
      files.push(full);
      const tensor = readTensorFile(full);
      if (tensor.name && specs.some((s) => s.name === tensor.name)) byName.set(tensor.name, tensor);
      else byIndex.set(Number(/\d+/.exec(f)![0]), tensor);
    }
    const feeds: Record<string, Tensor> = {};
    specs.forEach((spec, i) => {
      const tensor = byName.get(spec.name) ?? byIndex.get(i);
      if (!tensor) throw new VcompileError(`${folder}: no input_${i}.pb for input ${spec.name}`);
      checkTensor(spec, tensor, `${folder}: input ${spec.name}`);
      tensor.name = spec.name;
      feeds[spec.name] = tensor;
    });
    return { feeds, samples: [index] };
  });
  const make = (chosen: DataBatch[]): DataSet => ({
    source: dir,
    format: 'onnx-test-data',
    sha256: hashFiles(files),
    size: chosen.length,
    hasLabels: false,
    batches: () => chosen,
    subset: (indices) => make(indices.map((i) => chosen[i])),
  });
  return make(kept(batches, options));
}

function checkTensor(spec: InputSpec, tensor: Tensor, where: string): void {
  if (tensor.dataType !== spec.dataType)
    throw new VcompileError(`${where}: ${dataTypeName(tensor.dataType)} values, the model takes ${dataTypeName(spec.dataType)}`);
  if (spec.unshaped) return;
  if (tensor.dims.length !== spec.dims.length)
    throw new VcompileError(`${where}: rank ${tensor.dims.length}, the model takes rank ${spec.dims.length}`);
  spec.dims.forEach((d, axis) => {
    if (d.value !== undefined && d.value !== tensor.dims[axis])
      throw new VcompileError(`${where}: dim ${axis} is ${tensor.dims[axis]}, the model takes ${d.value}`);
  });
}

// ------------------------------------------------------------------------------------------ checks

/** The padding mask input: a [batch, seq] mask. */
export function paddingMask(specs: readonly InputSpec[]): InputSpec | undefined {
  return specs.find((s) => s.role === 'mask' && s.dims.length === 2 && dimKind(s.dims[0], 0) === 'batch');
}

/** Fill in what a sample may omit, and check each value against its input. */
function completeAndCheck(sample: Sample, specs: readonly InputSpec[]): void {
  const seqLength = lengthOf(sample, specs);
  for (const spec of specs) {
    let item = sample.values.get(spec.name);
    if (!item) {
      item = generated(spec, seqLength);
      if (!item) throw new VcompileError(`${sample.where}: no value for input ${spec.name}`);
      sample.values.set(spec.name, item);
    }
    checkItem(spec, item, sample.where);
  }
  if (sample.labels) {
    const labels = sample.labels;
    for (const v of labels.data) {
      if (!Number.isInteger(v) || (v < 0 && v !== IGNORE_LABEL))
        throw new VcompileError(`${sample.where}: labels: ${v} is not a class id (or ${IGNORE_LABEL} to ignore)`);
    }
    if (labels.dims.length > 1)
      throw new VcompileError(
        `${sample.where}: labels must be one id per sequence or one per position, not rank ${labels.dims.length + 1}`,
      );
    if (labels.dims.length === 1 && seqLength !== undefined && labels.dims[0] !== seqLength) {
      throw new VcompileError(`${sample.where}: ${labels.dims[0]} labels for ${seqLength} positions`);
    }
  }
}

/** The sample's sequence length: the length along the seq axis of its [batch, seq] inputs. */
function lengthOf(sample: Sample, specs: readonly InputSpec[]): number | undefined {
  let length: number | undefined;
  let from = '';
  for (const spec of specs) {
    const item = sample.values.get(spec.name);
    if (!item || spec.dims.length !== 2 || dimKind(spec.dims[1], 1) !== 'seq' || spec.dims[1].value !== undefined) continue;
    const n = item.dims[0];
    if (length !== undefined && n !== length)
      throw new VcompileError(`${sample.where}: ${spec.name} has ${n} positions where ${from} has ${length}`);
    length = n;
    from = spec.name;
  }
  return length;
}

/** Values a sample may omit: the mask (ones), positions (0..n-1), token types (zeros). */
function generated(spec: InputSpec, length: number | undefined): Item | undefined {
  if (length === undefined || spec.dims.length !== 2) return undefined;
  const data = new Float64Array(length);
  if (spec.role === 'mask') data.fill(1);
  else if (spec.role === 'positions') data.forEach((_, i) => (data[i] = i));
  else if (spec.role !== 'tokenTypes') return undefined;
  return { dims: [length], data };
}

function checkItem(spec: InputSpec, item: Item, where: string): void {
  const at = `${where}: ${spec.name}`;
  if (spec.unshaped) return;
  const perSample = spec.dims.slice(1);
  if (item.dims.length !== perSample.length) {
    throw new VcompileError(
      `${at}: rank ${item.dims.length} per sample, but the model's input ${formatDims(spec.dims)} takes rank ${perSample.length} per sample`,
    );
  }
  perSample.forEach((d, axis) => {
    if (d.value !== undefined && d.value !== item.dims[axis]) {
      throw new VcompileError(`${at}: dim ${axis + 1} is ${item.dims[axis]}, the model's input ${formatDims(spec.dims)} takes ${d.value}`);
    }
  });
  if (spec.vocab !== undefined) {
    const bad = item.data.findIndex((v) => v < 0 || v >= spec.vocab!);
    if (bad >= 0)
      throw new VcompileError(`${at}: id ${item.data[bad]} at position ${bad} is outside the embedding table (0-${spec.vocab - 1})`);
  }
}

function formatDims(dims: Dim[]): string {
  return `[${dims.map((d) => d.value ?? d.param ?? '?').join(', ')}]`;
}

// ------------------------------------------------------------------------------------------ batches

function fromSamples(
  source: string,
  format: 'npy' | 'jsonl',
  all: Sample[],
  specs: readonly InputSpec[],
  options: DataOptions,
  sha256: string,
): DataSet {
  const samples = kept(all, options);
  if (samples.length === 0) throw new VcompileError(`${source}: no samples left (${all.length} in the data, ${options.skip ?? 0} skipped)`);
  for (const s of samples) completeAndCheck(s, specs);
  const withLabels = samples.filter((s) => s.labels).length;
  if (withLabels !== 0 && withLabels !== samples.length) {
    throw new VcompileError(`${samples.find((s) => !s.labels)!.where}: no labels, while other samples have them`);
  }
  const mask = paddingMask(specs);
  const make = (indices: readonly number[]): DataSet => ({
    source,
    format,
    sha256,
    size: indices.length,
    hasLabels: withLabels > 0,
    batches: (batchSize) => batchSamples(indices, samples, specs, mask, batchSize),
    subset: (chosen) => make(chosen.map((i) => indices[i])),
  });
  return make(samples.map((_, i) => i));
}

function batchSamples(
  indices: readonly number[],
  samples: Sample[],
  specs: readonly InputSpec[],
  mask: InputSpec | undefined,
  batchSize: number,
): DataBatch[] {
  const groups: number[][] = [];
  if (mask) {
    // sorted by length (stably), so batches pad little
    const byLength = [...indices].sort(
      (a, b) => (samples[a].values.get(mask.name)!.dims[0] ?? 0) - (samples[b].values.get(mask.name)!.dims[0] ?? 0),
    );
    for (let i = 0; i < byLength.length; i += batchSize) groups.push(byLength.slice(i, i + batchSize));
  } else {
    const byShape = new Map<string, number[]>();
    for (const i of indices) {
      const key = JSON.stringify(specs.map((s) => samples[i].values.get(s.name)!.dims));
      byShape.set(key, [...(byShape.get(key) ?? []), i]);
    }
    for (const group of byShape.values()) for (let i = 0; i < group.length; i += batchSize) groups.push(group.slice(i, i + batchSize));
  }
  return groups.map((group) => makeBatch(group, samples, specs, mask));
}

function makeBatch(group: number[], samples: Sample[], specs: readonly InputSpec[], mask: InputSpec | undefined): DataBatch {
  const rows = group.map((i) => samples[i]);
  const feeds: Record<string, Tensor> = {};
  let padded = false;
  let seq = 0;
  for (const spec of specs) {
    const items = rows.map((r) => r.values.get(spec.name)!);
    const dims = items[0].dims.map((_, axis) => Math.max(...items.map((it) => it.dims[axis])));
    if (items.some((it) => it.dims.some((d, axis) => d !== dims[axis]))) padded = true;
    if (spec === mask) seq = dims[0];
    feeds[spec.name] = stack(spec, items, dims);
  }
  const batch: DataBatch = { feeds, samples: group };
  if (rows[0].labels)
    batch.labels = stackLabels(
      rows.map((r) => r.labels!),
      seq,
    );
  if (padded && mask) {
    const real = new Uint8Array(rows.length * seq);
    rows.forEach((r, b) => real.fill(1, b * seq, b * seq + r.values.get(mask.name)!.dims[0]));
    batch.real = real;
  }
  return batch;
}

/** Items padded (with zeros) to `dims` and stacked on a new batch axis, as the input's element type. */
function stack(spec: InputSpec, items: Item[], dims: number[]): Tensor {
  const per = dims.reduce((a, b) => a * b, 1);
  const out = new Float64Array(items.length * per);
  items.forEach((item, b) => copyPadded(item, dims, out, b * per));
  return tensorOfType(spec.name, spec.dataType, [items.length, ...dims], out);
}

/** Copy `item` into `out` at `offset`, laid out in `dims` (each axis at least as long as the item's). */
function copyPadded(item: Item, dims: number[], out: Float64Array, offset: number): void {
  const rank = dims.length;
  if (rank === 0) {
    out[offset] = item.data[0];
    return;
  }
  const inner = item.dims[rank - 1];
  const rowsOfItem = item.data.length / Math.max(inner, 1);
  for (let r = 0; r < rowsOfItem; r++) {
    // r is a flat index over the item's leading axes; map it to the padded layout
    let rest = r;
    let target = 0;
    let stride = dims[rank - 1];
    for (let axis = rank - 2; axis >= 0; axis--) {
      const index = rest % item.dims[axis];
      rest = Math.floor(rest / item.dims[axis]);
      target += index * stride;
      stride *= dims[axis];
    }
    out.set(item.data.subarray(r * inner, (r + 1) * inner), offset + target);
  }
}

function stackLabels(labels: Item[], seq: number): Tensor {
  const perPosition = labels[0].dims.length === 1;
  if (labels.some((l) => (l.dims.length === 1) !== perPosition))
    throw new VcompileError('labels: mixed per-sequence and per-position labels');
  const width = perPosition ? Math.max(seq, ...labels.map((l) => l.dims[0])) : 1;
  const out = new BigInt64Array(labels.length * width).fill(BigInt(IGNORE_LABEL));
  labels.forEach((l, b) => l.data.forEach((v, i) => (out[b * width + i] = BigInt(v))));
  return Tensor.fromArray(LABELS, DataType.INT64, perPosition ? [labels.length, width] : [labels.length], out);
}

function tensorOfType(name: string, dataType: number, dims: number[], values: Float64Array): Tensor {
  switch (dataType) {
    case DataType.FLOAT:
      return Tensor.fromArray(name, dataType, dims, Float32Array.from(values));
    case DataType.DOUBLE:
      return Tensor.fromArray(name, dataType, dims, values);
    case DataType.FLOAT16:
      return Tensor.fromArray(name, dataType, dims, Uint16Array.from(values, floatToHalf));
    case DataType.INT64:
      return Tensor.fromArray(
        name,
        dataType,
        dims,
        BigInt64Array.from(values, (v) => BigInt(v)),
      );
    case DataType.UINT64:
      return Tensor.fromArray(
        name,
        dataType,
        dims,
        BigUint64Array.from(values, (v) => BigInt(v)),
      );
    case DataType.INT32:
      return Tensor.fromArray(name, dataType, dims, Int32Array.from(values));
    case DataType.UINT32:
      return Tensor.fromArray(name, dataType, dims, Uint32Array.from(values));
    case DataType.INT16:
      return Tensor.fromArray(name, dataType, dims, Int16Array.from(values));
    case DataType.UINT16:
      return Tensor.fromArray(name, dataType, dims, Uint16Array.from(values));
    case DataType.INT8:
      return Tensor.fromArray(name, dataType, dims, Int8Array.from(values));
    case DataType.UINT8:
    case DataType.BOOL:
      return Tensor.fromArray(name, dataType, dims, Uint8Array.from(values));
    default:
      throw new VcompileError(`input ${name}: cannot take ${dataTypeName(dataType)} values from data files`);
  }
}
