// ONNX Runtime (onnxruntime-node) behind a small interface that speaks IR tensors, so callers never
// handle ort.Tensor themselves: models from a path, bytes or an IR model, the CPU or CUDA execution
// provider, and extra outputs for reading intermediate values.

import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { inferShapes } from '../analysis/shapes.js';
import { type MessagePart, msg, option, renderMessage, VcompileError } from '../errors.js';
import type { Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { DataType, dataTypeName, isTensorType, tensorType } from '../ir/types.js';
import { concatChunks, encode } from '../onnx/codec.js';
import { decodeModel, loadModel } from '../onnx/file.js';
import { modelToProto, typeToProto } from '../onnx/serde.js';

/** `auto`: CUDA when its provider loads, else CPU with a one-line notice. */
export type ExecutionProvider = 'cpu' | 'cuda' | 'auto';

export interface SessionOptions {
  ep?: ExecutionProvider;
  /** GPU index for CUDA (default 0) */
  deviceId?: number;
  /** intra-op threads (ORT's default, one per core, when absent) */
  threads?: number;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  /**
   * Whether idle intra-op threads spin before sleeping (ORT's default: yes). Benchmarks that alternate
   * between sessions turn it off: a session that just finished would keep spinning on the cores the
   * next one needs.
   */
  spinning?: boolean;
  /** external data files of a model given as bytes: `path` as the model's external_data location names it */
  externalData?: { path: string; data: Uint8Array }[];
  /**
   * Values to return besides the model's outputs (intermediate activations): they become graph outputs
   * of a copy of the model; the model itself is not changed.
   */
  extraOutputs?: readonly string[];
  /**
   * where the `auto` fallback notice goes (default: stderr, each distinct notice once per process): the
   * line as the library words it, and its parts, whose option references a CLI writes as flags
   */
  notify?: (line: string, parts: readonly MessagePart[]) => void;
}

export interface Session {
  readonly ort: ort.InferenceSession;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** the provider the session runs on */
  readonly ep: 'cpu' | 'cuda';
  release(): Promise<void>;
}

/**
 * The newest default-domain (ai.onnx) opset onnxruntime-node 1.30 runs: it refuses to load a model that
 * imports a newer one ("Current official support for domain ai.onnx is till opset 26"). Measured by loading
 * a one-node model at increasing opsets; test/runtime-opset.test.ts checks that it still holds. The fact is
 * kept with the op history (src/ir/op-versions.ts), where the opset upgrade needs it too.
 */
export { MAX_ORT_OPSET } from '../ir/op-versions.js';

export const CUDA_INSTALL_COMMAND = 'ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --ignore-scripts=false';

/** Load a model (a file path, its bytes, or an IR model) into ONNX Runtime. */
export async function openSession(model: string | Uint8Array | Model, options: SessionOptions = {}): Promise<Session> {
  const source = modelSource(model, options);
  const ep = options.ep ?? 'cpu';
  if (ep === 'cpu') return createSession(source, options, 'cpu');
  if (!cudaProviderInstalled()) {
    if (ep === 'cuda')
      throw new VcompileError(
        msg`${option('ep', 'cuda')}: ${cudaMissingReason()}; install it with \`${CUDA_INSTALL_COMMAND}\` (needs CUDA 12 and cuDNN 9), or use ${option('ep', 'cpu')} or ${option('ep', 'auto')}`,
      );
    notice(options, msg`${option('ep', 'auto')}: running on CPU: ${cudaMissingReason()} (\`${CUDA_INSTALL_COMMAND}\` installs it)`);
    return createSession(source, options, 'cpu');
  }
  try {
    return await createSession(source, options, 'cuda');
  } catch (error) {
    const why: MessagePart[] = error instanceof VcompileError ? [...error.parts] : [firstLine(error)];
    if (ep === 'cuda') throw new VcompileError([option('ep', 'cuda'), ': ', ...why]);
    notice(options, [option('ep', 'auto'), ': running on CPU: the CUDA provider did not start (', ...why, ')']);
    return createSession(source, options, 'cpu');
  }
}

interface ModelSource {
  model: string | Uint8Array;
  label: string;
  externalData?: { path: string; data: Uint8Array }[];
}

async function createSession(source: ModelSource, options: SessionOptions, ep: 'cpu' | 'cuda'): Promise<Session> {
  quietOrtEnvironment();
  const provider: ort.InferenceSession.ExecutionProviderConfig = ep === 'cuda' ? { name: 'cuda', deviceId: options.deviceId ?? 0 } : 'cpu';
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: [provider],
    graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
    // ORT logs what it also throws; vcompile reports the thrown error itself.
    logSeverityLevel: 4,
  };
  if (options.threads !== undefined) {
    sessionOptions.intraOpNumThreads = options.threads;
    sessionOptions.interOpNumThreads = 1;
  }
  if (options.spinning === false)
    sessionOptions.extra = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };
  const externalData = source.externalData ?? options.externalData;
  if (externalData) sessionOptions.externalData = externalData;
  let inner: ort.InferenceSession;
  try {
    inner =
      typeof source.model === 'string'
        ? await ort.InferenceSession.create(source.model, sessionOptions)
        : await ort.InferenceSession.create(source.model, sessionOptions);
  } catch (error) {
    throw new VcompileError(`onnxruntime could not load ${source.label}: ${firstLine(error)}`);
  }
  return { ort: inner, inputNames: inner.inputNames, outputNames: inner.outputNames, ep, release: () => inner.release() };
}

let environmentQuieted = false;

/** ORT's process-wide logger prints provider load failures that vcompile reports itself, once, in one line. */
function quietOrtEnvironment(): void {
  if (environmentQuieted) return;
  environmentQuieted = true;
  ort.env.logLevel = 'fatal';
}

const noticesGiven = new Set<string>();

function notice(options: SessionOptions, parts: readonly MessagePart[]): void {
  const line = renderMessage(parts);
  if (options.notify) return options.notify(line, parts);
  if (noticesGiven.has(line)) return;
  noticesGiven.add(line);
  process.stderr.write(`vcompile: note: ${line}\n`);
}

/** The folder onnxruntime-node loads its native libraries (and execution providers) from. */
export function ortLibraryFolder(): string {
  const entry = createRequire(import.meta.url).resolve('onnxruntime-node');
  return path.join(path.dirname(entry), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

function cudaProviderFile(): string {
  return process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so';
}

/** Whether onnxruntime-node's CUDA provider library is installed (it is not bundled with the npm package). */
export function cudaProviderInstalled(): boolean {
  return fs.existsSync(path.join(ortLibraryFolder(), cudaProviderFile()));
}

function cudaMissingReason(): string {
  return `onnxruntime-node's CUDA execution provider is not installed (no ${cudaProviderFile()} in ${path.relative(process.cwd(), ortLibraryFolder()) || '.'})`;
}

/** What ORT loads: the path or bytes as given, or an encoded copy of the IR model with the extra outputs. */
function modelSource(model: string | Uint8Array | Model, options: SessionOptions): ModelSource {
  const label = typeof model === 'string' ? model : 'model';
  const extra = options.extraOutputs ?? [];
  if (typeof model === 'string' && extra.length === 0) return { model, label };
  if (model instanceof Uint8Array && extra.length === 0) return { model, label };
  const ir = typeof model === 'string' ? loadModel(model) : model instanceof Uint8Array ? decodeModel(model) : model;
  return { ...encodeWithOutputs(ir, extra), label };
}

/**
 * Encode `model` with `names` appended to the graph outputs. Weights stored in external files stay
 * there: their bytes are handed to ORT as in-memory files, rebuilt from each tensor's own range, so
 * models above protobuf's 2 GiB limit work too and nothing is written to disk.
 */
/**
 * A model with `names` appended to its outputs, encoded for ORT (its external data as in-memory files): what
 * openSession builds for `extraOutputs`, done ahead so that the IR model can be let go before the session
 * opens. Open it with openSession(bytes, { externalData }).
 */
export function encodeForSession(
  model: Model,
  names: readonly string[],
): { model: Uint8Array; externalData?: { path: string; data: Uint8Array }[] } {
  return encodeWithOutputs(model, names);
}

function encodeWithOutputs(
  model: Model,
  names: readonly string[],
): { model: Uint8Array; externalData?: { path: string; data: Uint8Array }[] } {
  const files = new Map<string, { offset: number; bytes: Uint8Array }[]>();
  const proto = modelToProto(model, {
    placeExternal: (tensor) => {
      if (tensor.storage.kind !== 'external') return undefined;
      const external = tensor.storage.external;
      const parts = files.get(external.location) ?? [];
      parts.push({ offset: external.offset, bytes: external.load() });
      files.set(external.location, parts);
      return external.entries;
    },
  });
  const graph = proto.graph as { output?: unknown[] };
  const present = new Set(model.graph.outputs.map((v) => v.name));
  for (const name of names) {
    if (present.has(name)) continue;
    present.add(name);
    graph.output = [...(graph.output ?? []), { name, type: typeToProto(tensorType(elementTypeOf(model, name))) }];
  }
  const externalData = [...files].map(([location, parts]) => ({ path: location, data: assemble(parts) }));
  return { model: concatChunks(encode('ModelProto', proto)), externalData: externalData.length ? externalData : undefined };
}

function assemble(parts: { offset: number; bytes: Uint8Array }[]): Uint8Array {
  const size = Math.max(...parts.map((p) => p.offset + p.bytes.length));
  const out = new Uint8Array(size);
  for (const p of parts) out.set(p.bytes, p.offset);
  return out;
}

/** Element type of a main-graph value: declared, else inferred (ORT needs it for an output; the shape it does not). */
function elementTypeOf(model: Model, name: string): number {
  const graph = model.graph;
  const value =
    graph.inputs.find((v) => v.name === name) ?? graph.nodes.flatMap((n) => n.outputs).find((v): v is Value => v?.name === name);
  if (!value) throw new VcompileError(`extra output ${name}: no such value in the main graph (node outputs and graph inputs can be read)`);
  const declared = isTensorType(value.type) ? value.type.elemType : undefined;
  if (declared !== undefined && declared !== DataType.UNDEFINED) return declared;
  const inferred = inferShapes(graph).get(value).dtype;
  if (inferred === undefined) throw new VcompileError(`extra output ${name}: its element type is neither declared nor inferable`);
  return inferred;
}

/** Run the model once; returns every output, named as the model names it. */
export async function run(session: Session, feeds: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  const results = await runPrepared(session, prepareFeeds(feeds));
  const out: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(results)) out[name] = fromOrtTensor(name, value as ort.Tensor);
  return out;
}

/** Feeds converted once, for timing loops that should not time the conversion. */
export function prepareFeeds(feeds: Record<string, Tensor>): Record<string, ort.Tensor> {
  const ortFeeds: Record<string, ort.Tensor> = {};
  for (const [name, tensor] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(tensor);
  return ortFeeds;
}

/** Run with prepared feeds; the outputs stay ORT tensors. */
export async function runPrepared(session: Session, feeds: Record<string, ort.Tensor>): Promise<ort.InferenceSession.OnnxValueMapType> {
  try {
    return await session.ort.run(feeds, { logSeverityLevel: 4 });
  } catch (error) {
    throw new VcompileError(`onnxruntime failed to run the model: ${firstLine(error)}`);
  }
}

type OrtType = ort.Tensor.Type;

/**
 * ONNX data types onnxruntime-node can carry, with ORT's name for each. Its native binding refuses int4 and
 * uint4 although onnxruntime-common names them; bfloat16 and the float8 types have no JavaScript form.
 */
const ORT_TYPES = new Map<number, OrtType>([
  [DataType.FLOAT, 'float32'],
  [DataType.UINT8, 'uint8'],
  [DataType.INT8, 'int8'],
  [DataType.UINT16, 'uint16'],
  [DataType.INT16, 'int16'],
  [DataType.INT32, 'int32'],
  [DataType.INT64, 'int64'],
  [DataType.STRING, 'string'],
  [DataType.BOOL, 'bool'],
  [DataType.FLOAT16, 'float16'],
  [DataType.DOUBLE, 'float64'],
  [DataType.UINT32, 'uint32'],
  [DataType.UINT64, 'uint64'],
]);
const ONNX_TYPES = new Map([...ORT_TYPES].map(([onnx, name]) => [name, onnx]));

type ArrayCtor = new (buffer: ArrayBuffer, byteOffset?: number, length?: number) => ArrayBufferView & { length: number };

/** The typed array ORT expects for each numeric type; float16 travels as its bits. */
const ARRAYS: Partial<Record<OrtType, ArrayCtor>> = {
  float32: Float32Array,
  uint8: Uint8Array,
  int8: Int8Array,
  uint16: Uint16Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
  float16: Uint16Array,
  float64: Float64Array,
  uint32: Uint32Array,
  uint64: BigUint64Array,
};

export function isOrtDataType(dataType: number): boolean {
  return ORT_TYPES.has(dataType);
}

export function toOrtTensor(tensor: Tensor): ort.Tensor {
  const type = ORT_TYPES.get(tensor.dataType);
  if (!type) throw new VcompileError(`tensor ${tensor.name ?? ''}: onnxruntime-node cannot take ${dataTypeName(tensor.dataType)} tensors`);
  if (type === 'string') return new ort.Tensor('string', stringsOf(tensor), tensor.dims);
  // A copy (new Uint8Array, not slice(), which on a Buffer is a view): raw data may be an unaligned
  // view into a file buffer, and ORT keeps the array.
  const bytes = new Uint8Array(tensor.bytes());
  const Ctor = ARRAYS[type]!;
  const bytesPerElement = (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
  const data = new Ctor(bytes.buffer, 0, bytes.byteLength / bytesPerElement);
  return new ort.Tensor(type, data as never, tensor.dims);
}

export function fromOrtTensor(name: string, value: ort.Tensor): Tensor {
  const dataType = ONNX_TYPES.get(value.type);
  if (dataType === undefined)
    throw new VcompileError(`output ${name}: onnxruntime returned a ${value.type} tensor, which vcompile cannot read`);
  const dims = [...value.dims];
  if (dataType === DataType.STRING) {
    const encoder = new TextEncoder();
    return new Tensor(name, dataType, dims, { kind: 'strings', values: (value.data as string[]).map((s) => encoder.encode(s)) });
  }
  // onnxruntime-node hands each output a buffer of its own: the tensor takes it over rather than copying it
  const data = value.data as ArrayBufferView;
  return Tensor.fromRaw(name, dataType, dims, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

function stringsOf(tensor: Tensor): string[] {
  const s = tensor.storage;
  if (s.kind === 'none') return [];
  if (s.kind !== 'strings') throw new VcompileError(`tensor ${tensor.name ?? ''}: string tensor without string data`);
  const decoder = new TextDecoder('utf-8');
  return s.values.map((v) => decoder.decode(v));
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return (
    message
      .split('\n')
      .find((line) => line.trim() !== '')
      ?.trim() ?? 'unknown error'
  );
}
