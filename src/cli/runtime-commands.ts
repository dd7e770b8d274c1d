// `vcompile bench`, and the flag parsing every command that runs models shares (verify-commands.ts).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { latencyChart } from '../bench/chart.js';
import { benchModels, benchWarning, formatBenchReport } from '../bench/latency.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import { fileIdentity } from '../onnx/file.js';
import type { ExecutionProvider, SessionOptions } from '../runtime/session.js';
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
  const chart = flags.chart;
  const read = chart === undefined ? undefined : models.find((m) => fileIdentity(m) === fileIdentity(chart));
  if (read !== undefined)
    throw new VcompileError(`--chart ${chart}: refusing to overwrite ${read}, which this run reads (write the chart elsewhere)`);
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
