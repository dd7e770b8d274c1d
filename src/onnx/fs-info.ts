// What reading (file.ts) and writing (save.ts) models need to know about files: one-line descriptions of
// file-system errors, whether a path is a regular file, whether two paths are one file, and where each
// external tensor's bytes were read from.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Model } from '../ir/model.js';
import type { ExternalData, Tensor } from '../ir/tensor.js';
import { modelToProto } from './serde.js';

export function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'is a directory, not a model file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'ENOTDIR') return 'a folder on the path is a file';
  return (error as Error).message;
}

/** Why a file is not a regular file (`is a named pipe (FIFO), not a regular file`), or undefined when it is one. */
export function notRegularFile(stat: fs.Stats): string | undefined {
  if (stat.isFile()) return undefined;
  if (stat.isDirectory()) return 'is a directory, not a model file';
  const kind = stat.isFIFO()
    ? 'a named pipe (FIFO)'
    : stat.isCharacterDevice()
      ? 'a character device'
      : stat.isBlockDevice()
        ? 'a block device'
        : stat.isSocket()
          ? 'a socket'
          : 'a special file';
  return `is ${kind}, not a regular file`;
}

/**
 * One key per file: its device and inode when it exists (so symbolic links, `..` and hard links all give
 * the same key), else its absolute path with the folders that exist resolved through symbolic links.
 */
export function fileIdentity(file: string): string {
  try {
    const stat = fs.statSync(file);
    return `inode ${stat.dev}:${stat.ino}`;
  } catch {
    return `path ${resolvedPath(file)}`;
  }
}

/** The absolute path of `file`, its nearest existing folder resolved through symbolic links. */
export function resolvedPath(file: string): string {
  const rest: string[] = [];
  let at = path.resolve(file);
  for (;;) {
    try {
      return path.join(fs.realpathSync(at), ...rest);
    } catch {
      const parent = path.dirname(at);
      if (parent === at) return path.resolve(file);
      rest.unshift(path.basename(at));
      at = parent;
    }
  }
}

/** Where an external tensor's bytes are read from, recorded when its model is decoded. */
export interface ExternalSource {
  /** the data file, resolved */
  file: string;
  /** the bytes the tensor takes in it */
  byteLength: number;
  /** the model file that names it, when the model was read with loadModel */
  owner?: string;
}

const sources = new WeakMap<ExternalData, ExternalSource>();

export function recordExternalSource(data: ExternalData, source: ExternalSource): void {
  sources.set(data, source);
}

export function externalSource(data: ExternalData): ExternalSource | undefined {
  return sources.get(data);
}

/** Every tensor the model would write (initializers, attributes, sparse tensors, functions, training info, subgraphs). */
export function forEachTensor(model: Model, visit: (tensor: Tensor) => void): void {
  // A dry run of the encoder: it visits exactly the tensors a write stores. Placing each one "externally"
  // keeps it from reading external data or converting typed fields.
  modelToProto(model, {
    placeExternal: (tensor) => {
      visit(tensor);
      return [];
    },
  });
}

/** An external data file a model reads: as its tensors name it, and resolved. */
export interface ExternalFile {
  location: string;
  file: string;
}

/** The external data files the model's tensors are read from, each once per location. */
export function externalDataFiles(model: Model): ExternalFile[] {
  const found = new Map<string, ExternalFile>();
  forEachTensor(model, (tensor) => {
    if (tensor.storage.kind !== 'external') return;
    const source = externalSource(tensor.storage.external);
    const location = tensor.storage.external.location;
    if (source && !found.has(`${location}\0${source.file}`)) found.set(`${location}\0${source.file}`, { location, file: source.file });
  });
  return [...found.values()];
}
