// `vcompile plugin fit MODEL --data PATH --ratio K --scope S [--rank R] [--units M] -o DIR`: one fitted plugin per layer
// (DIR/L{i}.onnx) and DIR/fit.json, or nothing on any error. Also the fit behind `--plugin builtin:fit:K`.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { translateLayers } from '../../passes/common/layers.js';
import { upgradeOpset } from '../../passes/opset/index.js';
import type { PipelineContext } from '../../passes/pipeline.js';
import { SCOPES, type Scope } from '../../passes/plugin/builtin.js';
import type { FitTarget } from '../../passes/plugin/capture.js';
import { checkPluginContract, type Plugin } from '../../passes/plugin/contract.js';
import type { PluginRequest } from '../../passes/plugin/index.js';
import { analyzeTransformer } from '../analysis/index.js';
import { describeInputs } from '../analysis/inputs.js';
import { fitPlugins, type PluginFitResult } from '../decide/fit-plugins.js';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { MIN_OPSET } from '../ir/ops.js';
import { decodeModel, encodeModel, readFileOrFail, saveModel } from '../onnx/file.js';
import { type DataSet, openData } from '../runtime/data.js';
import { parseLayerList } from './commands.js';
import { ExitCode } from './errors.js';
import { print } from './output.js';
import { Progress } from './progress.js';

export interface FitFlags {
  data: string;
  ratio: number;
  scope: string;
  rank?: string;
  units?: number;
  /** --fit-target: 'block' (default) or 'stream' */
  fitTarget?: string;
  layers?: string;
  samples?: number;
  batch?: number;
  threads?: number;
  output: string;
  json: boolean;
}

/** What a fit is asked for, every flag checked before any work. */
export interface FitRequest {
  ratio: number;
  scope: Scope;
  rank?: number | 'full';
  units?: number;
  layers?: number[];
  batchSize: number;
  threads?: number;
  /** set only when given, so that a default fit's options are those of before the flag */
  target?: FitTarget;
}

export function fitRequest(flags: {
  ratio: number;
  scope: string;
  rank?: string;
  units?: number;
  fitTarget?: string;
  layers?: string;
  batch?: number;
  threads?: number;
}): FitRequest {
  if (!Number.isSafeInteger(flags.ratio) || flags.ratio < 2 || flags.ratio > 1024)
    throw new VcompileError(`--ratio must be an integer from 2 to 1024, got ${flags.ratio}`);
  if (!SCOPES.includes(flags.scope as Scope)) throw new VcompileError(`--scope must be ${SCOPES.join(', ')}, got '${flags.scope}'`);
  let rank: number | 'full' | undefined;
  if (flags.rank !== undefined) {
    rank = flags.rank === 'full' ? 'full' : Number(flags.rank);
    if (rank !== 'full' && !(Number.isSafeInteger(rank) && rank >= 1))
      throw new VcompileError(`--rank must be a positive integer or full, got '${flags.rank}'`);
  }
  const batchSize = flags.batch ?? 8;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new VcompileError(`--batch must be a positive integer, got ${flags.batch}`);
  return {
    ratio: flags.ratio,
    scope: flags.scope as Scope,
    rank,
    ...(flags.units === undefined ? {} : { units: flags.units }),
    layers: flags.layers === undefined ? undefined : parseLayerList(flags.layers, '--layers'),
    batchSize,
    threads: flags.threads,
    ...(flags.fitTarget === undefined ? {} : { target: flags.fitTarget as FitTarget }),
  };
}

/** The model's bytes at an opset plugins can be built for (upgraded in memory when older than 11). */
export function fittableBytes(file: string): { bytes: Uint8Array; model: Model } {
  const bytes = readFileOrFail(file);
  const model = decodeModel(bytes, { baseDir: path.dirname(file), label: file });
  if ((model.opsetVersion('') ?? 0) >= MIN_OPSET) return { bytes, model };
  upgradeOpset(model, MIN_OPSET);
  return { bytes: encodeModel(model), model };
}

/** Run the fit with a progress bar (per layer) on stderr. */
export async function runFit(
  file: string,
  bytes: Uint8Array,
  data: DataSet,
  request: FitRequest,
  showProgress: boolean,
): Promise<PluginFitResult> {
  const progress = new Progress('fit', showProgress && process.stderr.isTTY === true);
  try {
    return await fitPlugins(file, bytes, data, {
      ...request,
      onProgress: (e) => {
        progress.relabel(`fit layer ${e.layer} ${e.stage}`);
        progress.update(e.done, e.total);
      },
    });
  } finally {
    progress.finish();
  }
}

export async function fitCommand(file: string, flags: FitFlags): Promise<number> {
  const request = fitRequest(flags);
  const { bytes, model } = fittableBytes(file);
  if (flags.samples !== undefined && !(Number.isSafeInteger(flags.samples) && flags.samples >= 1)) {
    throw new VcompileError(`--samples must be a positive integer, got ${flags.samples}`);
  }
  const data = openData(flags.data, describeInputs(model), { samples: flags.samples });
  refuseOverlap(flags.output, [file, flags.data]);
  const result = await runFit(file, bytes, data, request, !flags.json);
  const written = writePlugins(flags.output, result);
  const report = { output: flags.output, plugins: written, ...fitSummary(result) };
  print(flags.json ? JSON.stringify(report, null, 2) : formatFit(result, written));
  return ExitCode.ok;
}

/** fit.json: per layer what was fitted and how well, and how the plugins came about. */
export function fitSummary(r: PluginFitResult): object {
  return { ratio: r.ratio, scope: r.scope, model: r.modelSha256, data: r.dataSha256, rankNote: r.rankNote ?? null, layers: r.layers };
}

/** The plugins as DIR/L{i}.onnx and DIR/fit.json, all or nothing. */
function writePlugins(dir: string, r: PluginFitResult): string[] {
  return writeFitFolder(
    dir,
    [...r.plugins].map(([layer, model]) => [`L${layer}`, model]),
    fitSummary(r),
  );
}

/** Models as DIR/NAME.onnx and the summary as DIR/fit.json, all or nothing: what was written goes on failure. */
export function writeFitFolder(dir: string, models: [string, Model][], summary: object): string[] {
  const written: string[] = [];
  try {
    fs.mkdirSync(dir, { recursive: true });
    for (const [name, model] of models) {
      const file = path.join(dir, `${name}.onnx`);
      saveModel(model, file, { externalData: 'never' });
      written.push(file);
    }
    const json = path.join(dir, 'fit.json');
    fs.writeFileSync(json, `${JSON.stringify(summary, null, 2)}\n`);
    written.push(json);
  } catch (error) {
    for (const f of written) fs.rmSync(f, { force: true });
    if (error instanceof VcompileError) throw error;
    throw new VcompileError(`-o ${dir}: ${(error as Error).message}`);
  }
  return written;
}

/** The output folder must not hold the files the fit reads. */
function refuseOverlap(dir: string, reads: string[]): void {
  const folder = path.resolve(dir);
  for (const file of reads) {
    const full = path.resolve(file);
    if (path.dirname(full) === folder && /^L\d+\.onnx$|^fit\.json$/.test(path.basename(full))) {
      throw new VcompileError(`-o ${dir}: writing there would overwrite ${file}, which the fit reads`);
    }
  }
}

function formatFit(r: PluginFitResult, written: string[]): string {
  const header = ['layer', 'unexplained: mean', 'fitted', 'x-only control', 'rank', 'units', 'lambda', 'tokens', 'seconds', ''];
  const rows = r.layers.map((l) => [
    String(l.layer),
    l.unexplained.mean.toFixed(4),
    l.unexplained.fitted.toFixed(4),
    l.unexplained.linearControl?.toFixed(4) ?? '-',
    String(l.rank),
    String(l.units.length),
    l.lambda.toExponential(1),
    String(l.tokens),
    l.seconds.toFixed(1),
    l.restore === 'mean' ? 'kept the mean restore: the fit did worse on held-out positions' : '',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const target = r.layers[0]?.target === 'stream' ? "each block's stream target" : "each block's output";
  const lines = [`fitted ${r.scope} k=${r.ratio} plugins (held-out unexplained variance of ${target})`];
  for (const row of [header, ...rows])
    lines.push(
      row
        .map((c, i) => c.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    );
  if (r.rankNote) lines.push(r.rankNote);
  lines.push(`wrote ${written.join(', ')}`);
  return lines.join('\n');
}

// ------------------------------------------------------------------------------------------ builtin:fit

/** A `--plugin builtin:fit:K[:SCOPE]` request. */
export interface FitSpec {
  source: string;
  ratio: number;
  scope: Scope;
}

/** The builtin:fit requests among --plugin values (per-layer `L=builtin:fit...` is refused: fits cover layers). */
export function fitSpecs(plugins: readonly string[]): FitSpec[] {
  const specs: FitSpec[] = [];
  for (const flag of plugins) {
    const match = /^(?:(\d+)=)?builtin:fit(?::(.*))?$/.exec(flag);
    if (!match) continue;
    if (match[1] !== undefined)
      throw new VcompileError(`--plugin ${flag}: a fitted plugin covers the selected layers; choose them with --layers`);
    const [ratioText, scope = 'ffn', ...rest] = (match[2] ?? '').split(':');
    const ratio = Number(ratioText);
    if (!Number.isSafeInteger(ratio) || ratio < 2 || ratio > 1024 || !SCOPES.includes(scope as Scope) || rest.length) {
      throw new VcompileError(`--plugin ${flag}: expected builtin:fit:K[:SCOPE] with K from 2 to 1024 and SCOPE ${SCOPES.join('|')}`);
    }
    specs.push({ source: flag, ratio, scope: scope as Scope });
  }
  if (specs.length && specs.length !== plugins.length)
    throw new VcompileError('--plugin builtin:fit fits every plugin of the compile: give no other --plugin beside it');
  return specs;
}

/** Fitted plugins for a compile: per-layer requests (as the input model numbers layers) and the plugins. */
export interface FittedPlugins {
  requests: PluginRequest[];
  plugins: Map<string, Plugin>;
  /** the samples the fit used (the first ones); the check runs on the rest */
  fittedSamples: number;
  summary: object[];
}

export interface CompileFitFlags {
  data?: string;
  samples?: number;
  batch?: string;
  rank?: string;
  units?: number;
  /** --fit-target for builtin:fit plugins */
  fitTarget?: string;
  layers?: string;
  json: boolean;
  /** the check after the compile (undefined with --no-verify: then the fit may use every sample) */
  verify?: unknown;
}

/**
 * Fit each builtin:fit request on `model` (the model as the compile has it when plugins go in: after modules)
 * from the first samples of the data: --samples N of them, or 80% (all with --no-verify), so that the check
 * after the compile runs on samples the fit has not seen.
 */
export async function fitForCompile(
  file: string,
  model: Model,
  context: PipelineContext,
  specs: FitSpec[],
  flags: CompileFitFlags,
): Promise<FittedPlugins> {
  if (!flags.data) throw new VcompileError('--plugin builtin:fit needs --data PATH (the calibration inputs)');
  const specsOfInputs = describeInputs(model);
  const all = openData(flags.data, specsOfInputs).size;
  const checked = flags.verify !== undefined;
  const fitted = flags.samples ?? (checked ? Math.floor(all * 0.8) : all);
  if (!Number.isSafeInteger(fitted) || fitted < 1) throw new VcompileError(`--samples must be a positive integer, got ${flags.samples}`);
  if (checked && fitted >= all)
    throw new VcompileError(
      `${flags.data}: ${all} samples leave none for the check after the fit (--samples ${fitted}): give more data or a smaller --samples, or --no-verify`,
    );
  const data = openData(flags.data, specsOfInputs, { samples: fitted });
  const batch = flags.batch === undefined ? undefined : Number(flags.batch);
  const layerMap = context.layerMap;
  const toCurrent = (layers: number[]) => (layerMap ? translateLayers(layerMap, layers, 'layers') : layers);
  const layers = flags.layers === undefined ? remainingLayers(model, layerMap) : toCurrent(parseLayerList(flags.layers, '--layers'));
  const bytes = encodeModel(model);
  const requests: PluginRequest[] = [];
  const plugins = new Map<string, Plugin>();
  const summary: object[] = [];
  for (const spec of specs) {
    const request = fitRequest({
      ratio: spec.ratio,
      scope: spec.scope,
      rank: flags.rank,
      units: flags.units,
      fitTarget: flags.fitTarget,
      batch,
    });
    const result = await runFit(file, bytes, data, { ...request, layers }, !flags.json);
    for (const [layer, plugin] of result.plugins) {
      const source = `${spec.source}:L${layerMap ? layerMap[layer] : layer}`;
      plugins.set(source, checkPluginContract(plugin, source, sha256(encodeModel(plugin))));
      requests.push({ layer: layerMap ? layerMap[layer]! : layer, source });
    }
    summary.push({ plugin: spec.source, samples: fitted, ...fitSummary(result) });
  }
  return { requests, plugins, fittedSamples: fitted, summary };
}

/**
 * After modules, the layers plugins may go on by default: those that remain from the input model (not a
 * module), whose self-attention is not causal; undefined (every non-causal layer) without modules.
 */
function remainingLayers(model: Model, layerMap: PipelineContext['layerMap']): number[] | undefined {
  if (!layerMap) return undefined;
  const layers = analyzeTransformer(model)
    .layers.filter((l) => layerMap[l.index] !== null && layerMap[l.index] !== undefined && !l.selfAttention.causal)
    .map((l) => l.index);
  if (layers.length === 0)
    throw new VcompileError('--plugin builtin:fit: no layer is left to fit after the modules (every non-causal layer is inside a module)');
  return layers;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
