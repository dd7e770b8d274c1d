// `vcompile verify` and the check after `vcompile MODEL -o OUT`: flags read and refused up front, the
// comparison run in a child process (src/verify/isolated.ts), the report printed, the gate enforced.
import { checkDimNames, describeInputs } from '../analysis/inputs.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { openData } from '../runtime/data.js';
import { releaseMemory } from '../runtime/memory.js';
import { type IsolatedOptions, verifyIsolated } from '../verify/isolated.js';
import { failureLine, type VerifyReport } from '../verify/numeric.js';
import { describeVerifyBrief, formatVerifyReport } from '../verify/report.js';
import { ExitCode, printNotice } from './errors.js';
import { checkVerifyInputs } from './files.js';
import { jsonNumbers, print } from './output.js';
import { Progress } from './progress.js';
import { parseDims, parseList, type RuntimeFlags, sessionOptions } from './runtime-commands.js';

/** The flags of a check: gates, inputs (grid, files or data), what to compare. */
export interface CheckFlags extends RuntimeFlags {
  maxError?: number;
  minCosine?: number;
  minTop1Agreement?: number;
  maxKl?: number;
  maxAccuracyDrop?: number;
  /** grid batch sizes, or with --data the samples per run */
  batch?: string | string[];
  seq?: string | string[];
  dim?: string[];
  seed?: number;
  inputs?: string;
  data?: string;
  samples?: number;
  logits?: string[];
  perLayer?: boolean;
}

/**
 * The check's options, every flag checked now: before a compile does any work, and before anything is
 * written. `model` is the original (data are checked against its inputs).
 */
export function checkOptions(flags: CheckFlags, model: Model, originalPath: string): IsolatedOptions {
  const { notify: _printed, ...session } = sessionOptions(flags); // notices come back from the child process
  const dims = parseDims(flags.dim);
  if (Object.keys(dims).length) checkDimNames(describeInputs(model, { allowUnshaped: true }), dims, [originalPath]);
  const options: IsolatedOptions = { ...gates(flags), dims, session };
  if (flags.seed !== undefined) {
    if (!Number.isSafeInteger(flags.seed)) throw new VcompileError(`--seed must be an integer, got ${flags.seed}`);
    options.seed = flags.seed;
  }
  if (flags.data !== undefined && flags.inputs !== undefined) throw new VcompileError('give --data or --inputs, not both');
  if (flags.data !== undefined) {
    if (flags.seq !== undefined) throw new VcompileError("--seq sets generated inputs; with --data the lengths are the data's");
    const batch = flags.batch === undefined ? 8 : single(parseList(flags.batch, '--batch'), '--batch');
    if (flags.samples !== undefined && !(Number.isSafeInteger(flags.samples) && flags.samples >= 1)) {
      throw new VcompileError(`--samples must be a positive integer, got ${flags.samples}`);
    }
    // opened here so that bad data is refused before anything runs or is written
    openData(flags.data, describeInputs(model, { allowUnshaped: true }), { samples: flags.samples });
    options.data = { path: flags.data, samples: flags.samples, batchSize: batch };
  } else {
    if (flags.samples !== undefined) throw new VcompileError('--samples goes with --data');
    if (flags.batch !== undefined) options.batches = parseList(flags.batch, '--batch');
    if (flags.seq !== undefined) options.seqs = parseList(flags.seq, '--seq');
    if (flags.inputs !== undefined) options.inputsDir = flags.inputs;
  }
  if (flags.logits !== undefined) options.logits = parseLogits(flags.logits, model, originalPath);
  if (flags.perLayer) options.perLayer = true;
  return options;
}

function single(values: number[], flag: string): number {
  if (values.length !== 1) throw new VcompileError(`${flag} takes one value with --data (the samples per run), got ${values.join(',')}`);
  return values[0];
}

function gates(flags: CheckFlags): IsolatedOptions {
  const fraction = (value: number | undefined, flag: string) => {
    if (value !== undefined && !(value >= 0 && value <= 1)) throw new VcompileError(`${flag} must be between 0 and 1, got ${value}`);
    return value;
  };
  const nonNegative = (value: number | undefined, flag: string) => {
    if (value !== undefined && !(value >= 0)) throw new VcompileError(`${flag} must be a number >= 0, got ${value}`);
    return value;
  };
  if (flags.minCosine !== undefined && !(flags.minCosine >= -1 && flags.minCosine <= 1)) {
    throw new VcompileError(`--min-cosine must be between -1 and 1, got ${flags.minCosine}`);
  }
  return {
    maxError: nonNegative(flags.maxError, '--max-error'),
    minCosine: flags.minCosine,
    minTop1Agreement: fraction(flags.minTop1Agreement, '--min-top1-agreement'),
    maxKl: nonNegative(flags.maxKl, '--max-kl'),
    maxAccuracyDrop: nonNegative(flags.maxAccuracyDrop, '--max-accuracy-drop'),
  };
}

/** `--logits NAME` (repeatable, or comma-separated): exactly these outputs score classes; `none`: none does. */
function parseLogits(values: string[], model: Model, file: string): string[] {
  const names = values
    .flatMap((v) => v.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 1 && names[0] === 'none') return [];
  const outputs = model.graph.outputs.map((v) => v.name);
  const unknown = names.find((n) => !outputs.includes(n));
  if (unknown !== undefined) throw new VcompileError(`--logits ${unknown}: ${file} has no such output (outputs: ${outputs.join(', ')})`);
  return names;
}

// ------------------------------------------------------------------------------------------ verify

export interface VerifyFlags extends CheckFlags {
  json: boolean;
}

export async function verifyCommand(original: string, rewritten: string, flags: VerifyFlags): Promise<number> {
  const options = readyCheck(original, rewritten, flags);
  releaseMemory();
  const report = await runCheck(original, rewritten, options, !flags.json);
  print(flags.json ? JSON.stringify(report, jsonNumbers, 2) : formatVerifyReport(report));
  if (!report.pass) throw new CheckFailedError(failureLine(report));
  return ExitCode.ok;
}

/** The check's options; the models read (the codec's one-line errors for a missing or broken file, before onnxruntime's) and let go. */
function readyCheck(original: string, rewritten: string, flags: VerifyFlags): IsolatedOptions {
  return checkOptions(flags, checkVerifyInputs(original, rewritten, parseDims(flags.dim)), original);
}

async function runCheck(original: string, rewritten: string, options: IsolatedOptions, showProgress: boolean): Promise<VerifyReport> {
  const progress = new Progress('verify', showProgress && process.stderr.isTTY === true);
  try {
    return await verifyIsolated(original, rewritten, options, {
      onProgress: (done, total) => progress.update(done, total),
      notify: printNotice,
    });
  } finally {
    progress.finish();
  }
}

// ------------------------------------------------------------------------------------------ the compile check

/**
 * The check at the end of `vcompile MODEL -o OUT`: the written model against the original, at every ratio
 * of a switchable model (`switchable`: the model's vcompile.switchable metadata). Returns the reports (default ratio first); the caller prints them and fails when
 * one did not pass.
 */
export async function checkCompiled(
  original: string,
  output: string,
  switchable: string | undefined,
  options: IsolatedOptions,
): Promise<VerifyReport[]> {
  const ratios: (number | undefined)[] = [undefined];
  if (switchable) {
    const info = JSON.parse(switchable) as { ratios: number[]; default: number };
    ratios.splice(0, 1, info.default, ...info.ratios.filter((r) => r !== info.default));
  }
  const reports: VerifyReport[] = [];
  try {
    for (const ratio of ratios) reports.push(await runCheck(original, output, ratio === undefined ? options : { ...options, ratio }, true));
  } catch (error) {
    if (error instanceof VcompileError) throw error.wrapped('verification could not run: ', ` (${writtenNote(output)})`);
    throw error;
  }
  return reports;
}

export function compiledFailure(reports: VerifyReport[], output: string): VcompileError {
  const failed = reports.find((r) => !r.pass)!;
  const at = failed.ratio !== undefined ? ` at vcompile_ratio ${failed.ratio}` : '';
  return new CheckFailedError(`${failureLine(failed)}${at} (${writtenNote(output)})`);
}

function writtenNote(output: string): string {
  return `${output} was written; --no-verify skips the check`;
}

/** The compile report's lines for the check: one per output (and ratio), and the advice on generated inputs. */
export function describeCheck(reports: VerifyReport[]): string {
  const lines = reports.map(describeVerifyBrief);
  const grid = reports[0]?.inputs;
  if (grid?.kind === 'grid')
    lines.push(`verify: inputs generated (${grid.note}); give real inputs with --data to measure what the task loses`);
  return lines.join('\n');
}
