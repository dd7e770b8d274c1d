// Command handlers of the modular pass (wired into main.ts by the CLI):
//   vcompile MODEL --module START-END=m.onnx [--module ...] -o OUT      compileModulesCommand
//   vcompile extract MODEL --layers START-END -o m.onnx                 extractCommand
//   vcompile MODEL --target-speedup R --modules DIR -o OUT              assembleCommand
// Each checks everything before writing; problems are one-line VcompileErrors (exit 2) and leave no file.
import { describePlan, assemble } from '../../passes/modular/assemble.js';
import { extractModule } from '../../passes/modular/extract.js';
import { type ModularReport, type ModuleRequest, modularPass, parseModuleSpec } from '../../passes/modular/index.js';
import { spanName } from '../../passes/modular/span.js';
import { type Pass, runPasses } from '../../passes/pipeline.js';
import { analyzeTransformer, formatCount } from '../analysis/index.js';
import { ExitCode, VcompileError } from '../errors.js';
import { loadModel, saveModel } from '../onnx/file.js';
import { verifyModel } from '../verify/ir.js';

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

/** The modular pass for `--module` values, to run before the plugin pass in `vcompile MODEL -o OUT`. */
export function modulesPassFromFlags(values: readonly string[]): Pass {
  return modularPass({ modules: parseModuleFlags(values) });
}

/** `vcompile MODEL --module START-END=SOURCE ... -o OUT`. */
export function compileModulesCommand(file: string, modules: readonly string[], flags: WriteFlags): number {
  if (modules.length === 0) throw new VcompileError('give at least one --module START-END=FILE');
  const pass = modulesPassFromFlags(modules);
  const model = loadModel(file);
  if (flags.verifyIr) requireValid(model, file);
  const result = runPasses(model, [pass], { verify: flags.verifyIr });
  const written = write(result.model, file, flags);
  const report = result.passes[0].report as unknown as ModularReport;
  const summary = { input: file, output: flags.output, bytes: written.bytes, externalData: written.externalFile ?? null, passes: result.passes };
  print(flags.json ? JSON.stringify(summary, null, 2) : [...describeModules(report), `wrote ${flags.output} (${written.bytes} bytes)`].join('\n'));
  return ExitCode.ok;
}

/** One line per placed module, the layer map, and the pass's notes. */
export function describeModules(report: ModularReport): string[] {
  const lines = report.modules.map((m) => `modules: ${spanName(m.start, m.end)} <- ${m.kind === 'file' ? m.source : `builtin:${m.kind}`}`);
  lines.push(`modules: removed ${report.removedNodes} nodes and ${report.removedInitializers} weights; output layers are ${formatLayerMap(report.layerMap)}`);
  if (report.layerMapNote) lines.push(`modules: note: ${report.layerMapNote}`);
  for (const note of report.notes) lines.push(`modules: note: ${note}`);
  return lines;
}

function formatLayerMap(map: readonly (number | null)[]): string {
  return `[${map.map((i) => (i === null ? 'module' : String(i))).join(', ')}] (original index per layer)`;
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
  const { module, bias } = extractModule(model, start, end, analyzeTransformer(model));
  const written = saveModel(module, flags.output, { externalData: 'auto', protect: [file], overwrite: flags.overwrite });
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
  print(flags.json ? JSON.stringify(report, null, 2) : `wrote ${flags.output}: ${spanName(start, end)} of ${file} as a module (vcompile.span ${end - start + 1}, vcompile.start ${start}${biasNote}; ${written.bytes} bytes)`);
  return ExitCode.ok;
}

export interface AssembleFlags extends WriteFlags {
  /** folder of module files */
  modules: string;
  targetSpeedup: number;
  /** where MACs are counted and the quick timing runs */
  batch: number;
  seq: number;
  /** seeded inputs for the cosine tie-break */
  seeds: number;
  /** timed runs per model in the quick timing (0 skips it) */
  timingRuns: number;
  threads?: number;
}

/** `vcompile MODEL --target-speedup R --modules DIR -o OUT`: prints the plan, then writes. */
export async function assembleCommand(file: string, flags: AssembleFlags): Promise<number> {
  for (const [name, value, min] of [['--batch', flags.batch, 1], ['--seq', flags.seq, 1], ['--seeds', flags.seeds, 1], ['--timing-runs', flags.timingRuns, 0]] as const) {
    if (!Number.isSafeInteger(value) || value < min) throw new VcompileError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  const progress = flags.json ? undefined : (line: string) => process.stderr.write(`vcompile: ${line}\n`);
  const result = await assemble(file, {
    modulesDir: flags.modules,
    target: flags.targetSpeedup,
    batch: flags.batch,
    seq: flags.seq,
    seeds: flags.seeds,
    timingRuns: flags.timingRuns,
    threads: flags.threads,
    onProgress: progress,
  });
  if (flags.verifyIr) requireValid(result.model, 'the assembled model');
  const summary = planSummary(result, flags.targetSpeedup);
  if (!flags.json) print(formatPlan(summary));
  const written = write(result.model, file, flags);
  if (flags.json) print(JSON.stringify({ input: file, output: flags.output, bytes: written.bytes, ...summary, passes: [{ name: 'modules', modified: true, report: result.passReport }] }, null, 2));
  else print(`wrote ${flags.output} (${written.bytes} bytes)`);
  return ExitCode.ok;
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
  timing: { runs: number; originalMs: number; compiledMs: number } | null;
  cosine: number;
  tiedPlans: { plan: string; cosine: number; predictedSpeedup: number }[];
  tiedTruncated: boolean;
}

function planSummary(r: Awaited<ReturnType<typeof assemble>>, target: number): PlanSummary {
  return {
    target,
    batch: r.at.batch,
    seq: r.at.seq,
    plan: r.chosen.candidates.map((c) => ({
      layers: `${c.start}-${c.end}`, start: c.start, end: c.end, module: c.file, startFrom: c.startFrom, removedMacs: c.removedMacs, moduleMacs: c.moduleMacs,
    })),
    layersReplaced: r.chosen.layers,
    macsBefore: r.macsBefore,
    macsAfter: r.macsMeasured,
    predictedSpeedup: r.chosen.speedup,
    measuredSpeedup: r.timing?.speedup ?? null,
    timing: r.timing ? { runs: r.timing.runs, originalMs: r.timing.originalMs, compiledMs: r.timing.compiledMs } : null,
    cosine: r.chosen.cosine,
    tiedPlans: r.tied.map((t) => ({ plan: describePlan(t.candidates), cosine: t.cosine, predictedSpeedup: t.speedup })),
    tiedTruncated: r.tiedTruncated,
  };
}

function formatPlan(s: PlanSummary): string {
  const g = (macs: number) => `${formatCount(macs)}MACs`;
  const lines = [`plan for a ${s.target}x MACs speed-up (MACs at batch ${s.batch}, seq ${s.seq}): ${s.layersReplaced} original layer${s.layersReplaced === 1 ? '' : 's'} replaced`];
  for (const p of s.plan) {
    lines.push(`  ${spanName(p.start, p.end)} <- ${p.module} (layers from ${p.startFrom}): removes ${g(p.removedMacs)}, adds ${g(p.moduleMacs)}`);
  }
  lines.push(`MACs ${g(s.macsBefore)} -> ${g(s.macsAfter)}: predicted speed-up ${s.predictedSpeedup.toFixed(3)}x`);
  if (s.timing) {
    lines.push(`measured speed-up ${s.measuredSpeedup!.toFixed(3)}x (medians of ${s.timing.runs} interleaved runs: ${s.timing.originalMs.toFixed(1)} ms -> ${s.timing.compiledMs.toFixed(1)} ms)`);
  }
  lines.push(`output cosine vs the original: ${s.cosine.toFixed(6)} (smallest over the seeded inputs, batch 1, seq ${s.seq})`);
  if (s.tiedPlans.length > 1) {
    lines.push(`${s.tiedPlans.length}${s.tiedTruncated ? '+' : ''} plans tie on ${s.layersReplaced} layers; the highest cosine wins:`);
    for (const t of s.tiedPlans) lines.push(`  ${t.plan}: cosine ${t.cosine.toFixed(6)}, predicted ${t.predictedSpeedup.toFixed(3)}x`);
  }
  return lines.join('\n');
}

function write(model: Parameters<typeof saveModel>[0], input: string, flags: WriteFlags) {
  return saveModel(model, flags.output, {
    externalData: flags.externalData,
    location: flags.dataLocation,
    sizeThreshold: flags.sizeThreshold,
    protect: [input],
    overwrite: flags.overwrite,
  });
}

function requireValid(model: Parameters<typeof verifyModel>[0], label: string): void {
  const problems = verifyModel(model);
  if (problems.length === 0) return;
  const first = problems[0];
  throw new VcompileError(`${label}: invalid graph: ${first.where}: ${first.message}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`);
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}
