// Command handlers of the modular pass (wired into main.ts by the CLI):
//   vcompile MODEL --module START-END=m.onnx [--module ...] -o OUT      compileModulesCommand
//   vcompile extract MODEL --layers START-END -o m.onnx                 extractCommand
//   vcompile MODEL --target-speedup R --modules DIR -o OUT              assembleCommand
// Each checks everything before writing; problems are one-line VcompileErrors (exit 2) and leave no file.
import { extractModule } from '../../passes/modular/extract.js';
import { BUILTIN_MODULES, describeModules, type ModularReport, type ModuleRequest } from '../../passes/modular/index.js';
import { spanName } from '../../passes/modular/span.js';
import type { Pass } from '../../passes/pipeline.js';
import { analyzeTransformer, formatCount } from '../analysis/index.js';
import { modularPass } from '../compile/passes.js';
import { assemble, describePlan } from '../decide/assemble.js';
import { VcompileError } from '../errors.js';
import { assertValid } from '../ir/verify.js';
import { loadModel, saveModel } from '../onnx/file.js';
import { ExitCode } from './errors.js';
import { print, requireValid } from './output.js';

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
  const { report, ...result } = pass.run(model);
  if (flags.verifyIr) assertValid(result.model, pass.name);
  const written = write(result.model, file, flags);
  const passes = [{ name: pass.name, modified: result.modified, report, summary: result.summary }];
  const summary = { input: file, output: flags.output, bytes: written.bytes, externalData: written.externalFile ?? null, passes };
  print(
    flags.json
      ? JSON.stringify(summary, null, 2)
      : [...describeModules(report), `wrote ${flags.output} (${written.bytes} bytes)`].join('\n'),
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
  print(
    flags.json
      ? JSON.stringify(report, null, 2)
      : `wrote ${flags.output}: ${spanName(start, end)} of ${file} as a module (vcompile.span ${end - start + 1}, vcompile.start ${start}${biasNote}; ${written.bytes} bytes)`,
  );
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
  for (const [name, value, min] of [
    ['--batch', flags.batch, 1],
    ['--seq', flags.seq, 1],
    ['--seeds', flags.seeds, 1],
    ['--timing-runs', flags.timingRuns, 0],
  ] as const) {
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
  timing: {
    runs: number;
    originalMs: number;
    compiledMs: number;
    speedupIqr: [number, number];
    cpuSpeedup: number;
    unreliable: string | null;
  } | null;
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
    tiedPlans: r.tied.map((t) => ({ plan: describePlan(t.candidates), cosine: t.cosine, predictedSpeedup: t.speedup })),
    tiedTruncated: r.tiedTruncated,
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
