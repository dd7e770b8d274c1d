// Where models' time goes, by kernel type (not a test): ONNX Runtime's own profiler, per run, summed by op
// type after ORT's graph optimizations (fused kernels appear under their own names: FusedMatMul, BiasGelu,
// Gemm, SkipLayerNormalization). End-to-end ratios on a 2-core machine stray by a few percent between
// sessions, mostly in the big products; the small kernels a rewrite adds or removes (a Pad, a Slice, an
// Expand, an Add) keep their time from run to run, so this shows what a rewrite saved where a latency
// ratio cannot resolve it. Per model and round: a fresh session, one warm-up run, then --runs profiled runs;
// the median per op type over those runs, then the median over rounds (models rotated every round).
//
//   npm run build && node dist/bench/kernel-profile.js MODEL... [--batch 8] [--seq 256] [--runs 6] [--rounds 3]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import ort from 'onnxruntime-node';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { median } from '../src/bench/latency.js';
import { loadModel } from '../src/onnx/file.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { prepareFeeds } from '../src/runtime/session.js';

interface ProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string };
}

/** Per profiled run (the warm-up left out): ms by op type, and the run's wall ms. */
async function profileRuns(
  file: string,
  batch: number,
  seq: number,
  runs: number,
  dir: string,
): Promise<{ byOp: Map<string, number>; wall: number }[]> {
  const feeds = prepareFeeds(generateFeeds(describeInputs(loadModel(file)), { batch, seq }, 0));
  const prefix = path.join(dir, `profile_${path.basename(file)}`);
  const session = await ort.InferenceSession.create(file, {
    enableProfiling: true,
    profileFilePrefix: prefix,
    intraOpNumThreads: 2,
    interOpNumThreads: 1,
  });
  try {
    for (let i = 0; i <= runs; i++) await session.run(feeds);
    session.endProfiling();
  } finally {
    await session.release();
  }
  const written = fs.readdirSync(dir).filter((f) => path.join(dir, f).startsWith(prefix));
  const events: ProfileEvent[] = written.flatMap((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')));
  for (const f of written) fs.rmSync(path.join(dir, f));
  const calls = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const out = calls.map((call) => ({ byOp: new Map<string, number>(), wall: call.dur / 1000 }));
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const run = calls.findIndex((c) => e.ts >= c.ts && e.ts <= c.ts + c.dur);
    if (run < 0) continue;
    const op = e.args?.op_name ?? '?';
    out[run]!.byOp.set(op, (out[run]!.byOp.get(op) ?? 0) + e.dur / 1000);
  }
  return out.slice(1);
}

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .usage('$0 MODEL... [options]')
    .option('batch', { type: 'number', default: 8 })
    .option('seq', { type: 'number', default: 256 })
    .option('runs', { type: 'number', default: 6, describe: 'profiled runs per session' })
    .option('rounds', { type: 'number', default: 3, describe: 'sessions per model, models rotated every round' })
    .demandCommand(1)
    .strict()
    .parse();
  const models = args._.map(String);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-kernel-profile-'));
  const perModel = models.map(() => ({ byOp: new Map<string, number[]>(), kernels: [] as number[], wall: [] as number[] }));
  try {
    for (let round = 0; round < args.rounds; round++) {
      for (let j = 0; j < models.length; j++) {
        const m = (round + j) % models.length;
        const runs = await profileRuns(models[m]!, args.batch, args.seq, args.runs, dir);
        const ops = new Set(runs.flatMap((r) => [...r.byOp.keys()]));
        for (const op of ops) {
          const list = perModel[m]!.byOp.get(op) ?? [];
          list.push(median(runs.map((r) => r.byOp.get(op) ?? 0)));
          perModel[m]!.byOp.set(op, list);
        }
        perModel[m]!.kernels.push(median(runs.map((r) => [...r.byOp.values()].reduce((s, v) => s + v, 0))));
        perModel[m]!.wall.push(median(runs.map((r) => r.wall)));
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const value = (m: number, op: string) => median(perModel[m]!.byOp.get(op) ?? [0]);
  const ops = [...new Set(perModel.flatMap((p) => [...p.byOp.keys()]))].sort((a, b) => value(0, b) - value(0, a) || a.localeCompare(b));
  console.log(
    `kernel ms per call by op type, batch ${args.batch}, seq ${args.seq}: median of ${args.runs} runs per session, then of ${args.rounds} rounds`,
  );
  console.log(['op', ...models.map((f) => path.basename(f))].join('\t'));
  for (const op of ops) console.log([op, ...models.map((_, m) => value(m, op).toFixed(1))].join('\t'));
  console.log(['all kernels', ...perModel.map((p) => median(p.kernels).toFixed(1))].join('\t'));
  console.log(['wall', ...perModel.map((p) => median(p.wall).toFixed(1))].join('\t'));
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : String(error));
  process.exit(1);
});
