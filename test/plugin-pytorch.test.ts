// The plugin pass against an independent reference: fixtures/generate_plugins.py applies Variator plugins
// to BERT- and T5-style encoders by hand in PyTorch (pad, compress, the unchanged block on the short
// sequence with pooled masks and biases, restore, crop) and exports the result. The pass, given the plain
// export and the plugin files, must compute the same thing: checked in onnxruntime on sequence lengths that
// are and are not multiples of k, with padded attention masks.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PluginRequest } from '../passes/plugin/index.js';
import { pluginPass } from '../src/compile/passes.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openSession, run, type Session } from '../src/runtime/session.js';

const DIR = path.resolve('fixtures/plugins');
// The streamlined restore (passes/plugin/streamline.ts) splits the adapter's product, reordering a float sum:
// up to 1.9e-6 here, against 0 without it. 1e-5 leaves room for other CPUs' kernels, not for a wrong function.
const TOLERANCE = 1e-5;
const BATCHES = [1, 3];
// 6 and 9 are multiples of 3, 6 and 8 of 2; 7 of neither; 1 is shorter than any group.
const SEQUENCES = [1, 6, 7, 8, 9];
const PLUGIN_PREFIX = 'vcompile/plugin/';

interface Case {
  name: string;
  base: string;
  plugins: PluginRequest[];
  expected: string;
  vocab: number;
}

const cases: Case[] = JSON.parse(fs.readFileSync(path.join(DIR, 'cases.json'), 'utf8')).cases;

function resolved(requests: PluginRequest[]): PluginRequest[] {
  return requests.map((r) => ({ ...r, source: path.join(DIR, r.source) }));
}

/** ids in [0, vocab); row b of the mask keeps its first max(1, n - 2b) positions. */
function feeds(batch: number, seq: number, vocab: number, seed: number): Record<string, Tensor> {
  const rng = new Rng(seed, `${batch}x${seq}`);
  const ids = BigInt64Array.from({ length: batch * seq }, () => BigInt(rng.int(vocab)));
  const mask = new BigInt64Array(batch * seq);
  for (let row = 0; row < batch; row++) {
    const kept = Math.max(1, seq - 2 * row);
    for (let i = 0; i < kept; i++) mask[row * seq + i] = 1n;
  }
  return {
    input_ids: Tensor.fromArray('input_ids', DataType.INT64, [batch, seq], ids),
    attention_mask: Tensor.fromArray('attention_mask', DataType.INT64, [batch, seq], mask),
  };
}

function maxAbsDifference(a: Tensor, b: Tensor): number {
  expect(a.dims).toEqual(b.dims);
  const x = a.toFloat32();
  const y = b.toFloat32();
  let worst = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    worst = Number.isNaN(d) ? Infinity : Math.max(worst, d);
  }
  return worst;
}

function floatWeights(model: Model, keep: (name: string) => boolean = () => true): Tensor[] {
  return model.graph.initializers
    .filter((v) => keep(v.name) && v.initializer!.dataType === DataType.FLOAT && v.initializer!.dims.reduce((a, b) => a * b, 1) > 1)
    .map((v) => v.initializer!);
}

function sameTensor(a: Tensor, b: Tensor): boolean {
  if (a.dims.length !== b.dims.length || a.dims.some((d, i) => d !== b.dims[i])) return false;
  const x = a.bytes();
  const y = b.bytes();
  return x.length === y.length && x.every((byte, i) => byte === y[i]);
}

/** How many of `weight`'s rows the tensors in `tensors` hold as blocks of whole rows (each block once). */
function rowBlocksOf(weight: Tensor, tensors: Tensor[]): number {
  const bytes = weight.bytes();
  const [rows, columns] = weight.dims as [number, number];
  const rowBytes = bytes.length / rows;
  let covered = 0;
  for (const t of tensors) {
    if (t.dims.length !== 2 || t.dims[1] !== columns || t.dims[0]! >= rows) continue;
    const block = t.bytes();
    const at = (row: number) => block.every((byte, i) => byte === bytes[row * rowBytes + i]);
    const starts = Array.from({ length: rows - t.dims[0]! + 1 }, (_, row) => row).filter(at);
    if (starts.length === 1) covered += t.dims[0]!;
  }
  return covered;
}

describe.each(cases)('plugin pass vs PyTorch: $name', (testCase) => {
  let rewritten: Model;
  let compiled: Session;
  let reference: Session;

  beforeAll(async () => {
    rewritten = loadModel(path.join(DIR, testCase.base));
    pluginPass({ plugins: resolved(testCase.plugins) }).run(rewritten);
    compiled = await openSession(encodeModel(rewritten), { threads: 1 });
    reference = await openSession(path.join(DIR, testCase.expected), { threads: 1 });
  });

  afterAll(async () => {
    await compiled?.release();
    await reference?.release();
  });

  it('rewrites into a valid model', () => {
    expect(verifyModel(rewritten)).toEqual([]);
    expect(rewritten.getMetadata('vcompile.plugins')).toBeDefined();
  });

  it("stores each plugin's weights once, however many layers use it", () => {
    // The pass names its own constants with the same prefix, but those are scalars or int64; the
    // plugin's weights are the float tensors with more than one element. A weight the pass split (the
    // adapter's input product, streamline.ts) is there as its blocks of rows, each once.
    const spliced = floatWeights(rewritten, (name) => name.startsWith(PLUGIN_PREFIX));
    const sources = [...new Set(testCase.plugins.map((p) => p.source))];
    let expectedElements = 0;
    let split = 0;
    for (const source of sources) {
      const own = floatWeights(loadModel(path.join(DIR, source)));
      expect(own.length).toBeGreaterThan(0);
      for (const weight of own) {
        expectedElements += weight.size;
        const whole = spliced.filter((t) => sameTensor(t, weight));
        if (whole.length === 1) continue;
        expect(whole).toHaveLength(0);
        expect(rowBlocksOf(weight, spliced)).toBe(weight.dims[0]);
        split++;
      }
    }
    expect(split).toBeGreaterThan(0);
    expect(spliced.reduce((sum, t) => sum + t.size, 0)).toBe(expectedElements);
  });

  it.each(BATCHES.flatMap((batch) => SEQUENCES.map((seq) => [batch, seq] as const)))(
    'batch %i, seq %i matches the hand-applied export',
    async (batch, seq) => {
      const inputs = feeds(batch, seq, testCase.vocab, 7);
      const actual = await run(compiled, inputs);
      const expected = await run(reference, inputs);
      expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
      for (const [name, tensor] of Object.entries(expected)) {
        expect(tensor.dims).toEqual([batch, seq, 32]);
        expect(maxAbsDifference(actual[name]!, tensor), `${name}`).toBeLessThanOrEqual(TOLERANCE);
      }
    },
  );
});
