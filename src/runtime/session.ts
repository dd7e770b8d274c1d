// ONNX Runtime (onnxruntime-node) behind a small interface that speaks IR tensors, so callers never
// handle ort.Tensor themselves. CPU only for now.
import * as ort from 'onnxruntime-node';
import { VcompileError } from '../errors.js';
import { Tensor } from '../ir/tensor.js';
import { DataType, dataTypeName } from '../ir/types.js';

export interface SessionOptions {
  ep?: 'cpu';
  /** intra-op threads (ORT's default, one per core, when absent) */
  threads?: number;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
}

export interface Session {
  readonly ort: ort.InferenceSession;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  release(): Promise<void>;
}

/** Load a model (a file path or its bytes) into ONNX Runtime. */
export async function openSession(model: string | Uint8Array, options: SessionOptions = {}): Promise<Session> {
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: [options.ep ?? 'cpu'],
    graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
    // ORT logs what it also throws; vcompile reports the thrown error itself.
    logSeverityLevel: 4,
  };
  if (options.threads !== undefined) {
    sessionOptions.intraOpNumThreads = options.threads;
    sessionOptions.interOpNumThreads = 1;
  }
  let inner: ort.InferenceSession;
  try {
    inner = typeof model === 'string'
      ? await ort.InferenceSession.create(model, sessionOptions)
      : await ort.InferenceSession.create(model, sessionOptions);
  } catch (error) {
    const what = typeof model === 'string' ? model : 'model';
    throw new VcompileError(`onnxruntime could not load ${what}: ${firstLine(error)}`);
  }
  return { ort: inner, inputNames: inner.inputNames, outputNames: inner.outputNames, release: () => inner.release() };
}

/** Run the model once; returns every output, named as the model names it. */
export async function run(session: Session, feeds: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  const ortFeeds: Record<string, ort.Tensor> = {};
  for (const [name, tensor] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(tensor);
  let results: ort.InferenceSession.OnnxValueMapType;
  try {
    results = await session.ort.run(ortFeeds, { logSeverityLevel: 4 });
  } catch (error) {
    throw new VcompileError(`onnxruntime failed to run the model: ${firstLine(error)}`);
  }
  const out: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(results)) out[name] = fromOrtTensor(name, value as ort.Tensor);
  return out;
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
  if (dataType === undefined) throw new VcompileError(`output ${name}: onnxruntime returned a ${value.type} tensor, which vcompile cannot read`);
  const dims = [...value.dims];
  if (dataType === DataType.STRING) {
    const encoder = new TextEncoder();
    return new Tensor(name, dataType, dims, { kind: 'strings', values: (value.data as string[]).map((s) => encoder.encode(s)) });
  }
  return Tensor.fromArray(name, dataType, dims, value.data as ArrayBufferView);
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
  return message.split('\n').find((line) => line.trim() !== '')?.trim() ?? 'unknown error';
}
