// Verification on the user's data: the three formats, padding of ragged rows (never counted), labels,
// every bad-data refusal, and the class and task metrics against a plain computation.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeInputs } from '../src/analysis/inputs.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { encodeTensor } from '../src/onnx/tensor-file.js';
import { Rng } from '../src/random.js';
import { openData } from '../src/runtime/data.js';
import { writeNpy } from '../src/runtime/npy.js';
import { PositionAccumulator } from '../src/verify/metrics.js';
import { verifyModels } from '../src/verify/numeric.js';
import { vcompile } from './helpers/cli.js';

const repo = path.resolve(import.meta.dirname, '..');
const VOCAB = 10;
const CLASSES = 6;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-data-'));

/**
 * A token classifier: logits[b, s] = table[ids[b, s]] + (1 - mask[b, s]) * padValue. `table` is seeded;
 * `noise` perturbs it (a rewritten model), `padValue` changes only what padded positions get.
 */
function tokenModel(name: string, options: { noise?: number; padValue?: number; seed?: number } = {}): string {
  const rng = new Rng(options.seed ?? 1, 'table');
  const table = Float32Array.from({ length: VOCAB * CLASSES }, () => rng.normal() * 2);
  const noise = new Rng(7, 'noise');
  if (options.noise) for (let i = 0; i < table.length; i++) table[i] += noise.normal() * options.noise;
  const b = new ModelBuilder(17);
  const ids = b.input('input_ids', tensorType(DataType.INT64, ['batch', 'seq']));
  const mask = b.input('attention_mask', tensorType(DataType.INT64, ['batch', 'seq']));
  const scores = b.op.Gather(b.floats('table', [VOCAB, CLASSES], table), ids, { axis: 0 });
  const padding = b.op.Sub(b.scalar('one', 1), b.op.Cast(mask, { to: DataType.FLOAT }));
  const padded = b.op.Mul(b.op.Unsqueeze(padding, b.int64s('axes', [-1])), b.scalar('pad', options.padValue ?? 0));
  b.output(b.op.Add(scores, padded), 'logits', tensorType(DataType.FLOAT, ['batch', 'seq', CLASSES]));
  const file = path.join(dir, `${name}.onnx`);
  saveModel(b.model, file);
  return file;
}

const original = tokenModel('original');
const rewritten = tokenModel('rewritten', { noise: 1.5 });

/** Ragged samples with labels at some positions. */
function samples(count: number): { ids: number[]; labels: number[] }[] {
  const rng = new Rng(3, 'samples');
  return Array.from({ length: count }, (_, i) => {
    const length = 3 + ((i * 5) % 9);
    const ids = Array.from({ length }, () => Math.floor(rng.next() * VOCAB));
    const labels = ids.map((id, j) => (j % 3 === 0 ? (id * 7) % CLASSES : -100));
    return { ids, labels };
  });
}

function writeJsonl(file: string, rows: object[]): string {
  fs.writeFileSync(file, `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
  return file;
}

/** The same metrics computed plainly: softmax, argmax, KL and cross-entropy position by position. */
function plainMetrics(tableA: number[][], tableB: number[][], data: { ids: number[]; labels: number[] }[]) {
  const softmax = (x: number[]) => {
    const m = Math.max(...x);
    const e = x.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  const argmax = (x: number[]) => x.indexOf(Math.max(...x));
  let positions = 0;
  let agree = 0;
  let agree5 = 0;
  let kl = 0;
  let labelled = 0;
  const correct = [0, 0];
  const nll = [0, 0];
  for (const { ids, labels } of data) {
    ids.forEach((id, j) => {
      const [a, b] = [tableA[id], tableB[id]];
      const [p, q] = [softmax(a), softmax(b)];
      positions++;
      if (argmax(a) === argmax(b)) agree++;
      const top5 = [...b.keys()].sort((x, y) => b[y] - b[x] || x - y).slice(0, 5);
      if (top5.includes(argmax(a))) agree5++;
      kl += p.reduce((s, pi, c) => s + pi * (Math.log(pi) - Math.log(q[c])), 0);
      if (labels[j] < 0) return;
      labelled++;
      if (argmax(a) === labels[j]) correct[0]++;
      if (argmax(b) === labels[j]) correct[1]++;
      nll[0] -= Math.log(p[labels[j]]);
      nll[1] -= Math.log(q[labels[j]]);
    });
  }
  return {
    positions,
    top1: agree / positions,
    top5: agree5 / positions,
    kl: kl / positions,
    accuracy: correct.map((c) => c / labelled),
    loss: nll.map((n) => n / labelled),
  };
}

function tableOf(file: string): number[][] {
  const t = loadModel(file)
    .graph.initializers.find((v) => v.name === 'table')!
    .initializer!.toFloat32();
  return Array.from({ length: VOCAB }, (_, i) => Array.from(t.subarray(i * CLASSES, (i + 1) * CLASSES)));
}

describe('class and task metrics', () => {
  it('agree with a plain computation on the same positions', async () => {
    const data = samples(13);
    const file = writeJsonl(
      path.join(dir, 'plain.jsonl'),
      data.map((s) => ({ input_ids: s.ids, labels: s.labels })),
    );
    const r = await verifyModels(original, rewritten, { data: openData(file, describeInputs(loadModel(original))), batchSize: 4 });
    const want = plainMetrics(tableOf(original), tableOf(rewritten), data);
    const [out] = r.outputs;
    expect(out.positions).toBe(want.positions);
    expect(out.top1Agreement).toBeCloseTo(want.top1, 12);
    expect(out.top5Agreement).toBeCloseTo(want.top5, 12);
    expect(out.kl).toBeCloseTo(want.kl, 5);
    expect(out.task!.accuracy.original).toBeCloseTo(want.accuracy[0], 12);
    expect(out.task!.accuracy.rewritten).toBeCloseTo(want.accuracy[1], 12);
    expect(out.task!.loss.original).toBeCloseTo(want.loss[0], 5);
    expect(out.task!.loss.rewritten).toBeCloseTo(want.loss[1], 5);
  });

  it('on rows of probabilities, KL and the loss use the values as they are', () => {
    const acc = new PositionAccumulator({ classes: true, probabilities: true });
    const b = [0.7, 0.2, 0.1, 0.1, 0.1, 0.8];
    const a = [0.6, 0.3, 0.1, 0.2, 0.2, 0.6];
    acc.add(b, a, 3, undefined, [0, 1]);
    const kl = (p: number[], q: number[]) => p.reduce((s, pi, i) => s + pi * Math.log(pi / q[i]), 0);
    expect(acc.classStats()!.kl).toBeCloseTo((kl(b.slice(0, 3), a.slice(0, 3)) + kl(b.slice(3), a.slice(3))) / 2, 12);
    expect(acc.taskStats()!.loss.original).toBeCloseTo((-Math.log(0.7) - Math.log(0.1)) / 2, 12);
    expect(acc.taskStats()!.accuracy).toEqual({ original: 0.5, rewritten: 0.5 });
  });
});

describe('data formats', () => {
  const data = samples(10);
  const specs = describeInputs(loadModel(original));

  it('a .jsonl file with ragged rows: batched by length, padded, padding never counted', async () => {
    const file = writeJsonl(
      path.join(dir, 'ragged.jsonl'),
      data.map((s) => ({ input_ids: s.ids, labels: s.labels })),
    );
    // the two models differ only at padded positions: nothing is counted there
    const padDiffers = tokenModel('pad9', { padValue: 9 });
    const r = await verifyModels(original, padDiffers, { data: openData(file, specs), batchSize: 4, maxError: 0 });
    expect(r.pass).toBe(true);
    const real = data.reduce((s, d) => s + d.ids.length, 0);
    expect(r.outputs[0]).toMatchObject({
      maxAbs: 0,
      positions: real,
      compared: real * CLASSES,
      maskedBy: 'attention_mask',
      top1Agreement: 1,
    });
    expect(r.outputs[0].excluded).toBeGreaterThan(0);
    expect(r.inputs).toEqual({ kind: 'data', source: file, format: 'jsonl', samples: 10, batch: 4 });
  });

  it('batches group rows of similar length; labels are padded with -100', () => {
    const file = writeJsonl(
      path.join(dir, 'batches.jsonl'),
      data.map((s) => ({ input_ids: s.ids, labels: s.labels })),
    );
    const batches = openData(file, specs).batches(4);
    expect(batches.map((b) => b.samples.length)).toEqual([4, 4, 2]);
    for (const b of batches) {
      const [rows, seq] = b.feeds.input_ids.dims;
      const mask = b.feeds.attention_mask.toBigInts();
      const labels = b.labels!.toBigInts();
      b.samples.forEach((sample, row) => {
        const n = data[sample].ids.length;
        for (let j = 0; j < seq; j++) {
          expect(mask[row * seq + j]).toBe(j < n ? 1n : 0n);
          if (j >= n) expect(labels[row * seq + j]).toBe(-100n);
        }
      });
      expect(rows).toBe(b.samples.length);
    }
  });

  it('a folder of .npy files, and ONNX test data sets, give the same report as the same samples in .jsonl', async () => {
    const fixed = data.map((d) => ({
      ids: [...d.ids, ...Array(11 - d.ids.length).fill(0)].slice(0, 11),
      labels: [...d.labels, ...Array(11 - d.labels.length).fill(-100)].slice(0, 11),
    }));
    const npyDir = path.join(dir, 'npy');
    fs.mkdirSync(npyDir, { recursive: true });
    const flat = (rows: number[][]) => BigInt64Array.from(rows.flat(), (v) => BigInt(v));
    writeNpy(path.join(npyDir, 'input_ids.npy'), Tensor.fromArray('input_ids', DataType.INT64, [10, 11], flat(fixed.map((d) => d.ids))));
    writeNpy(path.join(npyDir, 'labels.npy'), Tensor.fromArray('labels', DataType.INT64, [10, 11], flat(fixed.map((d) => d.labels))));
    const jsonl = writeJsonl(
      path.join(dir, 'fixed.jsonl'),
      fixed.map((d) => ({ input_ids: d.ids, labels: d.labels })),
    );
    const fromNpy = await verifyModels(original, rewritten, { data: openData(npyDir, specs), batchSize: 5 });
    const fromJsonl = await verifyModels(original, rewritten, { data: openData(jsonl, specs), batchSize: 5 });
    expect(fromNpy.outputs).toEqual(fromJsonl.outputs);
    expect(fromNpy.outputs[0].task).not.toBeNull();
    // test data sets: each set a ready batch
    const sets = path.join(dir, 'sets');
    for (let s = 0; s < 2; s++) {
      const folder = path.join(sets, `test_data_set_${s}`);
      fs.mkdirSync(folder, { recursive: true });
      const rows = fixed.slice(s * 5, s * 5 + 5);
      fs.writeFileSync(
        path.join(folder, 'input_0.pb'),
        encodeTensor(Tensor.fromArray('input_ids', DataType.INT64, [5, 11], flat(rows.map((d) => d.ids)))),
      );
      fs.writeFileSync(
        path.join(folder, 'input_1.pb'),
        encodeTensor(Tensor.fromArray('attention_mask', DataType.INT64, [5, 11], new BigInt64Array(55).fill(1n))),
      );
    }
    const fromSets = await verifyModels(original, rewritten, { data: openData(sets, specs) });
    expect(fromSets.outputs[0].top1Agreement).toBeCloseTo(fromJsonl.outputs[0].top1Agreement!, 12);
    expect(fromSets.inputs).toMatchObject({ format: 'onnx-test-data', samples: 2 });
  });

  it('--samples keeps the first N; skip leaves out the first ones', () => {
    const file = writeJsonl(
      path.join(dir, 'n.jsonl'),
      data.map((s) => ({ input_ids: s.ids })),
    );
    expect(openData(file, specs, { samples: 3 }).size).toBe(3);
    expect(openData(file, specs, { skip: 8 }).size).toBe(2);
  });
});

describe('bad data: one line naming the file, the sample and the input', () => {
  const specs = describeInputs(loadModel(original));
  const jsonl = (name: string, lines: string[]) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  };
  const cases: [string, () => string, string][] = [
    [
      'an input the model does not have',
      () => jsonl('a.jsonl', ['{"input_ids": [1, 2]}', '{"input_idz": [1]}']),
      "a.jsonl: line 2: 'input_idz' is not an input of the model (inputs: input_ids, attention_mask)",
    ],
    ['a float where ids go', () => jsonl('b.jsonl', ['{"input_ids": [1, 2.5]}']), 'b.jsonl: line 1: input_ids: 2.5 is not an integer'],
    [
      'an id outside the embedding table',
      () => jsonl('c.jsonl', ['{"input_ids": [1, 2]}', '{"input_ids": [3, 10, 4]}']),
      'c.jsonl: line 2: input_ids: id 10 at position 1 is outside the embedding table (0-9)',
    ],
    [
      'a row of another rank',
      () => jsonl('d.jsonl', ['{"input_ids": [[1, 2]]}']),
      "d.jsonl: line 1: input_ids: rank 2 per sample, but the model's input [batch, seq] takes rank 1 per sample",
    ],
    [
      'inputs of different lengths in one row',
      () => jsonl('e.jsonl', ['{"input_ids": [1, 2, 3], "attention_mask": [1, 1]}']),
      'e.jsonl: line 1: attention_mask has 2 positions where input_ids has 3',
    ],
    [
      'ragged nesting',
      () => jsonl('f.jsonl', ['{"input_ids": [1, [2]]}']),
      'f.jsonl: line 1: input_ids: ragged nesting at depth 2 (rows of different lengths)',
    ],
    ['not JSON', () => jsonl('g.jsonl', ['{"input_ids": [1,']), 'g.jsonl: line 1: not JSON'],
    [
      'labels that are not class ids',
      () => jsonl('h.jsonl', ['{"input_ids": [1, 2], "labels": [1, -3]}']),
      'h.jsonl: line 1: labels: -3 is not a class id (or -100 to ignore)',
    ],
    [
      'labels of another length',
      () => jsonl('i.jsonl', ['{"input_ids": [1, 2], "labels": [1]}']),
      'i.jsonl: line 1: 1 labels for 2 positions',
    ],
    [
      'a .npy of floats for ids',
      () => {
        const folder = path.join(dir, 'floats');
        fs.mkdirSync(folder, { recursive: true });
        writeNpy(path.join(folder, 'input_ids.npy'), Tensor.fromArray('x', DataType.FLOAT, [2, 3], new Float32Array(6)));
        return folder;
      },
      'input_ids.npy: float values, but input input_ids takes int64',
    ],
    [
      '.npy files with different sample counts',
      () => {
        const folder = path.join(dir, 'counts');
        fs.mkdirSync(folder, { recursive: true });
        writeNpy(path.join(folder, 'input_ids.npy'), Tensor.fromArray('x', DataType.INT64, [2, 3], new BigInt64Array(6)));
        writeNpy(path.join(folder, 'attention_mask.npy'), Tensor.fromArray('x', DataType.INT64, [3, 3], new BigInt64Array(9)));
        return folder;
      },
      'input_ids.npy has 2 samples but',
    ],
    ['a missing file', () => path.join(dir, 'none.jsonl'), 'none.jsonl: no such file or folder'],
    [
      'a file that is not .jsonl',
      () => jsonl('j.csv', ['1,2']),
      'j.csv: data must be a .jsonl file or a folder (.npy files or ONNX test data sets)',
    ],
  ];
  for (const [what, make, message] of cases) {
    it(what, () => {
      expect(() => openData(make(), specs)).toThrow(message);
    });
  }

  it('on the command line: exit 2, one line, before anything runs or is written', () => {
    const file = jsonl('k.jsonl', ['{"input_ids": [1, 2]}', '{"input_ids": [3, 99]}']);
    const v = vcompile('verify', original, rewritten, '--data', file);
    expect(v.code).toBe(2);
    expect(v.stderr).toBe('vcompile: k.jsonl: line 2: input_ids: id 99 at position 1 is outside the embedding table (0-9)\n');
    // a compile checks its data before it compiles: the BERT fixture's table has 1000 rows
    const bad = jsonl('bert.jsonl', ['{"input_ids": [5, 1000]}']);
    const out = path.join(dir, 'never.onnx');
    const c = vcompile(path.join(repo, 'fixtures/bert_opset14.onnx'), '--plugin', 'builtin:mean:2', '-o', out, '--data', bad);
    expect(c.code).toBe(2);
    expect(c.stderr).toBe('vcompile: bert.jsonl: line 1: input_ids: id 1000 at position 1 is outside the embedding table (0-999)\n');
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe('vcompile verify --data', () => {
  it('reports the class and task metrics, gates on them, and says where the inputs came from', () => {
    const data = samples(12);
    const file = writeJsonl(
      path.join(dir, 'cli.jsonl'),
      data.map((s) => ({ input_ids: s.ids, labels: s.labels })),
    );
    const r = vcompile('verify', original, rewritten, '--data', file, '--batch', '4', '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.inputs).toEqual({ kind: 'data', source: file, format: 'jsonl', samples: 12, batch: 4 });
    expect(report.cases).toEqual([]);
    const [out] = report.outputs;
    expect(Object.keys(out.task)).toEqual(['accuracy', 'loss']);
    const text = vcompile('verify', original, rewritten, '--data', file);
    expect(text.stdout).toMatch(/^task logits \(labels\): accuracy \S+% -> \S+% \([-+]\d+\.\d\d points\), loss \d+\.\d{4} -> \d+\.\d{4}$/m);
    expect(text.stdout).not.toContain('note: these inputs are generated');
    const gated = vcompile('verify', original, rewritten, '--data', file, '--min-top1-agreement', '0.999');
    expect(gated.code).toBe(1);
    expect(gated.stderr).toMatch(/^vcompile: verification failed: logits: top-1 agreement \d+\.\d\d% < 99\.90%\n$/);
    const drop = vcompile('verify', original, rewritten, '--data', file, '--max-accuracy-drop', '-1');
    expect(drop.code).toBe(2);
    expect(drop.stderr).toBe('vcompile: --max-accuracy-drop must be a number >= 0, got -1\n');
  });

  it('--logits none: no class metrics; --logits NAME for a name the model does not have is refused', () => {
    const file = writeJsonl(
      path.join(dir, 'l.jsonl'),
      samples(4).map((s) => ({ input_ids: s.ids })),
    );
    const none = JSON.parse(vcompile('verify', original, rewritten, '--data', file, '--logits', 'none', '--json').stdout);
    expect(none.outputs[0].top1Agreement).toBeNull();
    const bad = vcompile('verify', original, rewritten, '--data', file, '--logits', 'scores');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(`vcompile: --logits scores: ${original} has no such output (outputs: logits)\n`);
  });
});
