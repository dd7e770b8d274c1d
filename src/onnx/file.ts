// Reading and writing .onnx files: external data, safety checks, atomic writes.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { ExternalData, Tensor } from '../ir/tensor.js';
import type { Entry } from '../ir/types.js';
import { concatChunks, decode, encode, ProtoDecodeError } from './codec.js';
import { ModelFormatError, modelFromProto, modelToProto } from './serde.js';

/** Decode a model from bytes. External data is resolved against `baseDir` when given. */
export function decodeModel(bytes: Uint8Array, options: { baseDir?: string; label?: string } = {}): Model {
  const label = options.label ?? 'model';
  let proto: ReturnType<typeof decode>;
  try {
    proto = decode('ModelProto', bytes);
  } catch (error) {
    if (error instanceof ProtoDecodeError) throw new VcompileError(`${label}: not an ONNX model (${error.message})`);
    throw error;
  }
  if (proto.ir_version === undefined && proto.graph === undefined) {
    throw new VcompileError(`${label}: not an ONNX model (no ir_version and no graph)`);
  }
  const baseDir = options.baseDir;
  try {
    return modelFromProto(proto, { externalData: baseDir ? (entries, name) => externalData(baseDir, label, entries, name) : undefined });
  } catch (error) {
    if (error instanceof ModelFormatError || error instanceof RangeError) throw new VcompileError(`${label}: ${error.message}`);
    throw error;
  }
}

export function loadModel(file: string): Model {
  return decodeModel(readFileOrFail(file), { baseDir: path.dirname(file), label: file });
}

/** A file's bytes, or a one-line VcompileError naming it (`label` defaults to the path). */
export function readFileOrFail(file: string, label = file): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new VcompileError(`${label}: ${describeFsError(error)}`);
  }
}

export function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'is a directory, not a model file';
  if (code === 'EACCES') return 'permission denied';
  return (error as Error).message;
}

/**
 * Checks an external_data location before anything is read: it must be a relative path that stays
 * inside the model's folder, also after following symbolic links.
 */
export function resolveExternalLocation(baseDir: string, location: string, label: string, tensor: string): string {
  const refuse = (why: string) => new VcompileError(`${label}: tensor ${tensor}: external data location '${location}' ${why}`);
  if (location === '') throw refuse('is empty');
  if (path.isAbsolute(location) || /^[a-zA-Z]:/.test(location) || location.startsWith('\\')) throw refuse('is absolute');
  if (location.split(/[\\/]/).includes('..')) throw refuse("contains '..'");
  const base = fs.realpathSync(baseDir);
  const target = path.join(base, location);
  let real: string;
  try {
    real = fs.realpathSync(target);
  } catch {
    throw refuse('does not exist');
  }
  if (real !== base && !real.startsWith(base + path.sep)) throw refuse('resolves outside the model folder');
  return real;
}

function externalData(baseDir: string, label: string, entries: Entry[], tensor: string): ExternalData {
  const get = (key: string) => entries.find(([k]) => k === key)?.[1];
  const location = get('location') ?? '';
  const file = resolveExternalLocation(baseDir, location, label, tensor);
  const offset = parseIntEntry(get('offset'), 'offset', label, tensor) ?? 0;
  const length = parseIntEntry(get('length'), 'length', label, tensor);
  const fileSize = fs.statSync(file).size;
  const end = length === undefined ? fileSize : offset + length;
  if (offset > fileSize || end > fileSize) {
    throw new VcompileError(
      `${label}: tensor ${tensor}: external data [${offset}, ${end}) runs past the end of ${location} (${fileSize} bytes)`,
    );
  }
  return { location, offset, length, checksum: get('checksum'), entries, load: () => readRange(file, offset, end - offset) };
}

function parseIntEntry(text: string | undefined, key: string, label: string, tensor: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new VcompileError(`${label}: tensor ${tensor}: external data ${key} '${text}' is not a byte count`);
  }
  return n;
}

function readRange(file: string, offset: number, length: number): Uint8Array {
  const out = Buffer.allocUnsafe(length);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, out, done, length - done, offset + done);
      if (n === 0) throw new VcompileError(`${file}: ended before ${length} bytes at offset ${offset} could be read`);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

export interface SaveOptions {
  /**
   * Where weights go: 'auto' (external when the model was read with external data or would not fit in
   * protobuf's 2 GiB), 'always', or 'never'.
   */
  externalData?: 'auto' | 'always' | 'never';
  /** external data file name, relative to the model's folder (default: `<model file name>.data`) */
  location?: string;
  /** tensors smaller than this many bytes stay inline (default 1024) */
  sizeThreshold?: number;
  /** files that must not be overwritten (the inputs of this run), unless `overwrite` is set */
  protect?: string[];
  overwrite?: boolean;
}

const PROTOBUF_LIMIT = 0x7fffffff;

/** Serialize a model to one buffer, all weights inline. */
export function encodeModel(model: Model): Uint8Array {
  return concatChunks(encode('ModelProto', modelToProto(model)));
}

/** Write a model atomically: to a temporary file beside the target, then renamed into place. */
export function saveModel(model: Model, file: string, options: SaveOptions = {}): { bytes: number; externalFile?: string } {
  refuseOverwrite(model, file, options);
  const external = useExternalData(model, options);
  const temps: string[] = [];
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    let dataFile: { final: string; temp: string; location: string } | undefined;
    let placeExternal: ReturnType<typeof externalWriter> | undefined;
    if (external) {
      const location = options.location ?? `${path.basename(file)}.data`;
      resolveOutputLocation(location);
      const final = path.join(path.dirname(file), location);
      dataFile = { final, temp: tempPath(final), location };
      temps.push(dataFile.temp);
      placeExternal = externalWriter(dataFile.temp, location, options.sizeThreshold ?? 1024);
    }
    const encoded = encode('ModelProto', modelToProto(model, { placeExternal: placeExternal?.place }));
    placeExternal?.close();
    const temp = tempPath(file);
    temps.push(temp);
    writeChunks(temp, encoded.chunks);
    if (dataFile) fs.renameSync(dataFile.temp, dataFile.final);
    fs.renameSync(temp, file);
    return { bytes: encoded.byteLength, externalFile: dataFile?.final };
  } catch (error) {
    for (const t of temps) fs.rmSync(t, { force: true });
    if (error instanceof RangeError && /2 GiB/.test(error.message)) throw new VcompileError(`${file}: ${error.message}`);
    if ((error as NodeJS.ErrnoException).code) throw new VcompileError(`${file}: ${describeFsError(error)}`);
    throw error;
  }
}

function resolveOutputLocation(location: string): void {
  if (path.isAbsolute(location) || location.split(/[\\/]/).includes('..')) {
    throw new VcompileError(`external data location '${location}' must be a plain relative path inside the output folder`);
  }
}

function refuseOverwrite(model: Model, file: string, options: SaveOptions): void {
  if (options.overwrite) return;
  const target = realOrResolved(file);
  const protectedFiles = new Set((options.protect ?? []).map(realOrResolved));
  for (const t of allTensors(model)) {
    if (t.storage.kind === 'external') protectedFiles.add(realOrResolved(path.join(path.dirname(file), t.storage.external.location)));
  }
  if ((options.protect ?? []).map(realOrResolved).includes(target)) {
    throw new VcompileError(
      msg`${file}: refusing to overwrite the input model (write elsewhere, or pass ${option('overwrite', undefined, 'overwrite: true')})`,
    );
  }
  const location = options.location ?? `${path.basename(file)}.data`;
  const dataTarget = realOrResolved(path.join(path.dirname(file), location));
  for (const t of allTensors(model)) {
    if (t.storage.kind === 'external' && protectedFiles.has(dataTarget) && useExternalData(model, options)) {
      throw new VcompileError(`${file}: refusing to overwrite the input's external data file ${location}`);
    }
  }
}

function realOrResolved(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return path.resolve(file);
  }
}

function* allTensors(model: Model): Generator<Tensor> {
  for (const graph of model.allGraphs()) {
    for (const v of graph.initializers) yield v.initializer!;
    for (const node of graph.nodes)
      for (const a of node.attributes) {
        if (a.t) yield a.t;
        if (a.tensors) yield* a.tensors;
      }
  }
}

function useExternalData(model: Model, options: SaveOptions): boolean {
  const mode = options.externalData ?? 'auto';
  if (mode !== 'auto') return mode === 'always';
  let total = 0;
  for (const t of allTensors(model)) {
    if (t.storage.kind === 'external') return true;
    total += t.byteLength;
  }
  return total > PROTOBUF_LIMIT - (64 << 20);
}

/** Appends each large tensor's bytes to the data file and returns its external_data entries. */
function externalWriter(dataPath: string, location: string, threshold: number) {
  const fd = fs.openSync(dataPath, 'w');
  let offset = 0;
  const place = (tensor: Tensor): Entry[] | undefined => {
    if (tensor.storage.kind === 'strings' || tensor.storage.kind === 'none' || tensor.byteLength < threshold) return undefined;
    const bytes = tensor.bytes();
    writeAllSync(fd, bytes);
    const entries: Entry[] = [
      ['location', location],
      ['offset', String(offset)],
      ['length', String(bytes.length)],
    ];
    const previous = tensor.storage.kind === 'external' ? tensor.storage.external.entries : [];
    if (previous.some(([k]) => k === 'checksum')) entries.push(['checksum', createHash('sha1').update(bytes).digest('hex')]);
    for (const entry of previous) if (!['location', 'offset', 'length', 'checksum'].includes(entry[0])) entries.push(entry);
    offset += bytes.length;
    return entries;
  };
  return { place, close: () => fs.closeSync(fd) };
}

function tempPath(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

function writeAllSync(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
}

function writeChunks(file: string, chunks: Uint8Array[]): void {
  const fd = fs.openSync(file, 'w');
  try {
    const BATCH = 1024; // IOV_MAX on Linux
    for (let i = 0; i < chunks.length; i += BATCH) {
      const batch = chunks.slice(i, i + BATCH);
      const expected = batch.reduce((n, c) => n + c.length, 0);
      const written = fs.writevSync(fd, batch);
      if (written < expected) writeRemainder(fd, batch, written);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function writeRemainder(fd: number, batch: Uint8Array[], written: number): void {
  let skip = written;
  for (const chunk of batch) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    writeAllSync(fd, chunk.subarray(skip));
    skip = 0;
  }
}
