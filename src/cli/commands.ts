// What each CLI command does, on top of the library. Output goes to stdout; --json prints one object.
import { deadCodePass } from '../../passes/dce/index.js';
import { opsetUpgradePass } from '../../passes/opset/index.js';
import { type Pass, runPasses } from '../../passes/pipeline.js';
import type { PluginPassOptions, PluginRequest } from '../../passes/plugin/index.js';
import { describeLayers, formatLayerTable } from '../analysis/index.js';
import { requiredOpset } from '../compile/load.js';
import { modularPass, pluginPass, switchablePass } from '../compile/passes.js';
import { VcompileError } from '../errors.js';
import { describeCompiled, formatCompiled } from '../inspect/compiled.js';
import { formatSummary, summarize } from '../inspect/summary.js';
import type { Model } from '../ir/model.js';
import { MIN_OPSET } from '../ir/ops.js';
import { checkSave, externalDataFiles, keepOriginal, loadModel, type SaveOptions, saveModelAsync } from '../onnx/file.js';
import { releaseMemory } from '../runtime/memory.js';
import { ExitCode } from './errors.js';
import { dataReads, inputReads, moduleReads, pluginReads } from './files.js';
import { type FittedPlugins, fitForCompile, fitSpecs } from './fit-commands.js';
import { modulesPassFromFlags, parseModuleFlags } from './modular-commands.js';
import { type FittedModules, fitModulesForCompile, isFitModule } from './module-fit-commands.js';
import { describeRemoved, jsonNumbers, print, requireValid } from './output.js';
import { beforeWriting } from './signals.js';
import { type CheckFlags, checkCompiled, checkOptions, compiledFailure, describeCheck } from './verify-commands.js';

export function inspectFile(file: string, options: { json: boolean; layers: boolean; seq: number; batch: number }): number {
  const model = loadModel(file);
  const summary = summarize(model);
  const compiled = describeCompiled(model);
  let layers: ReturnType<typeof describeLayers> | undefined;
  let layersNote: string | undefined;
  if (options.layers) {
    try {
      layers = describeLayers(model, { seq: positive(options.seq, '--seq'), batch: positive(options.batch, '--batch') });
    } catch (error) {
      // a compiled model's wrapped blocks are not what the analysis looks for: describe the compilation instead
      if (!compiled || !(error instanceof VcompileError)) throw error;
      layersNote = `no layer table for a compiled model (${error.message}); inspect the model it was compiled from`;
    }
  }
  if (options.json) {
    const transformer = options.layers ? { transformer: layers ?? null, ...(layersNote ? { transformerNote: layersNote } : {}) } : {};
    print(JSON.stringify({ file, ...summary, ...(compiled ? { compiled } : {}), ...transformer }, null, 2));
  } else {
    const parts = [formatSummary(summary, file)];
    if (compiled) parts.push(formatCompiled(compiled));
    if (layers) parts.push(formatLayerTable(layers));
    if (layersNote) parts.push(layersNote);
    print(parts.join('\n\n'));
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
  verify?: CheckFlags;
  /** --plugin values: FILE, builtin:KIND:K[:SCOPE], or L=FILE for layer L */
  plugins: string[];
  /** --layers, e.g. "2-9" or "0,3,5-7" */
  layers?: string;
  /** --compress-causal, same syntax */
  compressCausal?: string;
  switchable: boolean;
  defaultRatio?: number;
  /** --module values: START-END=FILE, START-END=builtin:keep-first|average, or START-END=builtin:fit[:INIT] */
  modules: string[];
  /** --target-opset: upgrade the model's default-domain opset to exactly this */
  targetOpset?: number;
  /** --data / --samples / --batch: for builtin:fit plugins (and the check, in `verify`) */
  data?: string;
  samples?: number;
  batch?: string;
  /** --rank and --units for builtin:fit plugins */
  rank?: string;
  units?: number;
  /** --fit-target for builtin:fit plugins: block (default) or stream */
  fitTarget?: string;
  /** --context / --no-context for builtin:fit modules (default: context maps fitted) */
  context?: boolean;
}

/**
 * The passes a compile runs, from its flags, in order: the opset upgrade, modules (fitted ones are fitted
 * in between), then plugins (on the layers that remain, counted as the input model counts them: the modular
 * pass passes its layer map on), then dead-code elimination.
 */
function compilePasses(
  options: CompileOptions,
  modelOpset: number,
): { before: Pass[]; modules: (fitted?: FittedModules) => Pass[]; plugins: (fitted?: FittedPlugins) => Pass[] } {
  if (options.defaultRatio !== undefined && !options.switchable) throw new VcompileError('--default-ratio goes with --switchable');
  if (options.switchable && !options.plugins.length) throw new VcompileError('--switchable needs at least one --plugin');
  const before: Pass[] = [];
  const opset = upgradeFor(options, modelOpset);
  if (opset) before.push(opset);
  const modules = (fitted?: FittedModules): Pass[] => {
    if (!options.modules.length) return [];
    return [fitted ? modularPass({ modules: fitted.requests, loaded: fitted.loaded }) : modulesPassFromFlags(options.modules)];
  };
  const plugins = (fitted?: FittedPlugins): Pass[] => {
    const passes: Pass[] = [];
    if (options.plugins.length) {
      const requested = pluginOptions(options);
      const chosen = fitted ? { ...requested, plugins: fitted.requests } : requested;
      // a compile asked to compress must compress something: the pass refuses, saying why, when nothing is
      passes.push(
        options.switchable
          ? switchablePass({ ...chosen, defaultRatio: options.defaultRatio, refuseNoop: true }, fitted?.plugins)
          : pluginPass({ ...chosen, refuseNoop: true }, fitted?.plugins),
      );
    }
    if (options.eliminateDeadCode) passes.push(deadCodePass);
    return passes;
  };
  return { before, modules, plugins };
}

/**
 * The opset upgrade a compile needs: exactly --target-opset when given; else, when plugins or modules go
 * in, at least what they need (opset 11 for the plugin plumbing, and each file's own opset), leaving a
 * model that is new enough as it is.
 */
function upgradeFor(options: CompileOptions, modelOpset: number): Pass | undefined {
  if (options.targetOpset !== undefined) {
    if (!Number.isSafeInteger(options.targetOpset) || options.targetOpset < 1)
      throw new VcompileError(`--target-opset must be a positive integer, got ${options.targetOpset}`);
    return opsetUpgradePass({ target: options.targetOpset });
  }
  if (!options.plugins.length && !options.modules.length) return undefined;
  const files = [
    ...options.plugins.map((p) => parsePluginFlag(p).source).map((source) => ({ source, label: `plugin ${source}` })),
    ...parseModuleFlags(options.modules).map((m) => ({ source: m.source, label: `module ${m.source}` })),
  ];
  const fits = options.plugins.length || parseModuleFlags(options.modules).some((m) => isFitModule(m.source));
  const needed = requiredOpset(files, fits ? MIN_OPSET : 1);
  return needed > modelOpset ? opsetUpgradePass({ target: needed }) : undefined;
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
 * theirs, the data) is protected from OUT and OUT's data file, checked before the passes run; with
 * --overwrite the original is kept (hard links) so that the check after the compile compares OUT with it.
 */
export async function compileFile(file: string, options: CompileOptions): Promise<number> {
  const compiled = await compileAndWrite(file, options);
  const { check, written, passes, fitted, fittedModules, switchable, original, inputData } = compiled;
  try {
    // the models the compile held are garbage now: let them go before the check opens its sessions
    releaseMemory();
    const skipped = check && !compiled.modified ? 'no pass changed the model' : null;
    const reports = check && !skipped ? await checkCompiled(original?.file ?? file, options.output, switchable, check) : [];
    for (const r of reports) r.original = file;
    const report = {
      input: file,
      output: options.output,
      bytes: written.bytes,
      externalData: written.externalFile ?? null,
      passes,
      ...(fitted ? { fit: fitted.summary } : {}),
      ...(fittedModules ? { moduleFit: fittedModules.summary } : {}),
      verify: reports[0] ?? null,
      ...(reports.length > 1 ? { verifyRatios: reports } : {}),
      ...(skipped ? { verifySkipped: skipped } : {}),
    };
    const checkLines = skipped
      ? `verify: skipped: ${skipped} (${options.output} computes what ${file} computes)`
      : reports.length
        ? describeCheck(reports)
        : '';
    print(
      options.json
        ? JSON.stringify(report, jsonNumbers, 2)
        : describeWrite(report) + describeRemoved(written.removed, file, inputData) + (checkLines ? `\n${checkLines}` : ''),
    );
    if (reports.some((r) => !r.pass)) throw compiledFailure(reports, options.output);
    return ExitCode.ok;
  } finally {
    original?.release();
  }
}

/** Read, rewrite and write; returns what the report and the check need, and none of the models. */
async function compileAndWrite(file: string, options: CompileOptions) {
  const model = loadModel(file);
  if (options.verifyIr) requireValid(model, file);
  const stages = compilePasses(options, model.opsetVersion('') ?? 0);
  if (options.plugins.length || options.modules.length) refuseCompiled(model, file);
  let check = options.verify && checkOptions(options.verify, model, file);
  const inputData = externalDataFiles(model);
  const save: SaveOptions = {
    externalData: options.externalData,
    location: options.dataLocation,
    sizeThreshold: options.sizeThreshold,
    protect: [
      ...inputReads(file, inputData),
      ...pluginReads(options.plugins.map((flag) => parsePluginFlag(flag).source)),
      ...moduleReads(parseModuleFlags(options.modules).map((m) => m.source)),
      ...(options.data ? dataReads(options.data) : []),
    ],
    overwrite: options.overwrite,
  };
  const { replacesInput } = checkSave(model, options.output, save);
  const fits = fitSpecs(options.plugins);
  if (options.fitTarget !== undefined && !fits.length) throw new VcompileError('--fit-target goes with --plugin builtin:fit:K');
  if (options.units !== undefined && !fits.length) throw new VcompileError('--units goes with --plugin builtin:fit:K');
  const upgraded = runPasses(model, stages.before, { verify: options.verifyIr });
  // fitted modules first (on the model as it is), then fitted plugins on the layers that remain
  let fittedModules: FittedModules | undefined;
  const moduleRequests = parseModuleFlags(options.modules);
  if (options.context !== undefined && !moduleRequests.some((m) => isFitModule(m.source)))
    throw new VcompileError(`--${options.context ? '' : 'no-'}context goes with --module S-E=builtin:fit or --fit-modules`);
  if (moduleRequests.some((m) => isFitModule(m.source))) {
    fittedModules = await fitModulesForCompile(file, upgraded.model, moduleRequests, options);
    if (check?.data) check = { ...check, data: { ...check.data, samples: undefined, skip: fittedModules.fittedSamples } };
  }
  const modular = runPasses(upgraded.model, stages.modules(fittedModules), { verify: options.verifyIr, context: upgraded.context });
  const first = { ...modular, modified: upgraded.modified || modular.modified, passes: [...upgraded.passes, ...modular.passes] };
  let fitted: FittedPlugins | undefined;
  if (fits.length) {
    fitted = await fitForCompile(file, first.model, first.context, fits, options);
    if (check?.data) check = { ...check, data: { ...check.data, samples: undefined, skip: fitted.fittedSamples } };
  }
  const second = runPasses(first.model, stages.plugins(fitted), { verify: options.verifyIr, context: first.context });
  beforeWriting();
  const original = options.verify && replacesInput ? keepOriginal(file, inputData) : undefined;
  try {
    const written = await saveModelAsync(second.model, options.output, save);
    return {
      check,
      written,
      fitted,
      fittedModules,
      original,
      inputData,
      modified: first.modified || second.modified,
      passes: [...first.passes, ...second.passes],
      switchable: second.model.getMetadata('vcompile.switchable'),
    };
  } catch (error) {
    original?.release();
    throw error;
  }
}

/** A model vcompile already compressed is not compiled again: its blocks are wrapped, not what the passes look for. */
function refuseCompiled(model: Model, file: string): void {
  const applied = model.getMetadata('vcompile.plugins') ?? model.getMetadata('vcompile.switchable');
  if (applied === undefined) return;
  throw new VcompileError(
    `${file} was already compiled by vcompile (metadata vcompile.plugins: its layers carry plugins); compile the original model instead`,
  );
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
