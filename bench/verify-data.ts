// What the check on the user's data costs over running the two models on it (issue target: at most 1.3x),
// on a BERT-base-sized model and its FFN k=4 mean-plugin compile, with 500 sequences of 128 random tokens:
//   run   both models over every batch, outputs dropped (sessions opened once, as the check opens them)
//   check `verifyModels` on the same data: both runs plus every comparison (streamed, batch by batch)
// Interleaved: run, check, run, check, ... (--reps, default 2), medians; peak RSS of the process at the end.
//
//   /usr/bin/python3 bench/models/bert_base.py bench/out/bert_base.onnx
//   npm run build && node dist/bench/verify-data.js [--model bench/out/bert_base.onnx] [--samples 500] [--reps 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runPasses } from '../passes/pipeline.js';
import { describeInputs } from '../src/analysis/inputs.js';
import { pluginPass } from '../src/compile/passes.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openData } from '../src/runtime/data.js';
import { openSession, run } from '../src/runtime/session.js';
import { verifyModels } from '../src/verify/numeric.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(REPO_ROOT, 'bench/out/bert_base.onnx') },
    samples: { type: 'string', default: '500' },
    reps: { type: 'string', default: '2' },
  },
});

const original = values.model!;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-verify-data-'));
const rewritten = path.join(work, 'ffn_k4.onnx');
const dataFile = path.join(work, 'data.jsonl');

function compile(): void {
  const model = loadModel(original);
  saveModel(runPasses(model, [pluginPass({ plugins: [{ source: 'builtin:mean:4:ffn' }] })]).model, rewritten);
}

function writeData(samples: number): void {
  const rng = new Rng(21, 'verify-data');
  const rows = Array.from({ length: samples }, () =>
    JSON.stringify({ input_ids: Array.from({ length: 128 }, () => 1 + Math.floor(rng.next() * 30000)) }),
  );
  fs.writeFileSync(dataFile, `${rows.join('\n')}\n`);
}

async function runBoth(): Promise<number> {
  const data = openData(dataFile, describeInputs(loadModel(original)));
  const started = performance.now();
  for (const file of [original, rewritten]) {
    const session = await openSession(file);
    for (const batch of data.batches(8)) await run(session, batch.feeds);
    await session.release();
  }
  return (performance.now() - started) / 1000;
}

async function check(): Promise<number> {
  const data = openData(dataFile, describeInputs(loadModel(original)));
  const started = performance.now();
  await verifyModels(original, rewritten, { data, batchSize: 8 });
  return (performance.now() - started) / 1000;
}

compile();
writeData(Number(values.samples));
const runs: number[] = [];
const checks: number[] = [];
for (let i = 0; i < Number(values.reps); i++) {
  runs.push(await runBoth());
  checks.push(await check());
  process.stderr.write(`rep ${i + 1}: run ${runs[i].toFixed(1)} s, check ${checks[i].toFixed(1)} s\n`);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
console.log(
  JSON.stringify({
    samples: Number(values.samples),
    runSeconds: runs,
    checkSeconds: checks,
    ratio: median(checks) / median(runs),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    load: os.loadavg(),
  }),
);
fs.rmSync(work, { recursive: true, force: true });
