// Numerical verification: the metrics, the padding rule, the gate (exit 1 with one line naming the
// output), and the check at the end of a compile.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ModelBuilder } from '../src/ir/builder.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { cudaProviderInstalled } from '../src/runtime/session.js';
import { compareValues, verifyModels } from '../src/verify/numeric.js';
import { vcompile } from './helpers/cli.js';

const repo = path.resolve(import.meta.dirname, '..');
const bert = path.join(repo, 'fixtures/bert_opset14.onnx');
const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-verify-'));

/** bert_opset14 with one element of one FFN weight changed by `delta`. */
function perturbedBert(delta: number): string {
  const model = loadModel(bert);
  const weight = model.graph.initializers.find((v) => v.initializer!.dims.length === 2 && v.initializer!.dims[1] === 256)!;
  const values = weight.initializer!.toFloat32();
  values[123] += delta;
  weight.initializer!.storage = { kind: 'raw', bytes: new Uint8Array(values.buffer) };
  const file = path.join(tempDir(), 'perturbed.onnx');
  saveModel(model, file);
  return file;
}

describe('metrics', () => {
  it('max, mean, relative error and cosine as the README defines them', () => {
    const s = compareValues([3, 4, 0], [3, 4, 1]);
    expect(s.maxAbs).toBe(1);
    expect(s.meanAbs).toBeCloseTo(1 / 3, 12);
    expect(s.relative).toBeCloseTo(1 / 5, 12); // ||a - b|| / ||b|| = 1 / 5
    expect(s.cosine).toBeCloseTo(25 / (5 * Math.sqrt(26)), 12);
    expect(compareValues([0, 0], [0, 0])).toMatchObject({ relative: 0, cosine: 1 });
    expect(compareValues([0, 0], [1, 0])).toMatchObject({ relative: Infinity, cosine: 0 });
    expect(compareValues([1, -1], [-1, 1]).cosine).toBeCloseTo(-1, 12);
  });

  it('masked elements are left out; NaN and infinities count as equal only when they match', () => {
    const keep = new Uint8Array([1, 0, 1]);
    expect(compareValues([1, 2, 3], [1, 99, 3], keep)).toMatchObject({ compared: 2, excluded: 1, maxAbs: 0, cosine: 1 });
    expect(compareValues([NaN, Infinity, 1], [NaN, Infinity, 1])).toMatchObject({ nonFinite: 0, maxAbs: 0 });
    expect(compareValues([1, Infinity], [NaN, -Infinity]).nonFinite).toBe(2);
  });
});

describe('verifyModels', () => {
  it('identical models: zero error on every case of the grid', async () => {
    const r = await verifyModels(bert, bert, { maxError: 0, minCosine: 1, seqs: [16, 37] });
    expect(r.pass).toBe(true);
    expect(r.cases.map((c) => [c.batch, c.seq])).toEqual([
      [1, 16],
      [1, 37],
      [3, 16],
      [3, 37],
    ]);
    expect(r.outputs).toHaveLength(1);
    expect(r.outputs[0]).toMatchObject({
      name: 'last_hidden_state',
      maskedBy: 'attention_mask',
      maxAbs: 0,
      meanAbs: 0,
      relative: 0,
      cosine: 1,
      pass: true,
    });
    // batch 3 rows keep 16, 11, 6 and 37, 25, 13 positions: the padded rest is excluded
    expect(r.outputs[0].excluded).toBe(64 * (5 + 10 + 12 + 24));
  });

  it('an output that differs only at padded positions passes; the same difference elsewhere does not', async () => {
    const build = (padValue: number) => {
      const b = new ModelBuilder(17);
      const ids = b.input('input_ids', tensorType(DataType.INT64, ['batch', 'seq']));
      const mask = b.input('attention_mask', tensorType(DataType.INT64, ['batch', 'seq']));
      const real = b.op.Cast(mask, { to: DataType.FLOAT });
      const padding = b.op.Sub(b.scalar('one', 1), real);
      const y = b.op.Add(b.op.Cast(ids, { to: DataType.FLOAT }), b.op.Mul(padding, b.scalar('pad', padValue)));
      b.output(y, 'per_token', tensorType(DataType.FLOAT, ['batch', 'seq']));
      // the same values with other dim names: not tied to the mask, so compared everywhere
      b.output(b.op.Identity(y), 'per_token_unmasked', tensorType(DataType.FLOAT, ['rows', 'columns']));
      const file = path.join(tempDir(), `pad${padValue}.onnx`);
      saveModel(b.model, file);
      return file;
    };
    const r = await verifyModels(build(0), build(5), { maxError: 1e-6, batches: [3], seqs: [8] });
    const [masked, unmasked] = r.outputs;
    expect(masked).toMatchObject({
      name: 'per_token',
      maskedBy: 'attention_mask',
      maxAbs: 0,
      pass: true,
      compared: 8 + 6 + 3,
      excluded: 2 + 5,
    });
    expect(unmasked).toMatchObject({ name: 'per_token_unmasked', maskedBy: null, maxAbs: 5, pass: false, compared: 24, excluded: 0 });
    expect(r.failures).toEqual(['per_token_unmasked: max abs error 5 > 0.000001 at batch 3, seq 8']);
  });
});

describe('vcompile verify', () => {
  it('a perturbed weight fails the gate: exit 1 and one line naming the output', () => {
    const perturbed = perturbedBert(0.5);
    const r = vcompile('verify', bert, perturbed, '--max-error', '1e-4', '--seq', '16,37');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^vcompile: verification failed: last_hidden_state: max abs error \S+ > 0.0001 at batch \d, seq \d+\n$/);
    expect(r.stdout).toMatch(/last_hidden_state .* FAIL/);
    // without thresholds the same comparison is a report
    expect(vcompile('verify', bert, perturbed).code).toBe(0);
  });

  it('--json follows the documented schema', () => {
    const r = vcompile('verify', bert, bert, '--json', '--batch', '2', '--seq', '5', '--min-cosine', '0.999');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(Object.keys(report).sort()).toEqual([
      'cases',
      'ep',
      'failures',
      'inputs',
      'original',
      'outputs',
      'pass',
      'rewritten',
      'seed',
      'thresholds',
    ]);
    expect(report).toMatchObject({
      original: bert,
      rewritten: bert,
      ep: 'cpu',
      seed: 0,
      thresholds: { maxError: null, minCosine: 0.999, minTop1Agreement: null, maxKl: null, maxAccuracyDrop: null },
      inputs: { kind: 'grid', note: 'as given' },
      failures: [],
      pass: true,
    });
    expect(report.cases).toEqual([
      {
        batch: 2,
        seq: 5,
        dims: { batch: 2, seq: 5 },
        outputs: [
          {
            name: 'last_hidden_state',
            shape: [2, 5, 64],
            compared: 512,
            excluded: 128,
            maxAbs: 0,
            meanAbs: 0,
            relative: 0,
            cosine: 1,
            nonFinite: 0,
          },
        ],
      },
    ]);
    expect(Object.keys(report.outputs[0]).sort()).toEqual([
      'compared',
      'cosine',
      'cosinePerPosition',
      'excluded',
      'kl',
      'maskedBy',
      'maxAbs',
      'meanAbs',
      'name',
      'nonFinite',
      'pass',
      'positions',
      'relative',
      'task',
      'top1Agreement',
      'top5Agreement',
    ]);
    // the hidden states are not class scores: no class metrics, no task
    expect(report.outputs[0]).toMatchObject({
      positions: 8,
      cosinePerPosition: { mean: 1, p5: 1 },
      top1Agreement: null,
      kl: null,
      task: null,
    });
  });

  it.skipIf(cudaProviderInstalled())('--ep cuda without the provider: exit 2 and how to install it; --ep auto: a one-line notice', () => {
    const cuda = vcompile('verify', bert, bert, '--ep', 'cuda');
    expect(cuda.code).toBe(2);
    expect(cuda.stderr).toMatch(
      /^vcompile: --ep cuda: onnxruntime-node's CUDA execution provider is not installed .*`ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --ignore-scripts=false`.*\n$/,
    );
    const auto = vcompile('verify', bert, bert, '--ep', 'auto', '--batch', '1', '--seq', '4');
    expect(auto.code).toBe(0);
    expect(auto.stderr).toMatch(
      /^vcompile: note: --ep auto: running on CPU: onnxruntime-node's CUDA execution provider is not installed [^\n]*\n$/,
    );
  });
});

describe('verification at the end of a compile', () => {
  it('is on by default, reported under verify, and skipped with --no-verify', () => {
    const out = path.join(tempDir(), 'm.onnx');
    const r = vcompile(bert, '--plugin', 'builtin:identity:1', '-o', out, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.verify).toMatchObject({ original: bert, rewritten: out, pass: true, thresholds: {} });
    // the default grid: batch 1 and 3 (padded rows), a length the transformer sees as >= 32 positions
    expect(report.verify.cases.map((c: { batch: number; seq: number }) => [c.batch, c.seq])).toEqual([
      [1, 35],
      [3, 35],
    ]);
    expect(report.verify.inputs.note).toBe('seq 35: 35 positions inside the transformer, not a multiple of any of 2, 3, 4');
    expect(JSON.parse(vcompile(bert, '--plugin', 'builtin:identity:1', '-o', out, '--json', '--no-verify').stdout).verify).toBeNull();
    // report only unless a gate is given; ok when it is given and met
    expect(vcompile(bert, '--plugin', 'builtin:identity:1', '-o', out).stdout).toMatch(
      /^verify last_hidden_state: max abs error 0\.00e\+0, cosine 1\.000000 over 2 cases \(padding masked by attention_mask\): report only \(no gate\)$/m,
    );
    expect(vcompile(bert, '--plugin', 'builtin:identity:1', '-o', out, '--max-error', '0').stdout).toMatch(
      /^verify last_hidden_state: max abs error 0\.00e\+0, cosine 1\.000000 over 2 cases \(padding masked by attention_mask\): ok$/m,
    );
  });

  it('is skipped, saying so, when no pass changed the model', () => {
    const out = path.join(tempDir(), 'same.onnx');
    const r = vcompile(bert, '-o', out);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`verify: skipped: no pass changed the model (${out} computes what ${bert} computes)`);
    expect(JSON.parse(vcompile(bert, '-o', out, '--json').stdout)).toMatchObject({
      verify: null,
      verifySkipped: 'no pass changed the model',
    });
  });

  it('reports a lossy plugin without failing, and gates it when thresholds are given', () => {
    const out = path.join(tempDir(), 'mean4.onnx');
    const report = JSON.parse(vcompile(bert, '--plugin', 'builtin:mean:4', '-o', out, '--json').stdout);
    expect(report.verify.pass).toBe(true);
    const [output] = report.verify.outputs;
    expect(output.maxAbs).toBeGreaterThan(1e-3);
    const gated = vcompile(bert, '--plugin', 'builtin:mean:4', '-o', out, '--max-error', '1e-4');
    expect(gated.code).toBe(1);
    expect(gated.stderr.trim().split('\n')).toHaveLength(1);
    expect(fs.existsSync(out)).toBe(true);
  });
});

describe('checks that cannot crash the process', () => {
  it('a model with optional or sequence outputs is refused up front (ONNX Runtime crashed on it)', async () => {
    const file = '/usr/share/libonnx-testdata/data/node/test_if_opt/model.onnx';
    if (!fs.existsSync(file)) return;
    await expect(verifyModels(file, file)).rejects.toThrow(
      /output \S+ is of optional type, not a tensor; vcompile compares tensor outputs only$/,
    );
  });

  it('a native crash of the comparing process becomes one line naming the models', async () => {
    const crash = path.join(tempDir(), 'crash.mjs');
    fs.writeFileSync(crash, "process.on('message', () => process.kill(process.pid, 'SIGSEGV'));\n");
    const { verifyIsolated } = await import('../src/verify/isolated.js');
    await expect(verifyIsolated(bert, 'x.onnx', {}, { childModule: crash })).rejects.toThrow(
      `onnxruntime crashed while comparing x.onnx with ${bert} (signal SIGSEGV); the models were not compared`,
    );
  });
});

describe('the check after a switchable compile', () => {
  it('checks every ratio and reports each; --default-ratio 1 no longer hides the compressed branches', () => {
    const out = path.join(tempDir(), 'sw.onnx');
    const r = vcompile(
      bert,
      '--switchable',
      '--plugin',
      'builtin:mean:2',
      '--plugin',
      'builtin:mean:4',
      '--default-ratio',
      '1',
      '-o',
      out,
      '--json',
    );
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.verifyRatios.map((v: { ratio: number }) => v.ratio)).toEqual([1, 2, 4]);
    expect(report.verify.ratio).toBe(1);
    expect(report.verifyRatios[0].outputs[0].maxAbs).toBe(0);
    expect(report.verifyRatios[1].outputs[0].maxAbs).toBeGreaterThan(0);
    const gated = vcompile(
      bert,
      '--switchable',
      '--plugin',
      'builtin:mean:2',
      '--plugin',
      'builtin:mean:4',
      '-o',
      out,
      '--max-error',
      '1e-6',
    );
    expect(gated.code).toBe(1);
    expect(gated.stderr).toMatch(
      /^vcompile: verification failed: last_hidden_state: max abs error \S+ > 0\.000001 at batch \d, seq \d+ at vcompile_ratio 2 \(/,
    );
    expect(gated.stdout).toMatch(/^verify last_hidden_state at ratio 1: .*: ok$/m);
  });
});

describe('check options are refused before any work', () => {
  const cases: [string[], string][] = [
    [['--max-error', 'abc'], '--max-error must be a number >= 0, got NaN'],
    [['--min-cosine', '2'], '--min-cosine must be between -1 and 1, got 2'],
    [['--dim', 'seq=0'], "--dim: 'seq=0' is not NAME=POSITIVE_INTEGER"],
    [['--min-top1-agreement', '1.5'], '--min-top1-agreement must be between 0 and 1, got 1.5'],
    [['--samples', '3'], '--samples goes with --data'],
  ];
  for (const [flags, message] of cases) {
    it(flags.join(' '), () => {
      const out = path.join(tempDir(), 'never.onnx');
      const r = vcompile(bert, '--plugin', 'builtin:mean:2', '-o', out, ...flags);
      expect(r.stderr).toBe(`vcompile: ${message}\n`);
      expect(r.code).toBe(2);
      expect(fs.existsSync(out)).toBe(false);
    });
  }
});
