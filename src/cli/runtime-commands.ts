// `vcompile verify` and `vcompile bench`: the commands that run models on ONNX Runtime, and the flag
// parsing they share with the verification step of `vcompile MODEL -o OUT`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { latencyChart } from '../bench/chart.js';
import { benchModels, benchWarning, formatBenchReport } from '../bench/latency.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import type { ExecutionProvider, SessionOptions } from '../runtime/session.js';
import { failureLine, formatVerifyReport, type VerifyReport, verifyModels } from '../verify/numeric.js';
import { ExitCode, printNotice } from './errors.js';
import { jsonNumbers, print } from './output.js';
import { Progress } from './progress.js';

export interface RuntimeFlags {
  ep: ExecutionProvider;
  deviceId: number;
  threads?: number;
  graphOptimization: 'disabled' | 'basic' | 'extended' | 'all';
}

export interface GridFlags {
  batch: string | string[];
  seq: string | string[];
  dim?: string[];
  seed: number;
}

export interface VerifyFlags extends RuntimeFlags, GridFlags {
  maxError?: number;
  minCosine?: number;
  inputs?: string;
  json: boolean;
}

export async function verifyCommand(original: string, rewritten: string, flags: VerifyFlags): Promise<number> {
  const progress = new Progress('verify', !flags.json && process.stderr.isTTY === true);
  let report: VerifyReport;
  try {
    report = await verifyModels(original, rewritten, {
      ...thresholds(flags),
      ...grid(flags),
      inputsDir: flags.inputs,
      session: sessionOptions(flags),
      onProgress: (done, total) => progress.update(done, total),
    });
  } finally {
    progress.finish();
  }
  print(flags.json ? JSON.stringify(report, jsonNumbers, 2) : formatVerifyReport(report));
  if (!report.pass) throw new CheckFailedError(failureLine(report));
  return ExitCode.ok;
}

export interface BenchFlags extends RuntimeFlags, GridFlags {
  spin: boolean;
  warmup: number;
  runs: number;
  json: boolean;
  chart?: string;
  /** --control (default on): time the first model a second time each round, against itself */
  control: boolean;
  /** --sessions: sessions per model, used in turn */
  sessions: number;
  /** --ratios: comma-separated ratios of a switchable model */
  ratios?: string;
}

export async function benchCommand(models: string[], flags: BenchFlags): Promise<number> {
  if (models.length === 0) throw new VcompileError('bench needs at least one model');
  const warmup = count(flags.warmup, '--warmup', 0);
  const runs = count(flags.runs, '--runs', 1);
  const progress = new Progress('bench', !flags.json && process.stderr.isTTY === true);
  let report: Awaited<ReturnType<typeof benchModels>>;
  try {
    report = await benchModels(models, {
      ...grid(flags),
      ratios: flags.ratios === undefined ? undefined : parseList(flags.ratios, '--ratios'),
      warmup,
      runs,
      control: flags.control,
      sessions: count(flags.sessions, '--sessions', 1),
      session: { ...sessionOptions(flags), spinning: flags.spin },
      onProgress: (done, total) => progress.update(done, total),
    });
  } finally {
    progress.finish();
  }
  if (flags.chart) writeChart(flags.chart, latencyChart(report));
  print(flags.json ? JSON.stringify(report, jsonNumbers, 2) : formatBenchReport(report) + (flags.chart ? `\nchart: ${flags.chart}` : ''));
  const warning = benchWarning(report);
  if (warning) process.stderr.write(`vcompile: warning: ${warning}\n`);
  return ExitCode.ok;
}

export type CompileVerifyFlags = RuntimeFlags & { maxError?: number; minCosine?: number; dim?: string[] };

/**
 * The check at the end of `vcompile MODEL -o OUT`: the written model against its input, on the default
 * grid. Returns the report; the caller prints it, then fails with `compiledFailureLine` when it did not pass.
 */
export async function verifyCompiled(input: string, output: string, flags: CompileVerifyFlags): Promise<VerifyReport> {
  const progress = new Progress('verify', process.stderr.isTTY === true);
  try {
    return await verifyModels(input, output, {
      ...thresholds(flags),
      dims: parseDims(flags.dim),
      session: sessionOptions(flags),
      onProgress: (done, total) => progress.update(done, total),
    });
  } catch (error) {
    if (error instanceof VcompileError) throw error.wrapped('verification could not run: ', ` (${writtenNote(output)})`);
    throw error;
  } finally {
    progress.finish();
  }
}

export function compiledFailure(report: VerifyReport, output: string): VcompileError {
  return new CheckFailedError(`${failureLine(report)} (${writtenNote(output)})`);
}

function writtenNote(output: string): string {
  return `${output} was written; --no-verify skips the check`;
}

/** One line per output for the compile report. */
export function describeVerify(report: VerifyReport): string {
  const cases = `${report.cases.length} case${report.cases.length === 1 ? '' : 's'}`;
  return report.outputs
    .map(
      (o) =>
        `verify ${o.name}: max abs error ${o.maxAbs.toExponential(2)}, cosine ${o.cosine.toFixed(6)} over ${cases}${o.maskedBy ? ` (padding masked by ${o.maskedBy})` : ''}: ${o.pass ? 'ok' : 'FAIL'}`,
    )
    .join('\n');
}

function thresholds(flags: { maxError?: number; minCosine?: number }): { maxError?: number; minCosine?: number } {
  if (flags.maxError !== undefined && !(flags.maxError >= 0))
    throw new VcompileError(`--max-error must be a number >= 0, got ${flags.maxError}`);
  if (flags.minCosine !== undefined && !(flags.minCosine >= -1 && flags.minCosine <= 1))
    throw new VcompileError(`--min-cosine must be between -1 and 1, got ${flags.minCosine}`);
  return { maxError: flags.maxError, minCosine: flags.minCosine };
}

function grid(flags: GridFlags): { batches: number[]; seqs: number[]; dims: Record<string, number>; seed: number } {
  if (!Number.isSafeInteger(flags.seed)) throw new VcompileError(`--seed must be an integer, got ${flags.seed}`);
  return { batches: parseList(flags.batch, '--batch'), seqs: parseList(flags.seq, '--seq'), dims: parseDims(flags.dim), seed: flags.seed };
}

export function sessionOptions(flags: RuntimeFlags): SessionOptions {
  if (flags.threads !== undefined) count(flags.threads, '--threads', 1);
  return {
    ep: flags.ep,
    deviceId: count(flags.deviceId, '--device-id', 0),
    threads: flags.threads,
    graphOptimizationLevel: flags.graphOptimization,
    notify: printNotice,
  };
}

/** `8`, `128,256,512`, or the flag repeated. */
export function parseList(value: string | string[] | number, flag: string): number[] {
  const items = (Array.isArray(value) ? value : [value])
    .flatMap((v) => String(v).split(','))
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (items.length === 0) throw new VcompileError(`${flag} needs at least one value`);
  return items.map((s) => {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n < 1) throw new VcompileError(`${flag}: '${s}' is not a positive integer`);
    return n;
  });
}

/** `--dim name=value` (repeatable): binds a symbolic input dim by its name. */
export function parseDims(values: string[] | undefined): Record<string, number> {
  const dims: Record<string, number> = {};
  for (const item of values ?? []) {
    const match = /^(.+)=(\d+)$/.exec(item.trim());
    if (!match || Number(match[2]) < 1) throw new VcompileError(`--dim: '${item}' is not NAME=POSITIVE_INTEGER`);
    dims[match[1]] = Number(match[2]);
  }
  return dims;
}

function count(value: number, flag: string, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) throw new VcompileError(`${flag} must be an integer >= ${min}, got ${value}`);
  return value;
}

function writeChart(file: string, svg: string): void {
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(file, svg);
  } catch (error) {
    throw new VcompileError(`--chart ${file}: ${(error as Error).message}`);
  }
}
