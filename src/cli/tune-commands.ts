// `vcompile tune MODEL --data PATH [--budget B] -o OUT [--report DIR]`: the fastest model within a fidelity
// budget (src/decide/tune.ts). OUT is written once, at the end: the chosen model, or the original when no
// candidate meets the budget (exit 0 with a note; exit 1 and nothing written with --require). The report
// folder holds frontier.json, frontier.svg and the cache a second run reuses.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SCOPES, type Scope } from '../../passes/plugin/builtin.js';
import { describeInputs } from '../analysis/inputs.js';
import { type Budget, describeBudget, formatMetric, frontierChart, lossOf, metricValue, parseBudget } from '../decide/frontier.js';
import { speedOf, type TunePoint, type TuneResult, tune } from '../decide/tune.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import { checkSave, decodeModel, externalDataFiles, loadModel, type SaveOptions, saveModelAsync } from '../onnx/file.js';
import { openData } from '../runtime/data.js';
import { parseLayerList } from './commands.js';
import { ExitCode } from './errors.js';
import { dataReads, inputReads } from './files.js';
import { fittableBytes } from './fit-commands.js';
import { print } from './output.js';
import { Progress } from './progress.js';
import { beforeWriting, interrupted } from './signals.js';

export interface TuneFlags {
  data: string;
  budget?: string;
  targetSpeedup?: number;
  batch?: number;
  seq?: number;
  timeLimit?: string;
  scopes?: string;
  ratios?: string;
  rank?: string;
  units?: number;
  profiles?: 'auto' | 'measured' | 'estimated';
  samples?: number;
  fitSamples?: number;
  runBatch?: number;
  runs?: number;
  threads?: number;
  output: string;
  report?: string;
  require: boolean;
  verifyIr: boolean;
  json: boolean;
}

export async function tuneCommand(file: string, flags: TuneFlags): Promise<number> {
  const settings = tuneSettings(flags);
  const { bytes } = fittableBytes(file);
  const model = loadModel(file);
  const data = openData(flags.data, describeInputs(model), { samples: flags.samples });
  const budget = flags.budget ? settings.budget! : data.hasLabels ? parseBudget('accuracy-drop<=0.5') : parseBudget('top1-agreement>=0.99');
  if (budget.metric === 'accuracy-drop' && !data.hasLabels)
    throw new VcompileError(
      `--budget ${describeBudget(budget)}: ${flags.data} has no labels; give labelled data or a top1-agreement or kl budget`,
    );
  const save: SaveOptions = { protect: [...inputReads(file, externalDataFiles(model)), ...dataReads(flags.data)] };
  checkSave(model, flags.output, save);
  if (flags.report) refuseReportOverlap(flags.report, [file, flags.data]);

  const result = await searchWithProgress(file, bytes, data, { ...settings, budget }, flags);
  const reportFiles = flags.report ? writeReport(flags.report, result, file) : [];
  if (!result.chosen) {
    const line = `no candidate met the budget ${describeBudget(budget)} on validation samples (closest: ${closest(result)})`;
    if (flags.require) {
      print(flags.json ? JSON.stringify(summary(result, file, null, reportFiles), null, 2) : formatTune(result, null, reportFiles));
      throw new CheckFailedError(`${line}; nothing written (--require)`);
    }
  }
  beforeWriting();
  const written = await saveModelAsync(result.model ?? decodeModel(bytes, { label: file }), flags.output, save);
  print(
    flags.json
      ? JSON.stringify(summary(result, file, flags.output, reportFiles, written.bytes), null, 2)
      : formatTune(result, flags.output, reportFiles),
  );
  if (!result.chosen)
    process.stderr.write(
      `vcompile: note: no candidate met the budget ${describeBudget(budget)} (closest: ${closest(result)}); ${flags.output} is the original model\n`,
    );
  return ExitCode.ok;
}

interface Settings {
  budget?: Budget;
  timeLimit?: number;
  scopes?: Scope[];
  ratios?: number[];
  rank?: number | 'full';
  units?: number;
}

/** Every flag checked before any work. */
function tuneSettings(flags: TuneFlags): Settings {
  const settings: Settings = {};
  if (flags.budget !== undefined) settings.budget = parseBudget(flags.budget);
  if (flags.timeLimit !== undefined) settings.timeLimit = parseDuration(flags.timeLimit);
  if (flags.scopes !== undefined) {
    const scopes = flags.scopes.split(',').map((s) => s.trim());
    const bad = scopes.find((s) => !SCOPES.includes(s as Scope));
    if (bad !== undefined) throw new VcompileError(`--scopes: '${bad}' is not a scope (${SCOPES.join(', ')})`);
    settings.scopes = scopes as Scope[];
  }
  if (flags.ratios !== undefined) {
    settings.ratios = parseLayerList(flags.ratios, '--ratios');
    if (settings.ratios.some((r) => r < 2 || r > 1024))
      throw new VcompileError(`--ratios: ratios must be from 2 to 1024, got ${flags.ratios}`);
  }
  if (flags.rank !== undefined) {
    const rank = flags.rank === 'full' ? 'full' : Number(flags.rank);
    if (rank !== 'full' && !(Number.isSafeInteger(rank) && rank >= 1))
      throw new VcompileError(`--rank must be a positive integer or full, got '${flags.rank}'`);
    settings.rank = rank;
  }
  if (flags.units !== undefined) {
    if (!(Number.isSafeInteger(flags.units) && flags.units >= 0))
      throw new VcompileError(`--units must be a whole number from 0, got ${flags.units}`);
    if (settings.scopes && !settings.scopes.includes('ffn'))
      throw new VcompileError(
        `--units: full-length units are a feed-forward block's hidden units, and --scopes ${flags.scopes} leaves out ffn`,
      );
    settings.units = flags.units;
  }
  const positive: [string, number | undefined][] = [
    ['--batch', flags.batch],
    ['--seq', flags.seq],
    ['--samples', flags.samples],
    ['--fit-samples', flags.fitSamples],
    ['--run-batch', flags.runBatch],
    ['--runs', flags.runs],
  ];
  for (const [flag, value] of positive)
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1))
      throw new VcompileError(`${flag} must be a positive integer, got ${value}`);
  if (flags.targetSpeedup !== undefined && !(flags.targetSpeedup > 1))
    throw new VcompileError(`--target-speedup must be a number above 1, got ${flags.targetSpeedup}`);
  return settings;
}

/** '90s', '20m', '1.5h' or a number of seconds. */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$/.exec(text);
  if (!match || Number(match[1]) <= 0) throw new VcompileError(`--time-limit: expected a duration such as 90s, 20m or 1h, got '${text}'`);
  return Number(match[1]) * { s: 1, m: 60, h: 3600 }[(match[2] ?? 's') as 's' | 'm' | 'h'];
}

/** The search, with a progress bar and Ctrl-C stopping it (a second Ctrl-C quits). */
async function searchWithProgress(
  file: string,
  bytes: Uint8Array,
  data: ReturnType<typeof openData>,
  settings: Settings & { budget: Budget },
  flags: TuneFlags,
): Promise<TuneResult> {
  const progress = new Progress('tune', !flags.json && process.stderr.isTTY === true);
  const controller = new AbortController();
  const onInterrupt = () => {
    if (controller.signal.aborted) interrupted('SIGINT', 130);
    controller.abort();
    progress.finish();
    process.stderr.write('vcompile: stopping the search; writing the best model so far (Ctrl-C again to quit)\n');
  };
  process.on('SIGINT', onInterrupt);
  try {
    return await tune(file, bytes, data, {
      budget: settings.budget,
      batch: flags.batch,
      seq: flags.seq,
      targetSpeedup: flags.targetSpeedup,
      scopes: settings.scopes,
      ratios: settings.ratios,
      rank: settings.rank,
      units: settings.units,
      profiles: flags.profiles,
      fitSamples: flags.fitSamples,
      batchSize: flags.runBatch,
      threads: flags.threads,
      runs: flags.runs,
      cacheDir: flags.report ? path.join(flags.report, 'cache') : undefined,
      signal: controller.signal,
      timeLimit: settings.timeLimit,
      verifyIr: flags.verifyIr,
      onProgress: (e) => {
        const best = e.best ? `, best ${e.best.speedup.toFixed(2)}x` : '';
        progress.relabel(`tune: ${e.stage}${best}`);
        progress.update(e.done, e.total);
      },
    });
  } finally {
    process.off('SIGINT', onInterrupt);
    progress.finish();
  }
}

// ------------------------------------------------------------------------------------------ report

function refuseReportOverlap(dir: string, reads: string[]): void {
  const folder = path.resolve(dir);
  for (const file of reads) {
    const full = path.resolve(file);
    if (full === folder || full.startsWith(`${folder}${path.sep}cache${path.sep}`) || full === path.join(folder, 'cache'))
      throw new VcompileError(`--report ${dir}: the tune writes there, and it holds ${file}, which the tune reads`);
    if (path.dirname(full) === folder && /^frontier\.(json|svg)$/.test(path.basename(full)))
      throw new VcompileError(`--report ${dir}: writing there would overwrite ${file}, which the tune reads`);
  }
}

function writeReport(dir: string, r: TuneResult, file: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const json = path.join(dir, 'frontier.json');
  const svg = path.join(dir, 'frontier.svg');
  const { model: _model, ...rest } = r;
  fs.writeFileSync(json, `${JSON.stringify({ model: file, ...rest }, null, 2)}\n`);
  const metric = r.budget.metric;
  const chart = r.points.map((p) => ({
    label: `${p.description}: ${speedOf(p).toFixed(2)}x, ${formatMetric(metricValue(p.validation, metric), metric)}`,
    speedup: speedOf(p),
    value: metricValue(p.validation, metric),
    measured: p.measuredSpeedup !== null,
    frontier: p.frontier,
    chosen: p === r.chosen,
  }));
  fs.writeFileSync(svg, frontierChart(chart, r.budget, `${path.basename(file)}: speed-up at batch ${r.timing.batch}, seq ${r.timing.seq}`));
  return [json, svg];
}

function summary(r: TuneResult, file: string, output: string | null, reportFiles: string[], bytes?: number): object {
  const { model: _model, ...rest } = r;
  return { input: file, output, bytes: bytes ?? null, report: reportFiles, ...rest };
}

function closest(r: TuneResult): string {
  const metric = r.budget.metric;
  const best = [...r.points].sort((a, b) => lossOf(a.validation, metric) - lossOf(b.validation, metric))[0];
  return best ? `${best.description} at ${formatMetric(metricValue(best.validation, metric), metric)}` : 'no candidate was evaluated';
}

function formatTune(r: TuneResult, output: string | null, reportFiles: string[]): string {
  const metric = r.budget.metric;
  const lines = [
    `tune: budget ${describeBudget(r.budget)} on ${r.splits.validation} validation samples (plugins fitted on ${r.splits.fit}, ${r.splits.test} kept for the test); speed-ups at batch ${r.timing.batch}, seq ${r.timing.seq}`,
  ];
  const drop = metric === 'accuracy-drop';
  const header = ['', 'configuration', 'predicted', 'measured (IQR)', ...(drop ? ['accuracy drop'] : []), 'top-1', 'KL', 'budget'];
  const sorted = [...r.points].sort((a, b) => speedOf(b) - speedOf(a));
  const rows = sorted.map((p) => [
    `${p === r.chosen ? '>' : ' '}${p.frontier ? '*' : ' '}`,
    p.description,
    `${p.predictedSpeedup.toFixed(2)}x`,
    p.measuredSpeedup === null
      ? 'not timed'
      : `${p.measuredSpeedup.toFixed(2)}x (${p.measuredIqr![0].toFixed(2)}-${p.measuredIqr![1].toFixed(2)})`,
    ...(drop ? [formatMetric(metricValue(p.validation, metric), metric)] : []),
    `${(p.validation.top1Agreement * 100).toFixed(2)}%`,
    p.validation.kl.toPrecision(3),
    p.meetsBudget ? 'within' : 'over',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  for (const row of [header, ...rows])
    lines.push(
      row
        .map((c, i) => c.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    );
  lines.push(
    `(* on the frontier, > chosen; ${r.profiles.length} single-layer profiles in the report; cache: ${r.cache.hits} reused, ${r.cache.evaluated} evaluated, ${r.cache.fitted} plugins fitted; ${r.seconds.toFixed(0)} s)`,
  );
  if (r.stopped) lines.push(`search stopped early: ${r.stopped}; the result is the best found so far`);
  lines.push(...r.notes.map((n) => `note: ${n}`));
  if (r.chosen) lines.push(describeChosen(r.chosen, metric));
  if (output) lines.push(`wrote ${output}${r.chosen ? '' : ' (the original model)'}`);
  if (reportFiles.length) lines.push(`report: ${reportFiles.join(', ')}`);
  return lines.join('\n');
}

function describeChosen(p: TunePoint, metric: Budget['metric']): string {
  const speed =
    p.measuredSpeedup === null ? `predicted ${p.predictedSpeedup.toFixed(2)}x (not timed)` : `${p.measuredSpeedup.toFixed(2)}x measured`;
  const test = p.test
    ? p.test.accuracy
      ? `; on test samples not used in tuning: accuracy ${(p.test.accuracy.original * 100).toFixed(2)}% -> ${(p.test.accuracy.rewritten * 100).toFixed(2)}%, top-1 agreement ${(p.test.top1Agreement * 100).toFixed(2)}%`
      : `; on test samples not used in tuning: top-1 agreement ${(p.test.top1Agreement * 100).toFixed(2)}%, KL ${p.test.kl.toPrecision(3)}`
    : '';
  return `chosen: ${p.description}: ${speed}, ${metric} ${formatMetric(metricValue(p.validation, metric), metric)} on validation${test}`;
}
