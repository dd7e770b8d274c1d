// A protobuf codec driven by the schema table. Decoded messages are plain objects keyed by field name
// (only fields present on the wire are set, so proto2 presence survives), `bytes` are views into the
// input buffer, 64-bit integers are bigint, and fields the schema does not know are kept verbatim in
// `$unknown` and written back after the known ones, as protobuf's reference implementation does.
import { type FieldDesc, fieldByNumber, fieldsInWireOrder, type MessageDesc, messageDesc } from './schema.js';

export type ProtoMessage = { [field: string]: unknown; $unknown?: Uint8Array[] };

export class ProtoDecodeError extends Error {
  constructor(
    readonly offset: number,
    reason: string,
  ) {
    super(`protobuf decode failed at byte ${offset}: ${reason}`);
  }
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LDELIM = 2;
const WIRE_FIXED32 = 5;

const utf8 = new TextDecoder('utf-8');

/**
 * How deeply messages may nest, as in protobuf's reference parser (100): a real model's subgraphs stay far
 * below it, and a crafted file nesting deeper would overflow the JavaScript stack in the recursive decoder.
 */
const MAX_NESTING = 100;

class Reader {
  pos: number;
  private readonly view: DataView;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
    /** messages enclosing the one being read */
    readonly depth = 0,
  ) {
    this.pos = start;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  fail(reason: string): never {
    throw new ProtoDecodeError(this.pos, reason);
  }

  /** A varint as a number; exact up to 2^53, and the low 32 bits are always right (for int32). */
  varint(): number {
    const { buf } = this;
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const byte = buf[this.pos++];
      if (i < 4) result |= (byte & 0x7f) << (7 * i);
      // No `>>> 0` here: past 32 bits it would drop the bits already accumulated above bit 31.
      else result += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) return i < 4 ? result >>> 0 : result;
    }
    this.fail('varint longer than 10 bytes');
  }

  int32(): number {
    const start = this.pos;
    const value = this.varint();
    // Negative int32 values are sign-extended to ten bytes; keep the low 32 bits.
    return this.pos - start > 5 ? Number(BigInt.asIntN(32, this.varint64From(start))) : value | 0;
  }

  /** A varint as an unsigned 64-bit bigint. */
  uvarint64(): bigint {
    const start = this.pos;
    const fast = this.varint();
    if (this.pos - start <= 7) return BigInt(fast);
    return this.varint64From(start);
  }

  private varint64From(start: number): bigint {
    let result = 0n;
    let shift = 0n;
    for (let p = start; p < this.pos; p++) {
      result |= BigInt(this.buf[p] & 0x7f) << shift;
      shift += 7n;
    }
    return BigInt.asUintN(64, result);
  }

  int64(): bigint {
    return BigInt.asIntN(64, this.uvarint64());
  }

  float(): number {
    if (this.pos + 4 > this.end) this.fail('truncated fixed32');
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  double(): number {
    if (this.pos + 8 > this.end) this.fail('truncated fixed64');
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** Length-delimited payload as [start, end) after checking it fits. */
  span(): [number, number] {
    const length = this.varint();
    const start = this.pos;
    if (length > this.end - start) this.fail(`length ${length} runs past the end of its message`);
    this.pos = start + length;
    return [start, start + length];
  }

  bytes(): Uint8Array {
    const [start, end] = this.span();
    return this.buf.subarray(start, end);
  }

  string(): string {
    const [start, end] = this.span();
    return decodeUtf8(this.buf, start, end);
  }

  skip(wireType: number): void {
    switch (wireType) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_FIXED64:
        this.pos += 8;
        break;
      case WIRE_LDELIM:
        this.span();
        return;
      case WIRE_FIXED32:
        this.pos += 4;
        break;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
    if (this.pos > this.end) this.fail('truncated field');
  }
}

function decodeUtf8(buf: Uint8Array, start: number, end: number): string {
  // Short ASCII names dominate ONNX graphs; building them directly avoids TextDecoder's call overhead.
  if (end - start < 48) {
    for (let i = start; i < end; i++) if (buf[i] >= 0x80) return utf8.decode(buf.subarray(start, end));
    // One call builds the string flat; appending a character at a time leaves a chain of partial strings.
    return String.fromCharCode.apply(null, buf.subarray(start, end) as unknown as number[]);
  }
  return utf8.decode(buf.subarray(start, end));
}

/** Decode `bytes` as message `type` (e.g. 'ModelProto'). */
export function decode(type: string, bytes: Uint8Array): ProtoMessage {
  return decodeMessage(messageDesc(type), new Reader(bytes, 0, bytes.length));
}

function decodeMessage(desc: MessageDesc, r: Reader): ProtoMessage {
  const out: ProtoMessage = {};
  while (r.pos < r.end) {
    const tagStart = r.pos;
    const tag = r.varint();
    const no = tag >>> 3;
    const wireType = tag & 7;
    if (no === 0) r.fail('field number 0');
    const field = fieldByNumber(desc, no);
    if (field && wireTypeFits(field, wireType)) {
      readField(field, wireType, r, out);
    } else {
      r.skip(wireType);
      (out.$unknown ??= []).push(r.buf.subarray(tagStart, r.pos));
    }
  }
  if (r.pos !== r.end) r.fail('message ends inside a field');
  return out;
}

function expectedWireType(field: FieldDesc): number {
  switch (field.kind) {
    case 'float':
      return WIRE_FIXED32;
    case 'double':
      return WIRE_FIXED64;
    case 'string':
    case 'bytes':
    case 'message':
      return WIRE_LDELIM;
    default:
      return WIRE_VARINT;
  }
}

function wireTypeFits(field: FieldDesc, wireType: number): boolean {
  const expected = expectedWireType(field);
  // Any repeated number may arrive packed or not, whatever the schema declares.
  return wireType === expected || (field.repeated === true && expected !== WIRE_LDELIM && wireType === WIRE_LDELIM);
}

function readScalar(field: FieldDesc, r: Reader): unknown {
  switch (field.kind) {
    case 'int32':
      return r.int32();
    case 'int64':
      return r.int64();
    case 'uint64':
      return r.uvarint64();
    case 'float':
      return r.float();
    case 'double':
      return r.double();
    case 'string':
      return r.string();
    case 'bytes':
      return r.bytes();
    case 'message': {
      if (r.depth >= MAX_NESTING) r.fail(`messages nested more than ${MAX_NESTING} deep`);
      const [start, end] = r.span();
      return decodeMessage(messageDesc(field.message!), new Reader(r.buf, start, end, r.depth + 1));
    }
  }
}

function readField(field: FieldDesc, wireType: number, r: Reader, out: ProtoMessage): void {
  if (!field.repeated) {
    out[field.name] = readScalar(field, r);
    return;
  }
  if (isNumeric(field) && wireType === WIRE_LDELIM) {
    const [start, end] = r.span();
    out[field.name] = appendNumbers(out[field.name] as NumericArray | undefined, readPacked(field, r.buf, start, end));
    return;
  }
  if (isNumeric(field)) {
    out[field.name] = appendNumbers(out[field.name] as NumericArray | undefined, oneNumber(field, readScalar(field, r)));
    return;
  }
  ((out[field.name] ??= []) as unknown[]).push(readScalar(field, r));
}

export type NumericArray = Float32Array | Float64Array | Int32Array | BigInt64Array | BigUint64Array;

function isNumeric(field: FieldDesc): boolean {
  return field.kind !== 'string' && field.kind !== 'bytes' && field.kind !== 'message';
}

function emptyNumbers(field: FieldDesc, length: number): NumericArray {
  switch (field.kind) {
    case 'float':
      return new Float32Array(length);
    case 'double':
      return new Float64Array(length);
    case 'int32':
      return new Int32Array(length);
    case 'int64':
      return new BigInt64Array(length);
    default:
      return new BigUint64Array(length);
  }
}

function oneNumber(field: FieldDesc, value: unknown): NumericArray {
  const array = emptyNumbers(field, 1);
  array[0] = value as never;
  return array;
}

function appendNumbers(existing: NumericArray | undefined, more: NumericArray): NumericArray {
  if (!existing || existing.length === 0) return more;
  const joined = new (existing.constructor as new (n: number) => NumericArray)(existing.length + more.length);
  joined.set(existing as never);
  joined.set(more as never, existing.length);
  return joined;
}

function readPacked(field: FieldDesc, buf: Uint8Array, start: number, end: number): NumericArray {
  const width = field.kind === 'float' ? 4 : field.kind === 'double' ? 8 : 0;
  if (width) {
    if ((end - start) % width !== 0) throw new ProtoDecodeError(start, `packed ${field.name} length is not a multiple of ${width}`);
    const absolute = buf.byteOffset + start;
    const Ctor = width === 4 ? Float32Array : Float64Array;
    // A view when aligned (zero copy), a copy otherwise.
    return absolute % width === 0
      ? new Ctor(buf.buffer as ArrayBuffer, absolute, (end - start) / width)
      : new Ctor(new Uint8Array(buf.subarray(start, end)).buffer);
  }
  const r = new Reader(buf, start, end);
  const values: unknown[] = [];
  while (r.pos < end) values.push(readScalar(field, r));
  const array = emptyNumbers(field, values.length);
  for (let i = 0; i < values.length; i++) array[i] = values[i] as never;
  return array;
}

// ---------------------------------------------------------------------------------------------
// Encoding: a size pass (memoized per message object), then a write pass into chunks. Large
// `bytes` (tensor data) are emitted as the caller's own views, so writing a model never copies them.

const BIG_BYTES = 1 << 14;

class ChunkWriter {
  readonly chunks: Uint8Array[] = [];
  private buf: Buffer;
  private pos = 0;
  private segmentStart = 0;

  constructor(private readonly capacity: number) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.flushSegment();
    this.buf = Buffer.allocUnsafe(Math.max(this.capacity, n));
    this.pos = 0;
    this.segmentStart = 0;
  }

  private flushSegment(): void {
    if (this.pos > this.segmentStart) this.chunks.push(this.buf.subarray(this.segmentStart, this.pos));
    this.segmentStart = this.pos;
  }

  varint(value: number): void {
    this.ensure(10);
    let v = value;
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }

  varint64(value: bigint): void {
    let v = BigInt.asUintN(64, value);
    if (v < 0x20000000000000n) return this.varint(Number(v));
    this.ensure(10);
    while (v >= 0x80n) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  float(value: number): void {
    this.ensure(4);
    this.buf.writeFloatLE(value, this.pos);
    this.pos += 4;
  }

  double(value: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(value, this.pos);
    this.pos += 8;
  }

  string(value: string, byteLength: number): void {
    this.ensure(byteLength);
    this.pos += this.buf.write(value, this.pos, 'utf8');
  }

  bytes(value: Uint8Array): void {
    if (value.length >= BIG_BYTES) {
      this.flushSegment();
      this.chunks.push(value);
      return;
    }
    this.ensure(value.length);
    this.buf.set(value, this.pos);
    this.pos += value.length;
  }

  finish(): Uint8Array[] {
    this.flushSegment();
    return this.chunks;
  }
}

function varintSize(value: number): number {
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

function varint64Size(value: bigint): number {
  const v = BigInt.asUintN(64, value);
  if (v < 0x20000000000000n) return varintSize(Number(v));
  return v >= 1n << 63n ? 10 : Math.ceil(v.toString(2).length / 7);
}

function int32Size(value: number): number {
  return value < 0 ? 10 : varintSize(value);
}

/** How one field is written, worked out once per message type instead of once per message. */
interface WireField {
  readonly field: FieldDesc;
  readonly name: string;
  readonly tag: number;
  readonly tagSize: number;
  /** a repeated number written as one length-delimited run */
  readonly packedNumbers: boolean;
  /** the nested message type, for message fields */
  readonly message?: MessageDesc;
}

const wirePlans = new Map<MessageDesc, readonly WireField[]>();

// Encoding runs mostly before V8 has optimized it (a model is written once per process), so the
// per-field work it repeats for every message (tags, packing, nested types) is looked up here once.
function wirePlan(desc: MessageDesc): readonly WireField[] {
  let plan = wirePlans.get(desc);
  if (!plan) {
    plan = fieldsInWireOrder(desc).map((field) => {
      const packedNumbers = field.repeated === true && field.packed === true && isNumeric(field);
      const tag = (field.no << 3) | (packedNumbers ? WIRE_LDELIM : expectedWireType(field));
      const message = field.message === undefined ? undefined : messageDesc(field.message);
      return { field, name: field.name, tag, tagSize: varintSize(tag), packedNumbers, message };
    });
    wirePlans.set(desc, plan);
  }
  return plan;
}

type Sizes = Map<object, number>;

function numberSize(kind: FieldDesc['kind'], value: unknown): number {
  switch (kind) {
    case 'int32':
      return int32Size(value as number);
    case 'float':
      return 4;
    case 'double':
      return 8;
    default:
      return varint64Size(value as bigint);
  }
}

function scalarSize(f: WireField, value: unknown, sizes: Sizes): number {
  switch (f.field.kind) {
    case 'string': {
      const n = Buffer.byteLength(value as string, 'utf8');
      return varintSize(n) + n;
    }
    case 'bytes': {
      const n = (value as Uint8Array).length;
      return varintSize(n) + n;
    }
    case 'message': {
      const n = messageSize(f.message!, value as ProtoMessage, sizes);
      return varintSize(n) + n;
    }
    default:
      return numberSize(f.field.kind, value);
  }
}

function packedPayloadSize(field: FieldDesc, values: NumericArray): number {
  if (field.kind === 'float') return values.length * 4;
  if (field.kind === 'double') return values.length * 8;
  let size = 0;
  for (let i = 0; i < values.length; i++) size += numberSize(field.kind, values[i]);
  return size;
}

function messageSize(desc: MessageDesc, m: ProtoMessage, sizes: Sizes): number {
  const cached = sizes.get(m);
  if (cached !== undefined) return cached;
  const plan = wirePlan(desc);
  let size = 0;
  for (let i = 0; i < plan.length; i++) {
    const f = plan[i];
    const value = m[f.name];
    if (value === undefined) continue;
    if (!f.field.repeated) {
      size += f.tagSize + scalarSize(f, value, sizes);
    } else if (f.packedNumbers) {
      const values = value as NumericArray;
      if (values.length === 0) continue;
      const payload = packedPayloadSize(f.field, values);
      size += f.tagSize + varintSize(payload) + payload;
    } else {
      const items = value as ArrayLike<unknown>;
      for (let j = 0; j < items.length; j++) size += f.tagSize + scalarSize(f, items[j], sizes);
    }
  }
  const unknown = m.$unknown;
  if (unknown) for (let i = 0; i < unknown.length; i++) size += unknown[i].length;
  sizes.set(m, size);
  return size;
}

function writeNumber(kind: FieldDesc['kind'], value: unknown, w: ChunkWriter): void {
  switch (kind) {
    case 'int32':
      return (value as number) < 0 ? w.varint64(BigInt(value as number)) : w.varint(value as number);
    case 'float':
      return w.float(value as number);
    case 'double':
      return w.double(value as number);
    default:
      return w.varint64(value as bigint);
  }
}

function writeScalar(f: WireField, value: unknown, w: ChunkWriter, sizes: Sizes): void {
  switch (f.field.kind) {
    case 'string': {
      const n = Buffer.byteLength(value as string, 'utf8');
      w.varint(n);
      return w.string(value as string, n);
    }
    case 'bytes':
      w.varint((value as Uint8Array).length);
      return w.bytes(value as Uint8Array);
    case 'message':
      w.varint(messageSize(f.message!, value as ProtoMessage, sizes));
      return writeMessage(f.message!, value as ProtoMessage, w, sizes);
    default:
      return writeNumber(f.field.kind, value, w);
  }
}

function writePacked(field: FieldDesc, values: NumericArray, w: ChunkWriter): void {
  if (field.kind === 'float' || field.kind === 'double') {
    const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    w.varint(bytes.length);
    w.bytes(bytes);
    return;
  }
  w.varint(packedPayloadSize(field, values));
  for (let i = 0; i < values.length; i++) writeNumber(field.kind, values[i], w);
}

function writeMessage(desc: MessageDesc, m: ProtoMessage, w: ChunkWriter, sizes: Sizes): void {
  const plan = wirePlan(desc);
  for (let i = 0; i < plan.length; i++) {
    const f = plan[i];
    const value = m[f.name];
    if (value === undefined) continue;
    if (!f.field.repeated) {
      w.varint(f.tag);
      writeScalar(f, value, w, sizes);
    } else if (f.packedNumbers) {
      if ((value as NumericArray).length === 0) continue;
      w.varint(f.tag);
      writePacked(f.field, value as NumericArray, w);
    } else {
      const items = value as ArrayLike<unknown>;
      for (let j = 0; j < items.length; j++) {
        w.varint(f.tag);
        writeScalar(f, items[j], w, sizes);
      }
    }
  }
  const unknown = m.$unknown;
  if (unknown) for (let i = 0; i < unknown.length; i++) w.bytes(unknown[i]);
}

export interface Encoded {
  /** The serialized message as consecutive chunks; large byte fields are the caller's own views. */
  chunks: Uint8Array[];
  byteLength: number;
}

/** Serialize a message in field-number order. Throws RangeError past protobuf's 2 GiB message limit. */
export function encode(type: string, message: ProtoMessage): Encoded {
  const desc = messageDesc(type);
  const sizes: Sizes = new Map();
  const byteLength = messageSize(desc, message, sizes);
  if (byteLength > 0x7fffffff) {
    throw new RangeError(`the model is ${byteLength} bytes, over protobuf's 2 GiB limit: store its weights as external data`);
  }
  const w = new ChunkWriter(Math.min(byteLength, 1 << 20) || 16);
  writeMessage(desc, message, w, sizes);
  return { chunks: w.finish(), byteLength };
}

export function concatChunks({ chunks, byteLength }: Encoded): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  return Buffer.concat(chunks, byteLength);
}
