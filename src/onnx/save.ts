// Writing .onnx files: atomically (temporary files beside the targets, then renamed into place), never over
// a file the run read, with weights as external data where asked or needed.
//
// Checked before a byte is written (checkSave):
//   - OUT is a new or regular file, not a folder; its data file is a new or regular file inside OUT's
//     folder (also after following symbolic links), and not OUT itself;
//   - neither is a file the run read (`protect`: the input model first, then plugins, modules, and their
//     external data) or an external data file the model being written reads from. Files are compared by
//     identity (device and inode where the file exists, else the resolved path), so symbolic links, `..`
//     and hard links do not hide one;
//   - with `overwrite`, OUT may be the input model, and its data file one of the input's own external data
//     files; the input's data files OUT no longer uses are removed after the write.
// Temporary files are registered while they exist: every error path removes them, and so does
// removeTemporaryFiles(), which a signal handler calls. The bytes are written in pieces of at most
// WRITE_PIECE bytes; saveModelAsync lets the event loop run between pieces (signals are handled there),
// saveModel writes them in one go. Both rename only after everything is written, without pausing between
// the renames.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import type { Entry } from '../ir/types.js';
import { concatChunks, encode } from './codec.js';
import {
  describeFsError,
  type ExternalFile,
  externalSource,
  fileIdentity,
  forEachTensor,
  notRegularFile,
  resolvedPath,
} from './fs-info.js';
import { modelToProto } from './serde.js';

/** A file the write must leave alone, with how messages name it. */
export interface ProtectedFile {
  file: string;
  /** e.g. `plugin p.onnx`; default: `the input model` for the first file of `protect`, else the path */
  label?: string;
  /** one of the input model's own external data files (which `overwrite` lets the new data file replace) */
  inputData?: boolean;
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
  /**
   * The files this run read, which the write leaves alone: the input model first, then any other (plugins,
   * modules, external data files). The external data files the model being written reads from are
   * protected without being listed.
   */
  protect?: (string | ProtectedFile)[];
  /**
   * OUT may be the input model (`protect[0]`), which it then replaces, and its data file one of the input's
   * own external data files (those of the model being written whose model file is the input, and those
   * listed with `inputData`); the input's data files OUT no longer uses are removed after the write.
   */
  overwrite?: boolean;
}

export interface SaveResult {
  bytes: number;
  externalFile?: string;
  /** the input's external data files removed because OUT replaced the input and no longer uses them */
  removed: string[];
}

const PROTOBUF_LIMIT = 0x7fffffff;
/** Bytes written between two chances for the event loop to run (saveModelAsync). */
const WRITE_PIECE = 16 << 20;
/** IOV_MAX on Linux */
const WRITEV_MAX_CHUNKS = 1024;

/** Serialize a model to one buffer, all weights inline. */
export function encodeModel(model: Model): Uint8Array {
  return concatChunks(encode('ModelProto', modelToProto(model)));
}

/** Write a model atomically: to temporary files beside the target, then renamed into place. */
export function saveModel(model: Model, file: string, options: SaveOptions = {}): SaveResult {
  const steps = saveSteps(model, file, options);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/** saveModel, letting the event loop run every few megabytes (so that a signal handler can run mid-write). */
export async function saveModelAsync(model: Model, file: string, options: SaveOptions = {}): Promise<SaveResult> {
  const steps = saveSteps(model, file, options);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

// ------------------------------------------------------------------------------------ the checks

interface SavePlan {
  threshold: number;
  external?: { location: string; final: string };
  /** OUT replaces the input model */
  replacesInput: boolean;
  /**
   * The input's external data files to remove once OUT is in place, provided the input's own path then
   * names OUT (not when OUT was another name of the input, a link, whose target still uses them).
   */
  unused: { files: string[]; input: string; was: string };
}

interface Guarded {
  file: string;
  label: string;
  input: boolean;
  inputData: boolean;
  /** found as a data file of the model being written, not listed by the caller */
  implicit: boolean;
}

/**
 * Everything saveModel checks before it writes (see the top of this file), without writing: a one-line
 * VcompileError for the first problem. Returns whether OUT would replace the input model.
 */
export function checkSave(model: Model, file: string, options: SaveOptions = {}): { replacesInput: boolean } {
  return { replacesInput: planSave(model, file, options).replacesInput };
}

function planSave(model: Model, file: string, options: SaveOptions): SavePlan {
  const threshold = options.sizeThreshold ?? 1024;
  if (!Number.isSafeInteger(threshold) || threshold < 0)
    throw new VcompileError(msg`${option('sizeThreshold', threshold)}: must be a whole number of bytes >= 0`);
  checkOutputPath(file);
  const external = useExternalData(model, options) ? dataFile(file, options.location) : undefined;
  const guarded = guardedFiles(model, options.protect ?? []);
  const out = fileIdentity(file);
  let replacesInput = false;
  const hit = guarded.get(out);
  if (hit?.input && options.overwrite) replacesInput = true;
  else if (hit?.input)
    throw new VcompileError(
      msg`${file}: refusing to overwrite the input model (write elsewhere, or pass ${option('overwrite', undefined, 'overwrite: true')})`,
    );
  else if (hit) throw new VcompileError(`${file}: refusing to overwrite ${hit.label}, which this run reads (write elsewhere)`);
  const data = external && fileIdentity(external.final);
  const dataHit = data === undefined ? undefined : guarded.get(data);
  if (dataHit && !(replacesInput && dataHit.inputData)) {
    if (dataHit.inputData || dataHit.implicit)
      throw new VcompileError(`${file}: refusing to overwrite the input's external data file ${external!.location}`);
    throw new VcompileError(
      msg`${file}: refusing to write the external data over ${dataHit.label}, which this run reads (${option('dataLocation', external!.location, `location '${external!.location}'`)} names it; choose another)`,
    );
  }
  const files = replacesInput ? [...guarded].filter(([id, g]) => g.inputData && id !== data && id !== out).map(([, g]) => g.file) : [];
  const input = options.protect?.length ? pathOf(options.protect[0]) : file;
  return { threshold, external, replacesInput, unused: { files, input, was: out } };
}

function pathOf(entry: string | ProtectedFile): string {
  return typeof entry === 'string' ? entry : entry.file;
}

/** The protected files by identity: the caller's, then the external data files the model reads from. */
function guardedFiles(model: Model, protect: readonly (string | ProtectedFile)[]): Map<string, Guarded> {
  const guarded = new Map<string, Guarded>();
  protect.forEach((entry, i) => {
    const e = typeof entry === 'string' ? { file: entry } : entry;
    const id = fileIdentity(e.file);
    const known = guarded.get(id);
    if (known) {
      known.input ||= i === 0;
      known.inputData ||= e.inputData === true;
      return;
    }
    guarded.set(id, {
      file: e.file,
      label: e.label ?? (i === 0 ? 'the input model' : e.file),
      input: i === 0,
      inputData: e.inputData === true,
      implicit: false,
    });
  });
  const input = protect.length ? fileIdentity(pathOf(protect[0])) : undefined;
  const identities = new Map<string, string>();
  const identity = (file: string) => identities.get(file) ?? identities.set(file, fileIdentity(file)).get(file)!;
  forEachTensor(model, (tensor) => {
    if (tensor.storage.kind !== 'external') return;
    const source = externalSource(tensor.storage.external);
    if (!source) return;
    const id = identity(source.file);
    const ofInput = input !== undefined && source.owner !== undefined && identity(source.owner) === input;
    const known = guarded.get(id);
    if (known) known.inputData ||= ofInput;
    else
      guarded.set(id, {
        file: source.file,
        label: `the input's external data file ${tensor.storage.external.location}`,
        input: false,
        inputData: ofInput,
        implicit: true,
      });
  });
  return guarded;
}

/** OUT must be a file name (not a folder), new or a regular file, under folders that are folders. */
function checkOutputPath(file: string): void {
  const output = (why: string) => new VcompileError(msg`${option('output', file, file)}: ${why}`);
  const stat = statOrUndefined(file);
  if (/[\\/]$/.test(file) || stat?.isDirectory())
    throw output(`is a directory; name the file to write (e.g. ${path.join(file, 'model.onnx')})`);
  if (stat && !stat.isFile()) throw output(`${notRegularFile(stat)}; name a regular file to write`);
  const ancestor = existingAncestor(path.dirname(path.resolve(file)));
  if (ancestor && !ancestor.stat.isDirectory()) throw output(`${ancestor.path} is a file, not a folder`);
}

/** Where OUT's weights go, checked: a plain relative path inside OUT's folder, not OUT, not a folder. */
function dataFile(file: string, given: string | undefined): { location: string; final: string } {
  const location = given ?? `${path.basename(file)}.data`;
  const refuse = (why: string) =>
    new VcompileError(msg`${option('dataLocation', location, `external data location '${location}'`)}: ${why}`);
  if (location === '' || path.isAbsolute(location) || /^[a-zA-Z]:/.test(location) || location.split(/[\\/]/).includes('..'))
    throw refuse('must be a plain relative path inside the output folder');
  const final = path.join(path.dirname(file), location);
  const stat = statOrUndefined(final);
  if (/[\\/]$/.test(location) || stat?.isDirectory()) throw refuse('is a directory; name the file the weights go to');
  if (stat && !stat.isFile()) throw refuse(`${notRegularFile(stat)}; name a regular file`);
  const inside = path.relative(resolvedPath(path.dirname(file)), resolvedPath(final));
  if (inside === '' || inside.split(path.sep)[0] === '..' || path.isAbsolute(inside))
    throw refuse('resolves outside the output folder (through a symbolic link)');
  if (fileIdentity(final) === fileIdentity(file))
    throw refuse(`names the output file itself; the weights need a file of their own (the default is ${path.basename(file)}.data)`);
  return { location, final };
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

function existingAncestor(folder: string): { path: string; stat: fs.Stats } | undefined {
  for (let at = folder; ; at = path.dirname(at)) {
    const stat = statOrUndefined(at);
    if (stat) return { path: at, stat };
    if (path.dirname(at) === at) return undefined;
  }
}

function useExternalData(model: Model, options: SaveOptions): boolean {
  const mode = options.externalData ?? 'auto';
  if (mode !== 'auto') return mode === 'always';
  let total = 0;
  let external = false;
  forEachTensor(model, (tensor) => {
    if (tensor.storage.kind === 'external') external = true;
    else total += tensor.byteLength;
  });
  return external || total > PROTOBUF_LIMIT - (64 << 20);
}

// ------------------------------------------------------------------------------------ the write

function* saveSteps(model: Model, file: string, options: SaveOptions): Generator<void, SaveResult, void> {
  const plan = planSave(model, file, options);
  const temps: string[] = [];
  const temporary = (final: string) => {
    const temp = path.join(path.dirname(final), `.${path.basename(final)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    temps.push(temp);
    temporaries.set(temp, false);
    return temp;
  };
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const placed: { tensor: Tensor; length: number }[] = [];
    let place: ((tensor: Tensor) => Entry[] | undefined) | undefined;
    if (plan.external) {
      fs.mkdirSync(path.dirname(plan.external.final), { recursive: true });
      place = placer(plan.external.location, plan.threshold, placed);
    }
    const encoded = encode('ModelProto', modelToProto(model, { placeExternal: place }));
    const dataTemp = plan.external && temporary(plan.external.final);
    if (dataTemp) yield* writeFile(dataTemp, externalBytes(placed));
    const modelTemp = temporary(file);
    yield* writeFile(modelTemp, encoded.chunks);
    // No pause from here on: a signal handled between pieces finds nothing renamed, or everything.
    if (dataTemp) fs.renameSync(dataTemp, plan.external!.final);
    fs.renameSync(modelTemp, file);
    for (const temp of temps.splice(0)) temporaries.delete(temp);
    const { files, input, was } = plan.unused;
    const removed = files.length && fileIdentity(input) !== was ? files.filter((unused) => removeQuietly(unused)) : [];
    return { bytes: encoded.byteLength, externalFile: plan.external?.final, removed };
  } catch (error) {
    for (const temp of temps) fs.rmSync(temp, { force: true });
    if (error instanceof RangeError && /2 GiB/.test(error.message)) throw new VcompileError(`${file}: ${error.message}`);
    if ((error as NodeJS.ErrnoException).code) throw new VcompileError(`${file}: ${describeFsError(error)}`);
    throw error;
  } finally {
    for (const temp of temps) temporaries.delete(temp);
  }
}

function removeQuietly(file: string): boolean {
  try {
    fs.rmSync(file);
    return true;
  } catch {
    return false;
  }
}

/** Decides which tensors go to the data file (in encoding order) and returns their external_data entries. */
function placer(location: string, threshold: number, placed: { tensor: Tensor; length: number }[]) {
  let offset = 0;
  return (tensor: Tensor): Entry[] | undefined => {
    if (tensor.storage.kind === 'strings' || tensor.storage.kind === 'none') return undefined;
    const length = dataLength(tensor);
    if (length < threshold) return undefined;
    const entries: Entry[] = [
      ['location', location],
      ['offset', String(offset)],
      ['length', String(length)],
    ];
    const previous = tensor.storage.kind === 'external' ? tensor.storage.external.entries : [];
    if (previous.some(([k]) => k === 'checksum')) entries.push(['checksum', createHash('sha1').update(tensor.bytes()).digest('hex')]);
    for (const entry of previous) if (!['location', 'offset', 'length', 'checksum'].includes(entry[0])) entries.push(entry);
    placed.push({ tensor, length });
    offset += length;
    return entries;
  };
}

/** The bytes a tensor's data takes, without reading external data where the length is known. */
function dataLength(tensor: Tensor): number {
  const s = tensor.storage;
  if (s.kind === 'raw') return s.bytes.length;
  if (s.kind === 'external') return s.external.length ?? externalSource(s.external)?.byteLength ?? tensor.bytes().length;
  return tensor.byteLength;
}

function* externalBytes(placed: { tensor: Tensor; length: number }[]): Generator<Uint8Array> {
  for (const { tensor, length } of placed) {
    const bytes = tensor.bytes();
    if (bytes.length !== length)
      throw new Error(`tensor ${tensor.name ?? '(unnamed)'} has ${bytes.length} bytes of data where ${length} were planned`);
    yield bytes;
  }
}

/** Writes the chunks to a new file, pausing after every WRITE_PIECE bytes. */
function* writeFile(file: string, chunks: Iterable<Uint8Array>): Generator<void> {
  const fd = fs.openSync(file, 'wx');
  try {
    let batch: Uint8Array[] = [];
    let bytes = 0;
    for (const chunk of chunks) {
      for (let at = 0; at < chunk.length; at += WRITE_PIECE) {
        const piece = chunk.length <= WRITE_PIECE ? chunk : chunk.subarray(at, at + WRITE_PIECE);
        batch.push(piece);
        bytes += piece.length;
        if (batch.length === WRITEV_MAX_CHUNKS || bytes >= WRITE_PIECE) {
          writeBatch(fd, batch, bytes);
          batch = [];
          bytes = 0;
          yield;
        }
      }
    }
    if (batch.length) writeBatch(fd, batch, bytes);
  } finally {
    fs.closeSync(fd);
  }
}

function writeBatch(fd: number, batch: Uint8Array[], expected: number): void {
  const written = fs.writevSync(fd, batch);
  if (written >= expected) return;
  let skip = written;
  for (const chunk of batch) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    for (let done = skip; done < chunk.length; ) done += fs.writeSync(fd, chunk, done, chunk.length - done);
    skip = 0;
  }
}

// ------------------------------------------------------------------------------------ temporaries

/** Temporary files and folders that exist right now (writes in progress, kept originals): path -> whether a folder. */
const temporaries = new Map<string, boolean>();

/** Removes every temporary file and folder of this process (for signal handlers); returns them. */
export function removeTemporaryFiles(): { path: string; folder: boolean }[] {
  const removed = [...temporaries].map(([temp, folder]) => ({ path: temp, folder }));
  for (const { path: temp } of removed) fs.rmSync(temp, { recursive: true, force: true });
  temporaries.clear();
  return removed;
}

/** A fresh folder (fs.mkdtempSync(prefix)) registered as a temporary until `release()`, which removes it. */
export function temporaryFolder(prefix: string): { folder: string; release(): void } {
  const folder = fs.mkdtempSync(prefix);
  temporaries.set(folder, true);
  return {
    folder,
    release() {
      fs.rmSync(folder, { recursive: true, force: true });
      temporaries.delete(folder);
    },
  };
}

export interface KeptOriginal {
  /** the kept model file; its external data files sit beside it under their locations */
  file: string;
  /** removes the kept copy */
  release(): void;
}

/**
 * Keeps a model file and its external data files readable while the model is replaced (saveModel with
 * `overwrite`): hard links in a hidden folder beside the model (copies where the file system has none),
 * registered as a temporary until `release()`.
 */
export function keepOriginal(file: string, externalFiles: readonly ExternalFile[]): KeptOriginal {
  const folder = path.join(path.dirname(file), `.${path.basename(file)}.original.${process.pid}.${randomBytes(4).toString('hex')}`);
  temporaries.set(folder, true);
  const release = () => {
    fs.rmSync(folder, { recursive: true, force: true });
    temporaries.delete(folder);
  };
  try {
    fs.mkdirSync(folder);
    const kept = path.join(folder, path.basename(file));
    linkOrCopy(fs.realpathSync(file), kept);
    for (const data of externalFiles) {
      const target = path.join(folder, data.location);
      if (fs.existsSync(target)) continue;
      fs.mkdirSync(path.dirname(target), { recursive: true });
      linkOrCopy(data.file, target);
    }
    return { file: kept, release };
  } catch (error) {
    release();
    throw new VcompileError(`${file}: cannot keep the original for the check after the write: ${describeFsError(error)}`);
  }
}

function linkOrCopy(from: string, to: string): void {
  try {
    fs.linkSync(from, to);
  } catch {
    fs.copyFileSync(from, to, fs.constants.COPYFILE_FICLONE);
  }
}
