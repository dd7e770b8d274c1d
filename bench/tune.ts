// Tune wall time on a BERT-base-sized model (issue: under 20 minutes on the 2-core machine with 256
// calibration sequences). The model is bench/out/bert_base.onnx (random weights) with a random 16-class
// token head, so the budget has class scores to measure; the data are 256 sequences of 128 random tokens.
//
//   /usr/bin/python3 bench/models/bert_base.py bench/out/bert_base.onnx
//   npm run bench:tune [-- --model PATH --samples 256 --seq 128 --budget 'top1-agreement>=0.9'
//                        --time-limit 20m --report bench/out/tune-report]
//
// Prints the tune's table, the seconds per stage, the wall time and the process's peak RSS.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { describeInputs } from '../src/analysis/inputs.js';
import { parseBudget } from '../src/decide/frontier.js';
import { tune } from '../src/decide/tune.js';
import { GraphBuilder } from '../src/ir/builder.js';
import { NameAuthority } from '../src/ir/names.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openData } from '../src/runtime/data.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLASSES = 16;

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(REPO_ROOT, 'bench/out/bert_base.onnx') },
    samples: { type: 'string', default: '256' },
    seq: { type: 'string', default: '128' },
    budget: { type: 'string', default: 'top1-agreement>=0.9' },
    'time-limit': { type: 'string', default: '20m' },
    report: { type: 'string', default: path.join(REPO_ROOT, 'bench/out/tune-report') },
    scopes: { type: 'string', default: 'ffn,attention,layer' },
  },
});

const base = values.model!;
if (!fs.existsSync(base)) throw new Error(`${base} does not exist: /usr/bin/python3 bench/models/bert_base.py ${base}`);
const tagger = base.replace(/\.onnx$/, '_tagger.onnx');
const dataFile = path.join(path.dirname(base), `tune_data_${values.samples}x${values.seq}.jsonl`);

/** The base model with a random token-classification head: logits [batch, seq, 16]. */
function addHead(): void {
  const model = loadModel(base);
  const hidden = model.graph.outputs[0];
  const d = (hidden.type as { shape: { value?: number }[] }).shape[2].value!;
  const rng = new Rng(11, 'head');
  const w = Float32Array.from({ length: d * CLASSES }, () => (rng.normal() / Math.sqrt(d)) * 4);
  const graph = model.graph;
  const b = new GraphBuilder(graph, NameAuthority.forModel(model));
  const logits = b.op.MatMul(hidden, b.initializer('head.weight', Tensor.fromArray('head.weight', DataType.FLOAT, [d, CLASSES], w)));
  b.output(logits, 'logits', tensorType(DataType.FLOAT, ['batch', 'seq', CLASSES]));
  graph.outputs = graph.outputs.filter((v) => v.name === 'logits');
  saveModel(model, tagger);
}

function writeData(samples: number, seq: number, vocab: number): void {
  const rng = new Rng(12, 'tokens');
  const rows = Array.from({ length: samples }, () =>
    JSON.stringify({ input_ids: Array.from({ length: seq }, () => 1 + Math.floor(rng.next() * (vocab - 1))) }),
  );
  fs.writeFileSync(dataFile, `${rows.join('\n')}\n`);
}

if (!fs.existsSync(tagger)) addHead();
if (!fs.existsSync(dataFile)) writeData(Number(values.samples), Number(values.seq), 30522);
const bytes = fs.readFileSync(tagger);
const data = openData(dataFile, describeInputs(loadModel(tagger)));
const started = Date.now();
let last = '';
const result = await tune(tagger, bytes, data, {
  budget: parseBudget(values.budget!),
  batch: 8,
  seq: Number(values.seq),
  scopes: values.scopes!.split(',') as ('ffn' | 'attention' | 'layer')[],
  cacheDir: path.join(values.report!, 'cache'),
  timeLimit: Number.parseFloat(values['time-limit']!) * (values['time-limit']!.endsWith('m') ? 60 : 1),
  onProgress: (e) => {
    const line = `${e.stage} ${e.done}/${e.total}`;
    if (line !== last)
      process.stderr.write(
        `[${((Date.now() - started) / 1000).toFixed(0)} s] ${line}${e.best ? ` best ${e.best.speedup.toFixed(2)}x` : ''}\n`,
      );
    last = line;
  },
});
const { model: _model, ...report } = result;
fs.mkdirSync(values.report!, { recursive: true });
fs.writeFileSync(path.join(values.report!, 'frontier.json'), `${JSON.stringify(report, null, 2)}\n`);
console.log(
  JSON.stringify(
    {
      model: tagger,
      bytes: bytes.length,
      samples: data.size,
      wallSeconds: (Date.now() - started) / 1000,
      stages: result.stages,
      stopped: result.stopped,
      cache: result.cache,
      peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      chosen: result.chosen && {
        description: result.chosen.description,
        predicted: result.chosen.predictedSpeedup,
        measured: result.chosen.measuredSpeedup,
        validation: result.chosen.validation,
        test: result.chosen.test,
      },
      points: result.points.map((p) => ({
        description: p.description,
        predicted: p.predictedSpeedup,
        measured: p.measuredSpeedup,
        top1: p.validation.top1Agreement,
        kl: p.validation.kl,
        meets: p.meetsBudget,
      })),
    },
    null,
    2,
  ),
);
