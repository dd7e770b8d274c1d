// Paired timing of models that compute the same thing (not a test): a reference (the first model) and
// one or more contenders, on the same generated inputs. Each round runs every model once, the order
// rotating from round to round, and records each call's wall time and the process's CPU time (user +
// system of all ONNX Runtime threads; idle threads do not spin, so CPU time is the work done). Per
// contender: the median over rounds of its time over the reference's in the same round, and the
// interquartile range of those ratios; load that comes and goes hits both runs of a round alike.
//
// Sessions of the same model in one process differ by a few percent, by where their weights happen to lie
// (two sessions of one file measured 1.035 against each other, CPU, on the shared 2-core VM). So the rounds
// are spread over several worker processes (`--processes`), each loading the models in a different order,
// and the ratios of all rounds are pooled. The outputs are compared once (max abs difference against the
// reference's).
//
//   npm run build && node dist/bench/paired.js REFERENCE.onnx CONTENDER.onnx [...] [--batch 8] [--seq 256]
//       [--processes 5] [--rounds 7] [--warmup 2] [--threads N] [--json FILE]
//
// (--rounds per process.) Written for the plugin benchmarks in BENCHMARKS.md: compiled models against
// hand-written exports.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { median, percentile } from '../src/bench/latency.js';
import { loadModel } from '../src/onnx/file.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { openSession, prepareFeeds, runPrepared, type Session } from '../src/runtime/session.js';

/** One worker's samples, by model (the command line's order). */
interface WorkerResult {
  wallMs: number[][];
  cpuMs: number[][];
  /** max abs difference of each model's outputs from the reference's */
  maxAbsDiff: number[];
}

interface Options {
  models: string[];
  batch: number;
  seq: number;
  processes: number;
  rounds: number;
  warmup: number;
  threads?: number;
  json?: string;
  worker?: number;
}

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .command('$0 <models..>', 'time contenders against a reference, paired by round')
    .positional('models', { type: 'string', array: true, demandOption: true })
    .option('batch', { type: 'number', default: 8 })
    .option('seq', { type: 'number', default: 256 })
    .option('processes', { type: 'number', default: 5, describe: 'worker processes, each loading the models anew' })
    .option('rounds', { type: 'number', default: 7, describe: 'timed rounds per worker' })
    .option('warmup', { type: 'number', default: 2 })
    .option('threads', { type: 'number' })
    .option('json', { type: 'string', describe: 'also write every sample as JSON here' })
    .option('worker', { type: 'number', hidden: true, describe: 'run as worker N and print its samples as JSON' })
    .strict()
    .parseAsync();
  const options: Options = { ...args, models: args.models as string[] };
  if (options.models.length < 2) throw new Error('give a reference and at least one contender');
  if (options.worker !== undefined) {
    process.stdout.write(JSON.stringify(await work(options, options.worker)));
    return;
  }
  const before = loadAverage();
  const results: WorkerResult[] = [];
  for (let p = 0; p < options.processes; p++) {
    const argv = [fileURLToPath(import.meta.url), ...options.models, ...forwarded(options), '--worker', String(p)];
    results.push(
      JSON.parse(execFileSync(process.execPath, argv, { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'inherit'] })),
    );
    process.stderr.write(`worker ${p + 1}/${options.processes} done (${loadAverage()})\n`);
  }
  const after = loadAverage();
  report(options, results, before, after);
  if (options.json) fs.writeFileSync(options.json, `${JSON.stringify({ ...options, before, after, results }, null, 2)}\n`);
}

function forwarded(o: Options): string[] {
  const flags = ['--batch', String(o.batch), '--seq', String(o.seq), '--rounds', String(o.rounds), '--warmup', String(o.warmup)];
  return o.threads === undefined ? flags : [...flags, '--threads', String(o.threads)];
}

/** Worker `index`: load the models (the order rotated by `index`), then warm-up and rounds. */
async function work(o: Options, index: number): Promise<WorkerResult> {
  const n = o.models.length;
  const feeds = prepareFeeds(generateFeeds(describeInputs(loadModel(o.models[0]!)), { batch: o.batch, seq: o.seq }, 0));
  const sessions: Session[] = new Array(n);
  try {
    for (let i = 0; i < n; i++) {
      const m = (i + index) % n;
      sessions[m] = await openSession(o.models[m]!, { spinning: false, threads: o.threads });
    }
    const outputs: Outputs[] = [];
    for (const s of sessions) outputs.push(await runPrepared(s, feeds));
    const result: WorkerResult = {
      wallMs: sessions.map(() => []),
      cpuMs: sessions.map(() => []),
      maxAbsDiff: outputs.map((out) => maxAbsDifference(outputs[0]!, out)),
    };
    for (let round = -o.warmup; round < o.rounds; round++) {
      for (let i = 0; i < n; i++) {
        const m = (i + index + Math.max(round, 0)) % n;
        const cpu = process.cpuUsage();
        const start = process.hrtime.bigint();
        await runPrepared(sessions[m]!, feeds);
        const wall = Number(process.hrtime.bigint() - start) / 1e6;
        const used = process.cpuUsage(cpu);
        if (round < 0) continue;
        result.wallMs[m]!.push(wall);
        result.cpuMs[m]!.push((used.user + used.system) / 1000);
      }
    }
    return result;
  } finally {
    for (const s of sessions) await s?.release();
  }
}

function report(o: Options, results: WorkerResult[], before: string, after: string): void {
  const pooled = (key: 'wallMs' | 'cpuMs', m: number) => results.flatMap((r) => r[key][m]!);
  const rounds = o.processes * o.rounds;
  console.log(
    `batch ${o.batch}, seq ${o.seq}: ${o.processes} processes x ${o.rounds} rounds = ${rounds} (+${o.warmup} warm-up each), threads ${o.threads ?? 'default'}`,
  );
  console.log(`load average before: ${before}`);
  console.log(`load average after:  ${after}`);
  console.log('');
  console.log(
    '| model | median wall ms | median CPU ms | wall / ref: median (IQR) | CPU / ref: median (IQR) | per-process CPU medians | max abs diff |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  o.models.forEach((file, m) => {
    const cells =
      m === 0
        ? ['ref', 'ref', '']
        : [
            ratios(pooled('wallMs', m), pooled('wallMs', 0)),
            ratios(pooled('cpuMs', m), pooled('cpuMs', 0)),
            results.map((r) => median(r.cpuMs[m]!.map((x, i) => x / r.cpuMs[0]![i]!)).toFixed(3)).join(' '),
          ];
    const diff = m === 0 ? '' : Math.max(...results.map((r) => r.maxAbsDiff[m]!)).toExponential(2);
    console.log(
      `| ${path.basename(file)} | ${median(pooled('wallMs', m)).toFixed(0)} | ${median(pooled('cpuMs', m)).toFixed(0)} | ${cells.join(' | ')} | ${diff} |`,
    );
  });
}

/** Median of the per-round ratios a / b, with their interquartile range. */
function ratios(a: number[], b: number[]): string {
  const r = a.map((x, i) => x / b[i]!);
  return `${median(r).toFixed(3)} (${percentile(r, 0.25).toFixed(3)}–${percentile(r, 0.75).toFixed(3)})`;
}

type Outputs = Awaited<ReturnType<typeof runPrepared>>;

function maxAbsDifference(a: Outputs, b: Outputs): number {
  let worst = 0;
  for (const [name, tensor] of Object.entries(a)) {
    const x = tensor.data as Float32Array;
    const y = b[name]?.data as Float32Array | undefined;
    if (!y || y.length !== x.length) return Number.POSITIVE_INFINITY;
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
  }
  return worst;
}

function loadAverage(): string {
  const [one, five, fifteen] = os.loadavg();
  return `${one!.toFixed(2)}, ${five!.toFixed(2)}, ${fifteen!.toFixed(2)} (${os.cpus().length} cores)`;
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
