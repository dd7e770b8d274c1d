// Benchmark of modules fitted from data (not a test), three parts:
//
//   quality   on a trained masked LM (default fixtures/mlm/mlm.onnx, calibration fixtures/mlm/calib, evaluation
//             fixtures/mlm/eval: data the fit never sees), one span of 2 layers and two disjoint spans: task
//             accuracy and loss of the original and with each span dropped (identity), keep-first, average,
//             and fitted (from keep-first and from average, with and without context maps), and how much of
//             the loss gap the best training-free module leaves the fitted one recovers.
//   assemble  --target-speedup R --fit-modules on the same model and data for each target: the plan, its
//             fidelity on the held-out calibration samples, and its speed-up timed against the original
//             (interleaved runs, medians) set against the MACs prediction.
//   timing    the time to fit one 2-layer span of a BERT-base-sized model on 256 x 128 tokens:
//               /usr/bin/python3 bench/models/bert_base.py bench/out/bert_base.onnx
//
//   npm run build && node dist/bench/module-fit.js [--parts quality,assemble,timing] [--model M] [--calib DIR]
//       [--eval DIR] [--spans 0-1 --spans 0-1,2-3] [--targets 1.15,1.4] [--bert bench/out/bert_base.onnx]
//       [--threads N] [--json FILE]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { checkModuleContract, HIDDEN, HIDDEN_OUT, SPAN_KEY } from '../passes/modular/contract.js';
import type { ModuleRequest } from '../passes/modular/index.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { describeInputs } from '../src/analysis/inputs.js';
import { modularPass } from '../src/compile/passes.js';
import { assembleFitted } from '../src/decide/assemble-fitted.js';
import { fitModules } from '../src/decide/fit-modules.js';
import { VcompileError } from '../src/errors.js';
import { ModelBuilder } from '../src/ir/builder.js';
import type { Model } from '../src/ir/model.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { decodeModel, encodeModel, loadModel, readFileOrFail, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { type DataSet, openData } from '../src/runtime/data.js';
import { verifyModels } from '../src/verify/numeric.js';

interface Options {
  parts: string[];
  model: string;
  calib: string;
  eval: string;
  spans: string[];
  targets: number[];
  bert: string;
  threads?: number;
  json?: string;
}

const out = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-bench-module-fit-'));
const report: Record<string, unknown> = {};

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .option('parts', { type: 'string', default: 'quality,assemble,timing' })
    .option('model', { type: 'string', default: 'fixtures/mlm/mlm.onnx' })
    .option('calib', { type: 'string', default: 'fixtures/mlm/calib' })
    .option('eval', { type: 'string', default: 'fixtures/mlm/eval' })
    .option('spans', { type: 'string', array: true, default: ['0-1', '0-1,2-3'] })
    // the fixture's vocabulary head costs about two layers: one 2-layer span gives ~1.19x, two ~1.46x
    .option('targets', { type: 'string', default: '1.15,1.4' })
    .option('bert', { type: 'string', default: 'bench/out/bert_base.onnx' })
    .option('threads', { type: 'number' })
    .option('json', { type: 'string', describe: 'also write the report as JSON here' })
    .strict()
    .parseAsync();
  const options: Options = { ...args, parts: args.parts.split(','), targets: args.targets.split(',').map(Number) };
  console.log(`machine: ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(2)}\n`);
  if (options.parts.includes('quality')) await quality(options);
  if (options.parts.includes('assemble')) await assembleTargets(options);
  if (options.parts.includes('timing')) await timing(options);
  if (options.json) fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
  fs.rmSync(out, { recursive: true, force: true });
}

// ------------------------------------------------------------------------------------------ quality

interface Row {
  variant: string;
  accuracy: number;
  loss: number;
  top1: number | null;
}

async function quality(options: Options): Promise<void> {
  const bytes = readFileOrFail(options.model);
  const model = decodeModel(bytes, { label: options.model });
  const specs = describeInputs(model);
  const calib = openData(options.calib, specs);
  const evaluation = openData(options.eval, specs);
  const results: Record<string, Row[]> = {};
  for (const text of options.spans) {
    const spans = text.split(',').map((s) => s.split('-').map(Number) as [number, number]);
    const rows: Row[] = [];
    const measure = async (variant: string, requests: ModuleRequest[], loaded?: Map<string, Model>) => {
      const file = path.join(out, `${variant.replace(/\W+/g, '-')}.onnx`);
      const checked = new Map([...(loaded ?? [])].map(([k, m]) => [k, checkModuleContract(m, k, '')]));
      saveModel(modularPass({ modules: requests, loaded: checked }).run(decodeModel(bytes)).model, file);
      const r = await verifyModels(options.model, file, { data: evaluation, session: { threads: options.threads } });
      const o = r.outputs[0];
      if (!o.task) throw new Error(`${options.eval} has no labels: the quality part needs task metrics`);
      if (rows.length === 0) rows.push({ variant: 'original', accuracy: o.task.accuracy.original, loss: o.task.loss.original, top1: 1 });
      rows.push({ variant, accuracy: o.task.accuracy.rewritten, loss: o.task.loss.rewritten, top1: o.top1Agreement });
      process.stderr.write(`${text} ${variant}: loss ${o.task.loss.rewritten.toFixed(4)}\n`);
    };
    const drop = new Map(spans.map(([s, e]) => [`drop:L${s}-${e}`, dropModule(model, e - s + 1)]));
    await measure(
      'drop (identity)',
      spans.map(([s, e]) => ({ start: s, end: e, source: `drop:L${s}-${e}` })),
      drop,
    );
    for (const kind of ['keep-first', 'average'])
      await measure(
        kind,
        spans.map(([start, end]) => ({ start, end, source: `builtin:${kind}` })),
      );
    for (const context of [false, true]) {
      for (const init of ['keep-first', 'average'] as const) {
        const started = Date.now();
        const fitted = await fitModules(options.model, bytes, calib, {
          spans: spans.map(([start, end]) => ({ start, end })),
          init,
          context,
          threads: options.threads,
        });
        const seconds = (Date.now() - started) / 1000;
        const loaded = new Map([...fitted.modules].map(([key, m]) => [`fitted:${key}`, m]));
        await measure(
          `fitted from ${init}${context ? '' : ', --no-context'}`,
          spans.map(([start, end]) => ({ start, end, source: `fitted:L${start}-${end}` })),
          loaded,
        );
        const chosen = fitted.spans.map((s) => `${s.start}-${s.end}: ${s.chosen}`).join(', ');
        rows[rows.length - 1].variant += ` (${chosen}; ${seconds.toFixed(1)} s)`;
      }
    }
    results[text] = rows;
    printQuality(text, rows);
  }
  report.quality = results;
}

/** A module that returns its input: the span dropped. */
function dropModule(model: Model, span: number): Model {
  const d = analyzeTransformer(model).hidden!;
  const b = new ModelBuilder(model.opsetVersion('') ?? 17, 'drop');
  const type = tensorType(DataType.FLOAT, ['batch', 'seq', d]);
  b.output(b.op.Identity(b.input(HIDDEN, type)), HIDDEN_OUT, type);
  b.model.metadataProps = [[SPAN_KEY, String(span)]];
  return b.model;
}

function printQuality(spans: string, rows: Row[]): void {
  const original = rows[0];
  const free = rows.filter((r) => /^(keep-first|average)$/.test(r.variant));
  const bestFree = free.reduce((a, b) => (b.loss < a.loss ? b : a));
  console.log(`### Layers ${spans.split(',').join(' and ')} replaced (evaluation data, not used in the fit)\n`);
  console.log('| module | accuracy | loss | top-1 agreement | loss gap to the best training-free module recovered |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    const recovered = r.variant.startsWith('fitted') ? (bestFree.loss - r.loss) / (bestFree.loss - original.loss) : undefined;
    console.log(
      `| ${r.variant} | ${(100 * r.accuracy).toFixed(2)}% | ${r.loss.toFixed(4)} | ${r.top1 === null ? '-' : `${(100 * r.top1).toFixed(2)}%`} | ${recovered === undefined ? '' : `${(100 * recovered).toFixed(1)}%`} |`,
    );
  }
  console.log('');
}

// ------------------------------------------------------------------------------------------ assemble

async function assembleTargets(options: Options): Promise<void> {
  const bytes = readFileOrFail(options.model);
  const calib = openData(options.calib, describeInputs(loadModel(options.model)));
  const rows: object[] = [];
  console.log('### Assembled from fitted modules: measured speed-up against the MACs prediction (batch 8, seq 128)\n');
  console.log('| target | plan | fidelity (held-out) | predicted (MACs) | measured | measured / predicted |');
  console.log('|---|---|---|---|---|---|');
  for (const target of options.targets) {
    let r: Awaited<ReturnType<typeof assembleFitted>>;
    try {
      r = await assembleFitted(options.model, bytes, calib, {
        target,
        batch: 8,
        seq: 128,
        timingRuns: 20,
        threads: options.threads,
        onProgress: (line) => process.stderr.write(`${line}\n`),
      });
    } catch (error) {
      if (!(error instanceof VcompileError)) throw error;
      console.log(`| ${target} | ${error.message} | | | | |`);
      continue;
    }
    const plan = r.chosen.candidates.map((c) => `${c.start}-${c.end}`).join(', ');
    const measured = r.timing!.speedup;
    console.log(
      `| ${target} | ${plan} | ${r.metric} ${r.chosen.fidelity.toFixed(4)} | ${r.chosen.speedup.toFixed(3)}x | ${measured.toFixed(3)}x | ${(measured / r.chosen.speedup).toFixed(3)} |`,
    );
    rows.push({
      target,
      plan,
      metric: r.metric,
      fidelity: r.chosen.fidelity,
      predicted: r.chosen.speedup,
      timing: r.timing,
      refitted: r.refitted,
    });
  }
  console.log('');
  report.assemble = rows;
}

// ------------------------------------------------------------------------------------------ timing

async function timing(options: Options): Promise<void> {
  if (!fs.existsSync(options.bert))
    throw new Error(`${options.bert} does not exist: /usr/bin/python3 bench/models/bert_base.py ${options.bert}`);
  const bytes = readFileOrFail(options.bert);
  const specs = describeInputs(decodeModel(bytes));
  const rng = new Rng(1, 'bert-base-fit');
  const file = path.join(out, 'bert-calib.jsonl');
  const rows = Array.from({ length: 256 }, () =>
    JSON.stringify({ input_ids: Array.from({ length: 128 }, () => Math.floor(rng.next() * 30000)) }),
  );
  fs.writeFileSync(file, `${rows.join('\n')}\n`);
  const data: DataSet = openData(file, specs);
  const started = Date.now();
  const stages: Record<string, number> = {};
  let last = started;
  let stage = 'start';
  const result = await fitModules(options.bert, bytes, data, {
    spans: [{ start: 0, end: 1 }],
    threads: options.threads,
    onProgress: (e) => {
      if (e.stage === stage) return;
      const now = Date.now();
      stages[stage] = (stages[stage] ?? 0) + (now - last) / 1000;
      [stage, last] = [e.stage, now];
    },
  });
  stages[stage] = (stages[stage] ?? 0) + (Date.now() - last) / 1000;
  const seconds = (Date.now() - started) / 1000;
  const [fit] = result.spans;
  console.log('### Fitting time: layers 0-1 of a BERT-base-sized model, 256 x 128 tokens\n');
  console.log(
    `total ${seconds.toFixed(1)} s; by stage: ${Object.entries(stages)
      .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
      .join(', ')}`,
  );
  console.log(`chosen ${fit.chosen}; held-out errors ${JSON.stringify(fit.heldOut)}; ${fit.tokens} fit positions\n`);
  report.timing = { seconds, stages, fit, module: encodeModel(result.modules.get('L0-1')!).byteLength };
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
