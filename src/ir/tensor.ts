// Tensors: weights and constants. Data stays in whichever form it was read in (raw bytes as views into
// the file, typed fields, or external data read lazily) so that a model written back is the model read.
import { DataType, type Entry, elementBits, type UnknownFields } from './types.js';

export type TypedField = 'float_data' | 'int32_data' | 'int64_data' | 'double_data' | 'uint64_data';
export type TypedValues = Float32Array | Float64Array | Int32Array | BigInt64Array | BigUint64Array;

/** Where a tensor's data lives in an external file; `load` reads it (lazily, once per call). */
export interface ExternalData {
  location: string;
  offset: number;
  length?: number;
  checksum?: string;
  /** every external_data entry in its original order, including keys vcompile does not interpret */
  entries: Entry[];
  load: () => Uint8Array;
}

export type TensorStorage =
  | { kind: 'raw'; bytes: Uint8Array }
  | { kind: 'typed'; field: TypedField; values: TypedValues }
  | { kind: 'strings'; values: Uint8Array[] }
  | { kind: 'external'; external: ExternalData }
  | { kind: 'none' };

export interface Segment {
  begin?: bigint;
  end?: bigint;
}

export class Tensor {
  docString?: string;
  metadataProps?: Entry[];
  segment?: Segment;
  /** data_location as it was on the wire (1 = EXTERNAL), kept for fidelity */
  dataLocation?: number;
  unknownFields: UnknownFields;

  constructor(
    public name: string | undefined,
    public dataType: number,
    public dims: number[],
    public storage: TensorStorage,
  ) {}

  static fromRaw(name: string | undefined, dataType: number, dims: number[], bytes: Uint8Array): Tensor {
    return new Tensor(name, dataType, dims, { kind: 'raw', bytes });
  }

  /** A tensor holding a copy of a typed array's bytes (little-endian, as ONNX raw_data is). */
  static fromArray(name: string | undefined, dataType: number, dims: number[], values: ArrayBufferView): Tensor {
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength).slice();
    return Tensor.fromRaw(name, dataType, dims, bytes);
  }

  get size(): number {
    return this.dims.reduce((a, b) => a * b, 1);
  }

  /** Bytes the data occupies when stored raw (0 for strings). */
  get byteLength(): number {
    if (this.storage.kind === 'external') return this.storage.external.length ?? this.bytes().length;
    const bits = elementBits(this.dataType);
    return bits ? Math.ceil((this.size * bits) / 8) : 0;
  }

  get isExternal(): boolean {
    return this.storage.kind === 'external';
  }

  /** The data as raw little-endian bytes, converting from typed fields or reading external data. */
  bytes(): Uint8Array {
    const s = this.storage;
    switch (s.kind) {
      case 'raw':
        return s.bytes;
      case 'external':
        return s.external.load();
      case 'typed':
        return typedToRaw(this.dataType, s.values, this.size);
      case 'none':
        return new Uint8Array(0);
      case 'strings':
        throw new Error(`tensor ${this.name ?? ''} holds strings, not bytes`);
    }
  }

  /** Numeric data as floats (float32, float16, bfloat16, float64 and integer types). */
  toFloat32(): Float32Array {
    const bytes = this.bytes();
    // float32 on a little-endian host: one copy of the bytes, not a DataView read per element
    if (this.storesFloat32(bytes)) {
      const out = new Float32Array(this.size);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = this.size;
    const out = new Float32Array(n);
    const read = floatReader(this.dataType, view);
    for (let i = 0; i < n; i++) out[i] = read(i);
    return out;
  }

  /**
   * The data as floats to read, not to write: a view of the bytes themselves when they are float32 as a
   * little-endian host reads them (aligned), otherwise toFloat32()'s copy.
   */
  readFloat32(): Float32Array {
    const bytes = this.bytes();
    if (this.storesFloat32(bytes) && bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, this.size);
    return this.toFloat32();
  }

  private storesFloat32(bytes: Uint8Array): boolean {
    return this.dataType === DataType.FLOAT && LITTLE_ENDIAN && bytes.byteLength === this.size * 4;
  }

  /** Integer data (int8..int64, uint8..uint64, bool) as exact bigints. */
  toBigInts(): bigint[] {
    const bytes = this.bytes();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const read = intReader(this.dataType, view);
    return Array.from({ length: this.size }, (_, i) => read(i));
  }

  /** Integer data as numbers; throws when a value is beyond 2^53 (use toBigInts for those). */
  toNumbers(): number[] {
    if (isFloatType(this.dataType)) return Array.from(this.toFloat32());
    return this.toBigInts().map((v) => {
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
        throw new RangeError(`tensor ${this.name ?? ''}: value ${v} is not a safe integer`);
      }
      return Number(v);
    });
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function isFloatType(dataType: number): boolean {
  return dataType === DataType.FLOAT || dataType === DataType.FLOAT16 || dataType === DataType.DOUBLE || dataType === DataType.BFLOAT16;
}

function floatReader(dataType: number, view: DataView): (i: number) => number {
  switch (dataType) {
    case DataType.FLOAT:
      return (i) => view.getFloat32(i * 4, true);
    case DataType.DOUBLE:
      return (i) => view.getFloat64(i * 8, true);
    case DataType.FLOAT16:
      return (i) => halfToFloat(view.getUint16(i * 2, true));
    case DataType.BFLOAT16:
      return (i) => bfloat16ToFloat(view.getUint16(i * 2, true));
    default: {
      const read = intReader(dataType, view);
      return (i) => Number(read(i));
    }
  }
}

function intReader(dataType: number, view: DataView): (i: number) => bigint {
  switch (dataType) {
    case DataType.INT8:
      return (i) => BigInt(view.getInt8(i));
    case DataType.UINT8:
    case DataType.BOOL:
      return (i) => BigInt(view.getUint8(i));
    case DataType.INT16:
      return (i) => BigInt(view.getInt16(i * 2, true));
    case DataType.UINT16:
      return (i) => BigInt(view.getUint16(i * 2, true));
    case DataType.INT32:
      return (i) => BigInt(view.getInt32(i * 4, true));
    case DataType.UINT32:
      return (i) => BigInt(view.getUint32(i * 4, true));
    case DataType.INT64:
      return (i) => view.getBigInt64(i * 8, true);
    case DataType.UINT64:
      return (i) => view.getBigUint64(i * 8, true);
    default:
      throw new Error(`data type ${dataType} is not an integer type`);
  }
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function bfloat16ToFloat(bits: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint32(0, bits << 16, true);
  return view.getFloat32(0, true);
}

/**
 * Typed fields hold some types widened (float16/bfloat16/int8/uint8/int16/uint16/bool and 4-bit or
 * 8-bit float types in int32_data, uint32 in uint64_data); raw_data holds them at their own width.
 */
function typedToRaw(dataType: number, values: TypedValues, size: number): Uint8Array {
  const bits = elementBits(dataType);
  if (!bits) throw new Error(`data type ${dataType} has no raw form`);
  const out = new Uint8Array(Math.ceil((size * bits) / 8));
  const view = new DataView(out.buffer);
  const isComplex = dataType === DataType.COMPLEX64 || dataType === DataType.COMPLEX128;
  const fieldElements = isComplex ? size * 2 : bits === 4 ? Math.ceil(size / 2) : size;
  const count = Math.min(values.length, fieldElements);
  for (let i = 0; i < count; i++) writeElement(view, dataType, bits, i, values[i]);
  return out;
}

function writeElement(view: DataView, dataType: number, bits: number, i: number, value: number | bigint): void {
  if (dataType === DataType.FLOAT) return view.setFloat32(i * 4, Number(value), true);
  if (dataType === DataType.DOUBLE) return view.setFloat64(i * 8, Number(value), true);
  if (dataType === DataType.INT64) return view.setBigInt64(i * 8, BigInt(value), true);
  if (dataType === DataType.UINT64) return view.setBigUint64(i * 8, BigInt.asUintN(64, BigInt(value)), true);
  if (dataType === DataType.COMPLEX64) return view.setFloat32(i * 4, Number(value), true);
  if (dataType === DataType.COMPLEX128) return view.setFloat64(i * 8, Number(value), true);
  const n = Number(value);
  if (bits === 4) return view.setUint8(i, n & 0xff); // int32_data already holds two packed nibbles
  if (bits === 8) return view.setUint8(i, n & 0xff);
  if (bits === 16) return view.setUint16(i * 2, n & 0xffff, true);
  view.setUint32(i * 4, n >>> 0, true);
}
