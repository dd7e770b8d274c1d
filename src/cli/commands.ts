// What each CLI command does, on top of the library. Output goes to stdout; --json prints one object.
import { deadCodePass } from '../../passes/dce/index.js';
import { type Pass, runPasses } from '../../passes/pipeline.js';
import type { PluginPassOptions, PluginRequest } from '../../passes/plugin/index.js';
import { describeLayers, formatLayerTable } from '../analysis/index.js';
import { checkDimNames, describeInputs } from '../analysis/inputs.js';
import { pluginPass, switchablePass } from '../compile/passes.js';
import { VcompileError } from '../errors.js';
import { formatSummary, summarize } from '../inspect/summary.js';
import { checkSave, externalDataFiles, keepOriginal, loadModel, type SaveOptions, saveModelAsync } from '../onnx/file.js';
import { ExitCode } from './errors.js';
import { inputReads, moduleReads, pluginReads } from './files.js';
import { modulesPassFromFlags, parseModuleFlags } from './modular-commands.js';
import { describeRemoved, print, requireValid } from './output.js';
import { type CompileVerifyFlags, compiledFailure, describeVerify, parseDims, verifyCompiled } from './runtime-commands.js';
import { beforeWriting } from './signals.js';

export function inspectFile(file: string, options: { json: boolean; layers: boolean; seq: number; batch: number }): number {
  const model = loadModel(file);
  const summary = summarize(model);
  const layers = options.layers
    ? describeLayers(model, { seq: positive(options.seq, '--seq'), batch: positive(options.batch, '--batch') })
    : undefined;
  if (options.json) {
    print(JSON.stringify({ file, ...summary, ...(layers ? { transformer: layers } : {}) }, null, 2));
  } else {
    print(formatSummary(summary, file) + (layers ? `\n\n${formatLayerTable(layers)}` : ''));
  }
  return ExitCode.ok;
}

function positive(value: number, flag: string): number {
  if (!Number.isInteger(value) || value < 1) throw new VcompileError(`${flag} must be a positive integer, got ${value}`);
  return value;
}

export interface CompileOptions {
  output: string;
  externalData: 'auto' | 'always' | 'never';
  dataLocation?: string;
  sizeThreshold: number;
  overwrite: boolean;
  eliminateDeadCode: boolean;
  verifyIr: boolean;
  json: boolean;
  /** check the written model against MODEL on ONNX Runtime; undefined with --no-verify */
  verify?: CompileVerifyFlags;
  /** --plugin values: FILE, builtin:KIND:K[:SCOPE], or L=FILE for layer L */
  plugins: string[];
  /** --layers, e.g. "2-9" or "0,3,5-7" */
  layers?: string;
  /** --compress-causal, same syntax */
  compressCausal?: string;
  switchable: boolean;
  defaultRatio?: number;
  /** --module values: START-END=FILE or START-END=builtin:keep-first|average */
  modules: string[];
}

/**
 * The passes a compile runs, from its flags, in order: modules, then plugins (on the layers that remain,
 * counted as the input model counts them: the modular pass passes its layer map on), then dead-code
 * elimination.
 */
function compilePasses(options: CompileOptions): Pass[] {
  if (options.defaultRatio !== undefined && !options.switchable) throw new VcompileError('--default-ratio goes with --switchable');
  if (options.switchable && !options.plugins.length) throw new VcompileError('--switchable needs at least one --plugin');
  const passes: Pass[] = [];
  if (options.modules.length) passes.push(modulesPassFromFlags(options.modules));
  if (options.plugins.length) {
    const plugins = pluginOptions(options);
    passes.push(options.switchable ? switchablePass({ ...plugins, defaultRatio: options.defaultRatio }) : pluginPass(plugins));
  }
  if (options.eliminateDeadCode) passes.push(deadCodePass);
  return passes;
}

function pluginOptions(options: CompileOptions): PluginPassOptions {
  const plugins = options.plugins.map(parsePluginFlag);
  if (!options.switchable) {
    // One plugin per layer (several only with --switchable, one per ratio).
    const seen = new Map<number, string>();
    for (const [i, p] of plugins.entries()) {
      if (p.layer === undefined) continue;
      const first = seen.get(p.layer);
      if (first !== undefined)
        throw new VcompileError(
          `--plugin ${options.plugins[i]}: layer ${p.layer} already has --plugin ${first} (one plugin per layer; --switchable takes one per ratio)`,
        );
      seen.set(p.layer, options.plugins[i]);
    }
  }
  return {
    plugins,
    layers: options.layers === undefined ? undefined : parseLayerList(options.layers, '--layers'),
    compressCausal: options.compressCausal === undefined ? undefined : parseLayerList(options.compressCausal, '--compress-causal'),
  };
}

/** `FILE`, `builtin:...`, or `L=FILE` (L a 0-based layer index). */
export function parsePluginFlag(flag: string): PluginRequest {
  const perLayer = /^(\d+)=(.+)$/.exec(flag);
  return perLayer ? { layer: Number(perLayer[1]), source: perLayer[2] } : { source: flag };
}

/** "2-9" or "0,3,5-7" as layer indices. */
export function parseLayerList(text: string, flag: string): number[] {
  const layers: number[] = [];
  for (const part of text.split(',')) {
    const range = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!range) throw new VcompileError(`${flag} takes layer indices like 2-9 or 0,3,5-7, got '${text}'`);
    const [first, last] = [Number(range[1]), Number(range[2] ?? range[1])];
    if (last < first) throw new VcompileError(`${flag}: range ${part} runs backwards`);
    for (let i = first; i <= last; i++) layers.push(i);
  }
  return [...new Set(layers)];
}

/**
 * `vcompile MODEL -o OUT`: every file the compile reads (the model, its external data, plugins, modules and
 * theirs) is protected from OUT and OUT's data file, checked before the passes run; with --overwrite the
 * original is kept (hard links) so that the check after the compile compares OUT with it.
 */
export async function compileFile(file: string, options: CompileOptions): Promise<number> {
  const passes = compilePasses(options);
  const model = loadModel(file);
  if (options.verifyIr) requireValid(model, file);
  if (options.verify?.dim) checkDimNames(describeInputs(model, { allowUnshaped: true }), parseDims(options.verify.dim), [file]);
  const inputData = externalDataFiles(model);
  const save: SaveOptions = {
    externalData: options.externalData,
    location: options.dataLocation,
    sizeThreshold: options.sizeThreshold,
    protect: [
      ...inputReads(file, inputData),
      ...pluginReads(options.plugins.map((flag) => parsePluginFlag(flag).source)),
      ...moduleReads(parseModuleFlags(options.modules).map((m) => m.source)),
    ],
    overwrite: options.overwrite,
  };
  const { replacesInput } = checkSave(model, options.output, save);
  const result = runPasses(model, passes, { verify: options.verifyIr });
  beforeWriting();
  const original = options.verify && replacesInput ? keepOriginal(file, inputData) : undefined;
  try {
    const written = await saveModelAsync(result.model, options.output, save);
    const verify = options.verify ? await verifyCompiled(original?.file ?? file, options.output, options.verify) : null;
    if (verify) verify.original = file;
    const report = {
      input: file,
      output: options.output,
      bytes: written.bytes,
      externalData: written.externalFile ?? null,
      passes: result.passes,
      verify,
    };
    print(
      options.json
        ? JSON.stringify(report, null, 2)
        : describeWrite(report) + describeRemoved(written.removed, file, inputData) + (verify ? `\n${describeVerify(verify)}` : ''),
    );
    if (verify && !verify.pass) throw compiledFailure(verify, options.output);
    return ExitCode.ok;
  } finally {
    original?.release();
  }
}

function describeWrite(report: {
  output: string;
  bytes: number;
  externalData: string | null;
  passes: { name: string; report: unknown; summary?: string }[];
}): string {
  const lines = report.passes.map((p) => `${p.name}: ${p.summary ?? JSON.stringify(p.report)}`);
  lines.push(`wrote ${report.output} (${report.bytes} bytes${report.externalData ? `, weights in ${report.externalData}` : ''})`);
  return lines.join('\n');
}
