// The files a command reads, which its writes must leave alone (saveModel's `protect`): the input model and
// its external data, plugin and module files and theirs. Each is compared with OUT and OUT's data file by
// identity before anything is written (src/onnx/save.ts). And the models `verify` reads, checked with
// vcompile's codec before ONNX Runtime gets them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkDimNames, describeInputs } from '../analysis/inputs.js';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { decodeModel, type ExternalFile, externalDataFiles, loadModel, type ProtectedFile, readFileOrFail } from '../onnx/file.js';

/** The input model and its external data files (as loaded, before any pass removes a weight). */
export function inputReads(file: string, data: readonly ExternalFile[]): ProtectedFile[] {
  return [
    { file, label: 'the input model' },
    ...data.map((d) => ({ file: d.file, label: `the input's external data file ${d.location}`, inputData: true })),
  ];
}

/**
 * A plugin or module file and its external data files. A file that cannot be read is listed alone: the
 * loader that reads it later says what is wrong with it.
 */
export function modelFileReads(file: string, label: string): ProtectedFile[] {
  const reads: ProtectedFile[] = [{ file, label }];
  try {
    const model = decodeModel(readFileOrFail(file, label), { baseDir: path.dirname(file), label });
    for (const d of externalDataFiles(model)) reads.push({ file: d.file, label: `the external data file ${d.location} of ${label}` });
  } catch (error) {
    if (!(error instanceof VcompileError)) throw error;
  }
  return reads;
}

/** The files named by --plugin values (FILE or L=FILE; built-ins read none). */
export function pluginReads(sources: readonly string[]): ProtectedFile[] {
  return sources.filter((source) => !source.startsWith('builtin:')).flatMap((source) => modelFileReads(source, `plugin ${source}`));
}

/** The files named by --module values (built-ins read none). */
export function moduleReads(sources: readonly string[]): ProtectedFile[] {
  return sources.filter((source) => !source.startsWith('builtin:')).flatMap((source) => modelFileReads(source, `module ${source}`));
}

/** The module files of a --modules folder (none when it cannot be listed: the assembler says why). */
export function moduleFolderReads(dir: string): ProtectedFile[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(dir).filter((f) => f.toLowerCase().endsWith('.onnx'));
  } catch {
    return [];
  }
  return moduleReads(entries.map((entry) => path.join(dir, entry)));
}

/**
 * `vcompile verify`'s models, read with vcompile's own codec before ONNX Runtime gets their paths, so that a
 * missing file or one that is not ONNX gets the message it gets everywhere else; and each --dim must name a
 * symbolic input dim of ORIGINAL (whose inputs are generated).
 */
export function checkVerifyInputs(original: string, rewritten: string, dims: Record<string, number>): Model {
  const model = loadModel(original);
  loadModel(rewritten);
  if (Object.keys(dims).length) checkDimNames(describeInputs(model, { allowUnshaped: true }), dims, [original]);
  return model;
}

/** The data files a fit or a check reads: a .jsonl file, or every file of a data folder. */
export function dataReads(data: string): ProtectedFile[] {
  let files: string[];
  try {
    files = fs.statSync(data).isDirectory() ? listFiles(data) : [data];
  } catch {
    return [];
  }
  return files.map((file) => ({ file, label: `data ${file}` }));
}

function listFiles(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}
