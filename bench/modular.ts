// Benchmark of the modular pass (not a test): a BERT-base-shaped model with 2, 4 and 6 pairs of layers
// replaced by one module each (builtin:average by default), timed against the original in one process in
// paired rounds (order rotated each round; speed-up = median of per-round ratios, with its IQR); the
// measured speed-up is set against the MACs ratio.
//
//   /usr/bin/python3 bench/models/bert_base.py bench/out/bert_base.onnx
//   npm run build && node dist/bench/modular.js [bench/out/bert_base.onnx] [--batch 8] [--seq 256]
//       [--runs 10] [--warmup 2] [--pairs 2,4,6] [--kind average|keep-first] [--threads N] [--json FILE]
//
// The variants are written next to the model (bench/out is not committed), then timed with the machinery
// of `vcompile bench` (src/bench/latency.ts).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { benchModels, benchWarning, formatBenchReport } from '../src/bench/latency.js';
import { modularPass } from '../src/compile/passes.js';
import { loadModel, saveModel } from '../src/onnx/file.js';

interface Options {
  model: string;
  batch: number;
  seq: number;
  runs: number;
  warmup: number;
  pairs: number[];
  kind: 'average' | 'keep-first';
  threads?: number;
  json?: string;
}

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .command('$0 [model]', 'time a model with pairs of layers replaced by modules')
    .positional('model', { type: 'string', default: 'bench/out/bert_base.onnx' })
    .option('batch', { type: 'number', default: 8 })
    .option('seq', { type: 'number', default: 256 })
    .option('runs', { type: 'number', default: 10 })
    .option('warmup', { type: 'number', default: 2 })
    .option('pairs', { type: 'string', default: '2,4,6', describe: 'how many pairs of layers to replace, per variant' })
    .option('kind', { choices: ['average', 'keep-first'] as const, default: 'average' as const })
    .option('threads', { type: 'number' })
    .option('json', { type: 'string', describe: 'also write the report as JSON here' })
    .strict()
    .parseAsync();
  const options: Options = { ...args, model: args.model ?? 'bench/out/bert_base.onnx', pairs: args.pairs.split(',').map(Number) };
  if (!fs.existsSync(options.model))
    throw new Error(`${options.model} does not exist: /usr/bin/python3 bench/models/bert_base.py ${options.model}`);
  const files = [options.model, ...options.pairs.map((pairs) => writeVariant(options, pairs))];
  // the machine may be shared: the load average before and after says how quiet the timing was
  const loadBefore = os.loadavg()[0];
  const report = await benchModels(files, {
    batches: [options.batch],
    seqs: [options.seq],
    warmup: options.warmup,
    runs: options.runs,
    session: { threads: options.threads },
    onProgress: (done, total) => process.stderr.write(`\r${done}/${total} runs`),
  });
  process.stderr.write('\n');
  console.log(formatBenchReport(report));
  console.log(`load average (1 min): ${loadBefore.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after; ${os.cpus().length} cores`);
  const warning = benchWarning(report);
  if (warning) console.log(`warning: ${warning}`);
  console.log('');
  // paired: the original's time over this model's in the same round, median over rounds (what `speedup`
  // is); load that comes and goes on a shared machine hits both runs of a round alike
  console.log(
    '| layers replaced | modules | GMACs | ideal (MACs ratio) | median ms | paired speed-up (IQR) | CPU speed-up | paired / ideal |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  for (const [i, result] of report.points[0].results.entries()) {
    const pairs = i === 0 ? 0 : options.pairs[i - 1];
    const ratio = result.idealSpeedup ? result.speedup / result.idealSpeedup : NaN;
    const [q1, q3] = result.speedupIqr;
    console.log(
      `| ${2 * pairs} | ${pairs} | ${result.macs === null ? '?' : (result.macs / 1e9).toFixed(1)} | ${result.idealSpeedup?.toFixed(3) ?? '?'}x | ${result.medianMs.toFixed(0)} | ${result.speedup.toFixed(3)}x (${q1.toFixed(3)}-${q3.toFixed(3)}) | ${result.cpuSpeedup.toFixed(3)}x | ${ratio.toFixed(3)} |`,
    );
  }
  if (options.json) fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
}

/** The model with layers 0-1, 2-3, ... (`pairs` of them) replaced by a built-in module each. */
function writeVariant(options: Options, pairs: number): string {
  const file = path.join(path.dirname(options.model), `${path.basename(options.model, '.onnx')}_${options.kind}_${pairs}pairs.onnx`);
  const model = loadModel(options.model);
  const modules = Array.from({ length: pairs }, (_, i) => ({ start: 2 * i, end: 2 * i + 1, source: `builtin:${options.kind}` }));
  const start = Date.now();
  modularPass({ modules }).run(model);
  saveModel(model, file, { overwrite: true, protect: [options.model] });
  process.stderr.write(`wrote ${file}: ${pairs} pairs replaced (${((Date.now() - start) / 1000).toFixed(1)} s)\n`);
  return file;
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
