// Command handlers of the modular pass (wired into main.ts by the CLI):
//   vcompile MODEL --module START-END=m.onnx [--module ...] -o OUT      compileModulesCommand
//   vcompile extract MODEL --layers START-END -o m.onnx                 extractCommand
//   vcompile MODEL --target-speedup R --modules DIR -o OUT              assembleCommand
//   vcompile MODEL --target-speedup R --fit-modules --data PATH -o OUT  assembleCommand (modules fitted from data)
// Each checks everything before writing; problems are one-line VcompileErrors (exit 2) and leave no file.
import { extractModule } from '../../passes/modular/extract.js';
import { BUILTIN_MODULES, describeModules, type ModularReport, type ModuleRequest } from '../../passes/modular/index.js';
import { spanName } from '../../passes/modular/span.js';
import type { Pass } from '../../passes/pipeline.js';
import { analyzeTransformer, formatCount } from '../analysis/index.js';
import { describeInputs } from '../analysis/inputs.js';
import { sequenceLimit } from '../analysis/limits.js';
import { modularPass } from '../compile/passes.js';
import { type AssembleOptions, type AssembleResult, assemble, describePlan } from '../decide/assemble.js';
import { assembleFitted } from '../decide/assemble-fitted.js';
import { VcompileError } from '../errors.js';
import { assertValid } from '../ir/verify.js';
import { checkSave, externalDataFiles, loadModel, type ProtectedFile, type SaveOptions, saveModel, saveModelAsync } from '../onnx/file.js';
import { openData } from '../runtime/data.js';
import { ExitCode } from './errors.js';
import { dataReads, inputReads, moduleFolderReads, moduleReads } from './files.js';
import { fittableBytes } from './fit-commands.js';
import { describeRemoved, print, requireValid } from './output.js';
import { beforeWriting } from './signals.js';

/** Where and how the compiled model is written (the flags `vcompile MODEL -o OUT` already has). */
export interface WriteFlags {
  output: string;
  externalData: 'auto' | 'always' | 'never';
  dataLocation?: string;
  sizeThreshold: number;
  overwrite: boolean;
  verifyIr: boolean;
  json: boolean;
}

/** `--module` values (repeatable) as requests; malformed values are refused. */
export function parseModuleFlags(values: readonly string[]): ModuleRequest[] {
  return values.map(parseModuleSpec);
}

/** `2-3=m.onnx`, `5=builtin:average` (one layer): the value of a --module flag. */
export function parseModuleSpec(text: string): ModuleRequest {
  const match = /^(\d+)(?:-(\d+))?=(.+)$/.exec(text.trim());
  if (!match)
    throw new VcompileError(
      `--module ${text}: expected START-END=FILE or START-END=builtin:${BUILTIN_MODULES.join('|')} (layers 0-based, inclusive)`,
    );
  const start = Number(match[1]);
  const end = match[2] === undefined ? start : Number(match[2]);
  if (start > end) throw new VcompileError(`--module ${text}: START ${start} is after END ${end}`);
  return { start, end, source: match[3] };
}

/** The modular pass for `--module` values, to run before the plugin pass in `vcompile MODEL -o OUT`. */
export function modulesPassFromFlags(values: readonly string[]): Pass<ModularReport> {
  return modularPass({ modules: parseModuleFlags(values) });
}

/** `vcompile MODEL --module START-END=SOURCE ... -o OUT`. */
export function compileModulesCommand(file: string, modules: readonly string[], flags: WriteFlags): number {
  if (modules.length === 0) throw new VcompileError('give at least one --module START-END=FILE');
  const pass = modulesPassFromFlags(modules);
  const model = loadModel(file);
  if (flags.verifyIr) requireValid(model, file);
  const inputData = externalDataFiles(model);
  const save = saveOptions(flags, [...inputReads(file, inputData), ...moduleReads(parseModuleFlags(modules).map((m) => m.source))]);
  checkSave(model, flags.output, save);
  const { report, ...result } = pass.run(model);
  if (flags.verifyIr) assertValid(result.model, pass.name);
  beforeWriting();
  const written = saveModel(result.model, flags.output, save);
  const passes = [{ name: pass.name, modified: result.modified, report, summary: result.summary }];
  const summary = { input: file, output: flags.output, bytes: written.bytes, externalData: written.externalFile ?? null, passes };
  print(
    flags.json
      ? JSON.stringify(summary, null, 2)
      : [
          ...describeModules(report),
          `wrote ${flags.output} (${written.bytes} bytes)${describeRemoved(written.removed, file, inputData)}`,
        ].join('\n'),
  );
  return ExitCode.ok;
}

export interface ExtractFlags {
  /** START-END, 0-based inclusive (or one layer N) */
  layers: string;
  output: string;
  overwrite: boolean;
  json: boolean;
}

/** `vcompile extract MODEL --layers START-END -o m.onnx`: a standalone module under the contract. */
export function extractCommand(file: string, flags: ExtractFlags): number {
  const match = /^(\d+)(?:-(\d+))?$/.exec(flags.layers.trim());
  if (!match) throw new VcompileError(`--layers ${flags.layers}: expected START-END (0-based, inclusive), e.g. 2-3`);
  const start = Number(match[1]);
  const end = match[2] === undefined ? start : Number(match[2]);
  const model = loadModel(file);
  const inputData = externalDataFiles(model);
  const save: SaveOptions = { externalData: 'auto', protect: inputReads(file, inputData), overwrite: flags.overwrite };
  const { module, bias } = extractModule(model, start, end, analyzeTransformer(model));
  beforeWriting();
  const written = saveModel(module, flags.output, save);
  const report = {
    input: file,
    output: flags.output,
    layers: { start, end },
    span: end - start + 1,
    inputs: module.graph.inputs.filter((v) => !v.initializer).map((v) => v.name),
    attentionBias: bias?.name ?? null,
    bytes: written.bytes,
  };
  const biasNote = bias ? `, attention_bias <- ${bias.name}` : ', no attention_bias';
  print(
    flags.json
      ? JSON.stringify(report, null, 2)
      : `wrote ${flags.output}: ${spanName(start, end)} of ${file} as a module (vcompile.span ${end - start + 1}, vcompile.start ${start}${biasNote}; ${written.bytes} bytes)${describeRemoved(written.removed, file, inputData)}`,
  );
  return ExitCode.ok;
}

export interface AssembleFlags extends WriteFlags {
  /** folder of module files (or `fit`) */
  modules?: string;
  /** fit the candidate modules from data instead (--fit-modules --data PATH [--samples N] [--batch B]) */
  fit?: { data: string; samples?: number; batch?: string; context?: boolean };
  targetSpeedup: number;
  /** where MACs are counted and the quick timing runs (seq: default 128, or the position table's length) */
  batch: number;
  seq?: number;
  /** seeded inputs for the cosine tie-break */
  seeds: number;
  /** timed runs per model in the quick timing (0 skips it) */
  timingRuns: number;
  threads?: number;
}

/** `vcompile MODEL --target-speedup R --modules DIR -o OUT`: prints the plan, then writes. */
export async function assembleCommand(file: string, flags: AssembleFlags): Promise<number> {
  for (const [name, value, min] of [
    ['--batch', flags.batch, 1],
    ['--speedup-seq', flags.seq ?? 1, 1],
    ['--seeds', flags.seeds, 1],
    ['--timing-runs', flags.timingRuns, 0],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < min) throw new VcompileError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  // OUT is checked against the files the assembler will read before it spends time measuring.
  const input = loadModel(file);
  const inputData = externalDataFiles(input);
  const save = saveOptions(flags, [
    ...inputReads(file, inputData),
    ...(flags.modules ? moduleFolderReads(flags.modules) : []),
    ...(flags.fit ? dataReads(flags.fit.data) : []),
  ]);
  checkSave(input, flags.output, save);
  const progress = flags.json ? undefined : (line: string) => process.stderr.write(`vcompile: ${line}\n`);
  const options = {
    target: flags.targetSpeedup,
    batch: flags.batch,
    seq: flags.seq ?? Math.min(128, sequenceLimit(input)?.max ?? 128),
    seeds: flags.seeds,
    timingRuns: flags.timingRuns,
    threads: flags.threads,
    onProgress: progress,
  };
  const result = flags.fit
    ? await assembleFromData(file, flags.fit, options)
    : await assemble(file, { ...options, modulesDir: flags.modules });
  if (flags.verifyIr) requireValid(result.model, 'the assembled model');
  const summary = planSummary(result, flags.targetSpeedup);
  if (!flags.json) print(formatPlan(summary));
  beforeWriting();
  const written = await saveModelAsync(result.model, flags.output, save);
  if (flags.json)
    print(
      JSON.stringify(
        {
          input: file,
          output: flags.output,
          bytes: written.bytes,
          ...summary,
          passes: [{ name: 'modules', modified: true, report: result.passReport }],
        },
        null,
        2,
      ),
    );
  else print(`wrote ${flags.output} (${written.bytes} bytes)${describeRemoved(written.removed, file, inputData)}`);
  return ExitCode.ok;
}

/** --fit-modules: the candidates fitted on the data (--samples N of it, default all), chosen on held-out samples. */
async function assembleFromData(
  file: string,
  fit: NonNullable<AssembleFlags['fit']>,
  options: Omit<AssembleOptions, 'modulesDir'>,
): Promise<AssembleResult & { fits?: object }> {
  const batchSize = fit.batch === undefined ? 8 : Number(fit.batch);
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new VcompileError(`--batch must be a positive integer, got ${fit.batch}`);
  if (fit.samples !== undefined && !(Number.isSafeInteger(fit.samples) && fit.samples >= 1))
    throw new VcompileError(`--samples must be a positive integer, got ${fit.samples}`);
  const { bytes, model } = fittableBytes(file);
  const data = openData(fit.data, describeInputs(model), { samples: fit.samples });
  return assembleFitted(file, bytes, data, { ...options, batchSize, context: fit.context });
}

interface PlanSummary {
  target: number;
  batch: number;
  seq: number;
  plan: { layers: string; start: number; end: number; module: string; startFrom: string; removedMacs: number; moduleMacs: number }[];
  layersReplaced: number;
  macsBefore: number;
  macsAfter: number;
  predictedSpeedup: number;
  measuredSpeedup: number | null;
  timing: {
    runs: number;
    originalMs: number;
    compiledMs: number;
    speedupIqr: [number, number];
    cpuSpeedup: number;
    unreliable: string | null;
  } | null;
  cosine: number;
  tiedPlans: { plan: string; cosine: number; fidelity: number; predictedSpeedup: number }[];
  tiedTruncated: boolean;
  /** what tied plans were ranked by */
  fidelity: { metric: string; value: number };
  refitted?: { before: number; after: number };
  fits?: object;
}

function planSummary(r: AssembleResult & { fits?: object }, target: number): PlanSummary {
  return {
    target,
    batch: r.at.batch,
    seq: r.at.seq,
    plan: r.chosen.candidates.map((c) => ({
      layers: `${c.start}-${c.end}`,
      start: c.start,
      end: c.end,
      module: c.file,
      startFrom: c.startFrom,
      removedMacs: c.removedMacs,
      moduleMacs: c.moduleMacs,
    })),
    layersReplaced: r.chosen.layers,
    macsBefore: r.macsBefore,
    macsAfter: r.macsMeasured,
    predictedSpeedup: r.chosen.speedup,
    measuredSpeedup: r.timing?.speedup ?? null,
    timing: r.timing
      ? {
          runs: r.timing.runs,
          originalMs: r.timing.originalMs,
          compiledMs: r.timing.compiledMs,
          speedupIqr: r.timing.speedupIqr,
          cpuSpeedup: r.timing.cpuSpeedup,
          unreliable: r.timing.unreliable,
        }
      : null,
    cosine: r.chosen.cosine,
    tiedPlans: r.tied.map((t) => ({
      plan: describePlan(t.candidates),
      cosine: t.cosine,
      fidelity: t.fidelity,
      predictedSpeedup: t.speedup,
    })),
    tiedTruncated: r.tiedTruncated,
    fidelity: { metric: r.metric, value: r.chosen.fidelity },
    ...(r.refitted ? { refitted: r.refitted } : {}),
    ...(r.fits ? { fits: r.fits } : {}),
  };
}

function formatPlan(s: PlanSummary): string {
  const g = (macs: number) => `${formatCount(macs)}MACs`;
  const lines = [
    `plan for a ${s.target}x MACs speed-up (MACs at batch ${s.batch}, seq ${s.seq}): ${s.layersReplaced} original layer${s.layersReplaced === 1 ? '' : 's'} replaced`,
  ];
  for (const p of s.plan) {
    lines.push(
      `  ${spanName(p.start, p.end)} <- ${p.module} (layers from ${p.startFrom}): removes ${g(p.removedMacs)}, adds ${g(p.moduleMacs)}`,
    );
  }
  lines.push(`MACs ${g(s.macsBefore)} -> ${g(s.macsAfter)}: predicted speed-up ${s.predictedSpeedup.toFixed(3)}x`);
  if (s.timing) {
    const t = s.timing;
    lines.push(
      `measured speed-up ${s.measuredSpeedup!.toFixed(3)}x (median of ${t.runs} paired round${t.runs === 1 ? '' : 's'}, IQR ${t.speedupIqr[0].toFixed(3)}-${t.speedupIqr[1].toFixed(3)}, ` +
        `CPU ${t.cpuSpeedup.toFixed(3)}x; ${t.originalMs.toFixed(1)} ms -> ${t.compiledMs.toFixed(1)} ms)${t.unreliable ? `: unreliable, ${t.unreliable}` : ''}`,
    );
  }
  if (s.fidelity.metric === 'cosine') {
    lines.push(`output cosine vs the original: ${s.cosine.toFixed(6)} (smallest over the seeded inputs, batch 1, seq ${s.seq})`);
  } else {
    lines.push(`${s.fidelity.metric} with the original: ${s.fidelity.value.toFixed(6)} (output cosine ${s.cosine.toFixed(6)})`);
  }
  if (s.refitted) lines.push(`the chosen spans refitted in sequence: ${s.refitted.before.toFixed(6)} -> ${s.refitted.after.toFixed(6)}`);
  if (s.tiedPlans.length > 1) {
    const what = s.fidelity.metric === 'cosine' ? 'cosine' : s.fidelity.metric.replace(/ on .*/, '');
    lines.push(`${s.tiedPlans.length}${s.tiedTruncated ? '+' : ''} plans tie on ${s.layersReplaced} layers; the highest ${what} wins:`);
    for (const t of s.tiedPlans) lines.push(`  ${t.plan}: ${what} ${t.fidelity.toFixed(6)}, predicted ${t.predictedSpeedup.toFixed(3)}x`);
  }
  return lines.join('\n');
}

/** How the write flags save, protecting `reads` (the files the command reads). */
function saveOptions(flags: WriteFlags, reads: ProtectedFile[]): SaveOptions {
  return {
    externalData: flags.externalData,
    location: flags.dataLocation,
    sizeThreshold: flags.sizeThreshold,
    protect: reads,
    overwrite: flags.overwrite,
  };
}
