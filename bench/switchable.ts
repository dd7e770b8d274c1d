// Benchmark of the switchable model (not a test): each branch of a switchable model (ratios 1, 2, 4 of FFN
// plugins) against the model it should equal: k=1 against the original, k=2 and k=4 against the
// single-ratio compiled models. All six entries run in one process in paired rounds (order rotated each
// round, src/bench/paired.ts); each pair's figure is the median over rounds of branch time / single time
// in the same round (> 1: the branch is slower), with its IQR, in wall and in CPU time. Before the timing,
// each branch's outputs are compared with its single model's (max abs difference, batch 2, seq 37).
//
//   /usr/bin/python3 bench/models/bert_base.py bench/out/bert_base.onnx
//   npm run build && node dist/bench/switchable.js [bench/out/bert_base.onnx] [--kind variator|mean]
//       [--batch 1,8] [--seq 16,128] [--runs 21] [--warmup 1] [--sessions 3] [--switchable FILE] [--threads N]
//       [--json FILE]
//
// The single-ratio models and the switchable one are written next to the model (bench/out is not
// committed) unless they exist; --switchable FILE times that switchable file instead (e.g. one written by
// another version of vcompile, built from the same builtin plugins).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { type BenchReport, benchModels, benchWarning } from '../src/bench/latency.js';
import { pairedRatios, spread } from '../src/bench/paired.js';
import { pluginPass, switchablePass } from '../src/compile/passes.js';
import type { Tensor } from '../src/ir/tensor.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { ratioTensor, withFeedableRatio } from '../src/runtime/adaptive.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { openSession, run } from '../src/runtime/session.js';

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .command('$0 [model]', 'time every branch of a switchable model against its single-ratio model')
    .positional('model', { type: 'string', default: 'bench/out/bert_base.onnx' })
    .option('kind', { choices: ['variator', 'mean'] as const, default: 'variator' as const })
    .option('batch', { type: 'string', default: '1,8' })
    .option('seq', { type: 'string', default: '16,128' })
    .option('runs', { type: 'number', default: 21 })
    .option('warmup', { type: 'number', default: 1, describe: 'warm-up calls per session and point' })
    .option('sessions', { type: 'number', default: 3, describe: 'sessions per model, used in turn (see vcompile bench --sessions)' })
    .option('switchable', { type: 'string', describe: 'time this switchable model (ratios 1, 2, 4) instead of writing one' })
    .option('threads', { type: 'number' })
    .option('json', { type: 'string', describe: 'also write the bench report as JSON here' })
    .strict()
    .parseAsync();
  const model = args.model ?? 'bench/out/bert_base.onnx';
  if (!fs.existsSync(model)) throw new Error(`${model} does not exist: /usr/bin/python3 bench/models/bert_base.py ${model}`);
  const stem = path.join(path.dirname(model), `${path.basename(model, '.onnx')}_${args.kind}_ffn`);
  const plugin = (k: number) => ({ source: `builtin:${args.kind}:${k}` });
  const single2 = ensure(`${stem}_k2.onnx`, model, (m) => pluginPass({ plugins: [plugin(2)] }).run(m));
  const single4 = ensure(`${stem}_k4.onnx`, model, (m) => pluginPass({ plugins: [plugin(4)] }).run(m));
  const switchable =
    args.switchable ?? ensure(`${stem}_switchable.onnx`, model, (m) => switchablePass({ plugins: [plugin(2), plugin(4)] }).run(m));
  const list = (s: string) => s.split(',').map(Number);
  console.log(
    `max abs difference, branch vs single model (batch 2, seq 37): ${await exactness(model, [model, single2, single4], switchable)}`,
  );
  const loadBefore = os.loadavg();
  const started = Date.now();
  const report = await benchModels([model, single2, single4, switchable], {
    batches: list(args.batch),
    seqs: list(args.seq),
    warmup: args.warmup,
    runs: args.runs,
    sessions: args.sessions,
    ratios: [1, 2, 4],
    memory: false,
    session: { threads: args.threads },
    onProgress: (done, total) => process.stderr.write(`\r${done}/${total} runs`),
  });
  process.stderr.write('\n');
  const loadAfter = os.loadavg();
  console.log(`models: A ${model}, B ${single2}, C ${single4}, D/E/F ${switchable} at k=1/2/4`);
  console.log(
    `${args.runs} paired rounds per point, ${args.sessions} sessions per model, ${args.warmup} warm-up call(s) per session; ${((Date.now() - started) / 1000).toFixed(0)} s; ` +
      `load average (1/5/15 min) ${loadBefore.map((l) => l.toFixed(2)).join('/')} before, ${loadAfter.map((l) => l.toFixed(2)).join('/')} after; ${os.cpus().length} cores`,
  );
  console.log('');
  console.log(table(report));
  const warning = benchWarning(report);
  if (warning) console.log(`\nwarning: ${warning}`);
  if (args.json) fs.writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
}

/** `file`, written from `model` by `rewrite` unless it exists. */
function ensure(file: string, model: string, rewrite: (m: ReturnType<typeof loadModel>) => unknown): string {
  if (fs.existsSync(file)) return file;
  const m = loadModel(model);
  rewrite(m);
  saveModel(m, file, { protect: [model] });
  process.stderr.write(`wrote ${file}\n`);
  return file;
}

/** Each branch of `switchable` (k = 1, 2, 4) against the single model it should equal, on generated inputs. */
async function exactness(model: string, singles: string[], switchable: string): Promise<string> {
  const feeds = generateFeeds(describeInputs(loadModel(model)), { batch: 2, seq: 37 }, 0);
  const outputsOf = async (file: string, ratio?: number): Promise<Record<string, Tensor>> => {
    const session = await openSession(ratio === undefined ? file : withFeedableRatio(loadModel(file)));
    try {
      return await run(session, ratio === undefined ? feeds : { ...feeds, vcompile_ratio: ratioTensor(ratio) });
    } finally {
      await session.release();
    }
  };
  const found: string[] = [];
  for (const [i, ratio] of [1, 2, 4].entries()) {
    const expected = await outputsOf(singles[i]);
    const actual = await outputsOf(switchable, ratio);
    let worst = 0;
    for (const [name, tensor] of Object.entries(expected)) {
      const [a, b] = [actual[name].toFloat32(), tensor.toFloat32()];
      for (let j = 0; j < a.length; j++) worst = Math.max(worst, Math.abs(a[j] - b[j]));
    }
    found.push(`k=${ratio} ${worst}`);
  }
  return found.join(', ');
}

/** Per point: each branch over the model it should equal, and the control, as time ratios. */
function table(report: BenchReport): string {
  const pairs = [
    ['k=1 / original', 3, 0],
    ['k=2 / single k=2', 4, 1],
    ['k=4 / single k=4', 5, 2],
    ['single k=2 / original', 1, 0],
    ['single k=4 / original', 2, 0],
    ['k=4 / original', 5, 0],
  ] as const;
  const f = (s: { median: number; iqr: [number, number] }) => `${s.median.toFixed(3)} (${s.iqr[0].toFixed(3)}-${s.iqr[1].toFixed(3)})`;
  const lines = ['| batch | seq | pair (time ratio) | wall (IQR) | CPU (IQR) | medians ms |', '|---:|---:|---|---:|---:|---:|'];
  for (const p of report.points) {
    for (const [name, branch, single] of pairs) {
      const b = p.results[branch];
      const s = p.results[single];
      lines.push(
        `| ${p.batch} | ${p.seq} | ${name} | ${f(spread(pairedRatios(b.samplesMs, s.samplesMs)))} | ${f(spread(pairedRatios(b.cpuSamplesMs, s.cpuSamplesMs)))} | ${b.medianMs.toFixed(1)} / ${s.medianMs.toFixed(1)} |`,
      );
    }
    if (p.control) {
      const [c, a] = [p.control, p.results[0]];
      lines.push(
        `| ${p.batch} | ${p.seq} | control: original / original | ${f(spread(pairedRatios(c.samplesMs, a.samplesMs)))} | ${f(spread(pairedRatios(c.cpuSamplesMs, a.cpuSamplesMs)))} | ${c.medianMs.toFixed(1)} / ${a.medianMs.toFixed(1)} |`,
      );
    }
  }
  return lines.join('\n');
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
