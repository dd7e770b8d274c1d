// Modules fitted from data on the command line:
//   vcompile module fit MODEL --layers S-E[,S-E...] --data PATH [--init keep-first|average] [--rank R]
//       [--no-context] -o OUT
//     one span: OUT is the module file; several: OUT is a folder (OUT/L{S}-{E}.onnx and OUT/fit.json),
//     written all or nothing once every span is fitted
//   vcompile MODEL --module S-E=builtin:fit[:INIT] ... --data PATH -o OUT    (fitModulesForCompile)
// The fitting itself: src/decide/fit-modules.ts.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MODULE_INITS, type ModuleInit } from '../../passes/modular/capture.js';
import { checkModuleContract, type Module } from '../../passes/modular/contract.js';
import type { ModuleRequest } from '../../passes/modular/index.js';
import { spanName } from '../../passes/modular/span.js';
import { describeInputs } from '../analysis/inputs.js';
import { CONTEXT_NOT_ASKED, fitModules, type ModuleFitResult, type SpanRequest } from '../decide/fit-modules.js';
import { option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { encodeModel, saveModel } from '../onnx/file.js';
import { type DataSet, openData } from '../runtime/data.js';
import { ExitCode } from './errors.js';
import { fittableBytes, writeFitFolder } from './fit-commands.js';
import { print } from './output.js';
import { Progress } from './progress.js';

export interface ModuleFitFlags {
  layers: string;
  data: string;
  init: string;
  rank?: string;
  context?: boolean;
  samples?: number;
  batch?: number;
  threads?: number;
  output: string;
  overwrite: boolean;
  json: boolean;
}

/** `0-1,2-3` (or one layer N) as spans, each named in messages by its --layers part. */
export function parseSpans(text: string): SpanRequest[] {
  return text.split(',').map((part) => {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!match) throw new VcompileError(`--layers takes spans like 0-1 or 0-1,2-3 (0-based, inclusive), got '${text}'`);
    const start = Number(match[1]);
    const end = match[2] === undefined ? start : Number(match[2]);
    if (start > end) throw new VcompileError(`--layers ${part.trim()}: START ${start} is after END ${end}`);
    return { start, end, label: option('layers', part.trim()) };
  });
}

function parseInit(text: string, flag: string): ModuleInit {
  if (!(MODULE_INITS as readonly string[]).includes(text))
    throw new VcompileError(`${flag} must be ${MODULE_INITS.join(' or ')}, got '${text}'`);
  return text as ModuleInit;
}

function parseRank(text: string | undefined): number | undefined {
  if (text === undefined || text === 'full') return undefined;
  const rank = Number(text);
  if (!Number.isSafeInteger(rank) || rank < 1) throw new VcompileError(`--rank must be a positive integer or full, got '${text}'`);
  return rank;
}

/** Fit with a progress bar (per span) on stderr. */
async function runModuleFit(
  file: string,
  bytes: Uint8Array,
  data: DataSet,
  options: Parameters<typeof fitModules>[3],
  showProgress: boolean,
): Promise<ModuleFitResult> {
  const progress = new Progress('fit', showProgress && process.stderr.isTTY === true);
  try {
    return await fitModules(file, bytes, data, {
      ...options,
      onProgress: (e) => {
        progress.relabel(`fit ${e.span} ${e.stage}`);
        progress.update(e.done, e.total);
      },
    });
  } finally {
    progress.finish();
  }
}

export async function moduleFitCommand(file: string, flags: ModuleFitFlags): Promise<number> {
  const spans = parseSpans(flags.layers);
  const init = parseInit(flags.init, '--init');
  const rank = parseRank(flags.rank);
  const batchSize = flags.batch ?? 8;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new VcompileError(`--batch must be a positive integer, got ${flags.batch}`);
  if (flags.samples !== undefined && !(Number.isSafeInteger(flags.samples) && flags.samples >= 1))
    throw new VcompileError(`--samples must be a positive integer, got ${flags.samples}`);
  const { bytes, model } = fittableBytes(file);
  const data = openData(flags.data, describeInputs(model), { samples: flags.samples });
  const folder = spans.length > 1;
  refuseOutput(flags.output, folder, [file, flags.data]);
  const result = await runModuleFit(
    file,
    bytes,
    data,
    { spans, init, rank, context: flags.context, batchSize, threads: flags.threads },
    !flags.json,
  );
  const written = folder ? writeFolder(flags.output, result) : [writeOne(flags.output, [...result.modules.values()][0], file, flags)];
  const report = { output: flags.output, modules: written, ...moduleFitSummary(result) };
  print(flags.json ? JSON.stringify(report, null, 2) : formatModuleFit(result, written));
  return ExitCode.ok;
}

/** fit.json: per span what each variant gave and which was kept, and how the modules came about. */
export function moduleFitSummary(r: ModuleFitResult): object {
  return { init: r.init, model: r.modelSha256, data: r.dataSha256, spans: r.spans };
}

/** -o names a file for one span, a folder for several; it must not be (or hold) what the fit reads. */
function refuseOutput(output: string, folder: boolean, reads: string[]): void {
  const isDirectory = fs.existsSync(output) && fs.statSync(output).isDirectory();
  if (!folder && isDirectory)
    throw new VcompileError(`-o ${output} is a folder; one span writes one module file (several spans write a folder)`);
  if (folder && fs.existsSync(output) && !isDirectory)
    throw new VcompileError(`-o ${output} is a file; several spans write a folder of modules (OUT/L{S}-{E}.onnx)`);
  for (const file of reads) {
    const full = path.resolve(file);
    const clash = folder
      ? path.dirname(full) === path.resolve(output) && /^L\d+-\d+\.onnx$|^fit\.json$/.test(path.basename(full))
      : full === path.resolve(output);
    if (clash) throw new VcompileError(`-o ${output}: writing there would overwrite ${file}, which the fit reads`);
  }
}

function writeOne(output: string, module: Model, input: string, flags: ModuleFitFlags): string {
  saveModel(module, output, { externalData: 'never', protect: [input], overwrite: flags.overwrite });
  return output;
}

/** The modules as DIR/L{S}-{E}.onnx and DIR/fit.json, all or nothing. */
function writeFolder(dir: string, r: ModuleFitResult): string[] {
  return writeFitFolder(dir, [...r.modules], moduleFitSummary(r));
}

export function formatModuleFit(r: ModuleFitResult, written: string[]): string {
  const header = ['layers', 'drop', r.init, 'map', 'refit', 'context', 'chosen', 'lambda map', 'lambda refit', 'tokens', 'seconds'];
  const rows = r.spans.map((s) => [
    `${s.start}-${s.end}`,
    s.heldOut.identity.toFixed(4),
    s.heldOut.init.toFixed(4),
    s.heldOut.map.toFixed(4),
    s.heldOut.refit.toFixed(4),
    s.heldOut.context?.toFixed(4) ?? '-',
    s.chosen === 'init' ? r.init : s.chosen,
    s.lambda.map.toExponential(1),
    s.lambda.refit.toExponential(1),
    String(s.tokens),
    s.seconds.toFixed(1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const lines = [`fitted modules from ${r.init} (held-out squared error of the module's output against the span's, over its variance)`];
  for (const row of [header, ...rows])
    lines.push(
      row
        .map((c, i) => c.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    );
  for (const s of r.spans) {
    if (s.chosen === 'context' && 'keep' in s.context)
      lines.push(
        `${spanName(s.start, s.end)}: context maps add ${s.context.macs.perPosition.toLocaleString('en-US')} MACs per position and ${s.context.macs.perSequence.toLocaleString('en-US')} per sequence to the module's layer`,
      );
    else if ('skipped' in s.context && s.context.skipped !== CONTEXT_NOT_ASKED)
      lines.push(`${spanName(s.start, s.end)}: no context maps: ${s.context.skipped}`);
  }
  for (const s of r.spans.filter((s) => s.addedBias))
    lines.push(`${spanName(s.start, s.end)}: the feed-forward output projection had no bias; the module adds the fitted one`);
  lines.push(`wrote ${written.join(', ')}`);
  return lines.join('\n');
}

// ------------------------------------------------------------------------------------------ builtin:fit

const FIT_MODULE = /^builtin:fit(?::(.*))?$/;

/** Whether a --module request asks for a fitted module (`builtin:fit[:INIT]`). */
export function isFitModule(source: string): boolean {
  return FIT_MODULE.test(source);
}

/** Fitted modules for a compile: the requests as the modular pass takes them, and the modules. */
export interface FittedModules {
  requests: ModuleRequest[];
  loaded: Map<string, Module>;
  fittedSamples: number;
  summary: object;
}

/**
 * Fit every `--module S-E=builtin:fit[:INIT]` request on `model` (the model as the compile has it before
 * modules go in), in sequence, from the first samples of the data: --samples N of them, or 80%, so that
 * the check after the compile runs on samples the fit has not seen. A fit covers every module of the
 * compile: other --module values beside it are refused.
 */
export async function fitModulesForCompile(
  file: string,
  model: Model,
  requests: readonly ModuleRequest[],
  flags: { data?: string; samples?: number; batch?: string; context?: boolean; json: boolean },
): Promise<FittedModules> {
  const fits = requests.filter((r) => isFitModule(r.source));
  const other = requests.find((r) => !isFitModule(r.source));
  if (other)
    throw new VcompileError(
      `--module ${other.start}-${other.end}=${other.source}: --module builtin:fit fits every module of the compile in sequence: give no other --module beside it`,
    );
  const inits = fits.map((r) => {
    const match = FIT_MODULE.exec(r.source)!;
    return parseInit(match[1] ?? 'keep-first', `--module ${r.start}-${r.end}=${r.source}: INIT`);
  });
  if (inits.some((i) => i !== inits[0]))
    throw new VcompileError('--module builtin:fit: give every fitted span the same INIT (builtin:fit:keep-first or builtin:fit:average)');
  if (!flags.data)
    throw new VcompileError(`--module ${fits[0].start}-${fits[0].end}=${fits[0].source} needs --data PATH (the calibration inputs)`);
  const specs = describeInputs(model);
  const all = openData(flags.data, specs).size;
  const fitted = flags.samples ?? Math.floor(all * 0.8);
  if (!Number.isSafeInteger(fitted) || fitted < 1) throw new VcompileError(`--samples must be a positive integer, got ${flags.samples}`);
  if (fitted >= all)
    throw new VcompileError(
      `${flags.data}: ${all} samples leave none for the check after the fit (--samples ${fitted}): give more data or a smaller --samples, or --no-verify`,
    );
  const data = openData(flags.data, specs, { samples: fitted });
  const batch = flags.batch === undefined ? 8 : Number(flags.batch);
  if (!Number.isSafeInteger(batch) || batch < 1) throw new VcompileError(`--batch must be a positive integer, got ${flags.batch}`);
  const spans = fits.map((r) => ({ start: r.start, end: r.end, label: option('modules', `${r.start}-${r.end}=${r.source}`) }));
  const bytes = encodeModel(model);
  const result = await runModuleFit(file, bytes, data, { spans, init: inits[0], context: flags.context, batchSize: batch }, !flags.json);
  const loaded = new Map<string, Module>();
  const placed = fits.map((r) => {
    const source = `${r.source}@L${r.start}-${r.end}`;
    const module = result.modules.get(`L${r.start}-${r.end}`)!;
    loaded.set(source, checkModuleContract(module, source, sha256(encodeModel(module))));
    return { start: r.start, end: r.end, source, label: r.label };
  });
  return { requests: placed, loaded, fittedSamples: fitted, summary: { samples: fitted, ...moduleFitSummary(result) } };
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
