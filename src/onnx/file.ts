// Reading .onnx files: regular files only, external data checked before it is read. Writing is in
// save.ts (re-exported here).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { ExternalData } from '../ir/tensor.js';
import type { Entry } from '../ir/types.js';
import { decode, ProtoDecodeError } from './codec.js';
import { describeFsError, notRegularFile, recordExternalSource } from './fs-info.js';
import { ModelFormatError, modelFromProto } from './serde.js';

export { describeFsError, type ExternalFile, externalDataFiles, fileIdentity } from './fs-info.js';
export {
  checkSave,
  encodeModel,
  type KeptOriginal,
  keepOriginal,
  type ProtectedFile,
  removeTemporaryFiles,
  type SaveOptions,
  type SaveResult,
  saveModel,
  saveModelAsync,
  temporaryFolder,
} from './save.js';

/** Decode a model from bytes. External data is resolved against `baseDir` when given. */
export function decodeModel(bytes: Uint8Array, options: { baseDir?: string; label?: string } = {}): Model {
  return decodeFrom(bytes, options.baseDir, options.label ?? 'model');
}

/** `owner`: the model file, recorded as the owner of the external data it names. */
function decodeFrom(bytes: Uint8Array, baseDir: string | undefined, label: string, owner?: string): Model {
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
  try {
    return modelFromProto(proto, {
      externalData: baseDir ? (entries, name) => externalData(baseDir, label, entries, name, owner) : undefined,
    });
  } catch (error) {
    if (error instanceof ModelFormatError || error instanceof RangeError) throw new VcompileError(`${label}: ${error.message}`);
    throw error;
  }
}

export function loadModel(file: string): Model {
  return decodeFrom(readFileOrFail(file), path.dirname(file), file, file);
}

// Reading waits for no one: a named pipe or a device would block (or never end), so the file is opened
// without blocking and must turn out to be a regular file.
const OPEN_FOR_READING = fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0);

/** A regular file's bytes, or a one-line VcompileError naming it (`label` defaults to the path). */
export function readFileOrFail(file: string, label = file): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, OPEN_FOR_READING);
  } catch (error) {
    throw new VcompileError(`${label}: ${describeFsError(error)}`);
  }
  try {
    const stat = fs.fstatSync(fd);
    const why = notRegularFile(stat);
    if (why) throw new VcompileError(`${label}: ${why}`);
    return readAll(fd, stat.size);
  } catch (error) {
    if (error instanceof VcompileError) throw error;
    throw new VcompileError(`${label}: ${describeFsError(error)}`);
  } finally {
    fs.closeSync(fd);
  }
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

function externalData(baseDir: string, label: string, entries: Entry[], tensor: string, owner?: string): ExternalData {
  const get = (key: string) => entries.find(([k]) => k === key)?.[1];
  const location = get('location') ?? '';
  const file = resolveExternalLocation(baseDir, location, label, tensor);
  const offset = parseIntEntry(get('offset'), 'offset', label, tensor) ?? 0;
  const length = parseIntEntry(get('length'), 'length', label, tensor);
  const stat = fs.statSync(file);
  const why = notRegularFile(stat);
  if (why) throw new VcompileError(`${label}: tensor ${tensor}: external data location '${location}' ${why}`);
  const fileSize = stat.size;
  const end = length === undefined ? fileSize : offset + length;
  if (offset > fileSize || end > fileSize) {
    throw new VcompileError(
      `${label}: tensor ${tensor}: external data [${offset}, ${end}) runs past the end of ${location} (${fileSize} bytes)`,
    );
  }
  const data: ExternalData = {
    location,
    offset,
    length,
    checksum: get('checksum'),
    entries,
    load: () => readRange(file, offset, end - offset),
  };
  recordExternalSource(data, { file, byteLength: end - offset, owner });
  return data;
}

function parseIntEntry(text: string | undefined, key: string, label: string, tensor: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new VcompileError(`${label}: tensor ${tensor}: external data ${key} '${text}' is not a byte count`);
  }
  return n;
}

/** A regular file's bytes from an open descriptor: `size` of them, or fewer if it shrank meanwhile. */
function readAll(fd: number, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let done = 0;
  for (let n = 1; done < size && n > 0; done += n) n = fs.readSync(fd, out, done, size - done, done);
  return done < size ? out.subarray(0, done) : out;
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
