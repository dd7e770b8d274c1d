// The modular pass against an independent reference: fixtures/generate_modules.py replaces runs of a
// small BERT's layers by modular layers by hand in PyTorch and exports the result, and exports the same
// modular layers alone under the module contract. The pass, given the plain export and the module files,
// must compute the same thing (onnxruntime, padded masks, several lengths), and carry exactly the weights
// of the hand-replaced model: the removed layers' weights gone, each module's weights once.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ModularReport, ModuleRequest } from '../passes/modular/index.js';
import { modularPass } from '../src/compile/passes.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openSession, run, type Session } from '../src/runtime/session.js';

const DIR = path.resolve('fixtures/modules');
const TOLERANCE = 1e-4;
const manifest = JSON.parse(fs.readFileSync(path.join(DIR, 'cases.json'), 'utf8')) as {
  hidden: number;
  layers: number;
  vocab: number;
  cases: { name: string; base: string; modules: ModuleRequest[]; expected: string }[];
};

function feeds(batch: number, seq: number, seed: number): Record<string, Tensor> {
  const rng = new Rng(seed, `${batch}x${seq}`);
  const ids = BigInt64Array.from({ length: batch * seq }, () => BigInt(rng.int(manifest.vocab)));
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

/** Elements of the learned tensors (float, more than one element): what a model's parameters weigh. */
function parameterElements(model: Model): number {
  return model.graph.initializers
    .map((v) => v.initializer!)
    .filter((t) => t.dataType === DataType.FLOAT && t.size > 1)
    .reduce((sum, t) => sum + t.size, 0);
}

describe.each(manifest.cases)('modular pass vs PyTorch: $name', (testCase) => {
  let compiled: Model;
  let report: ModularReport;
  let mine: Session;
  let reference: Session;

  beforeAll(async () => {
    compiled = loadModel(path.join(DIR, testCase.base));
    const modules = testCase.modules.map((m) => ({ ...m, source: path.join(DIR, m.source) }));
    report = modularPass({ modules }).run(compiled).report;
    mine = await openSession(encodeModel(compiled), { threads: 1 });
    reference = await openSession(path.join(DIR, testCase.expected), { threads: 1 });
  });

  afterAll(async () => {
    await mine?.release();
    await reference?.release();
  });

  it('rewrites into a valid model and says which layers are original', () => {
    assertValid(compiled, 'modules');
    const replaced = new Set(testCase.modules.flatMap((m) => Array.from({ length: m.end - m.start + 1 }, (_, i) => m.start + i)));
    const kept = Array.from({ length: manifest.layers }, (_, i) => i).filter((i) => !replaced.has(i));
    // each module here is one BERT layer, which the analysis finds again as a layer of its own
    expect(report.layerMap.filter((i) => i !== null)).toEqual(kept);
    expect(report.layerMap).toHaveLength(kept.length + testCase.modules.length);
    expect(JSON.parse(compiled.getMetadata('vcompile.modules')!)).toHaveLength(testCase.modules.length);
  });

  it('carries the weights of the hand-replaced model: removed layers gone, each module once', () => {
    expect(parameterElements(compiled)).toBe(parameterElements(loadModel(path.join(DIR, testCase.expected))));
  });

  it.each([
    [1, 1],
    [1, 7],
    [3, 5],
    [3, 12],
  ])('batch %i, seq %i matches the hand-replaced export', async (batch, seq) => {
    const inputs = feeds(batch, seq, 11);
    const actual = await run(mine, inputs);
    const expected = await run(reference, inputs);
    const [a, b] = [actual.last_hidden_state, expected.last_hidden_state];
    expect(a.dims).toEqual([batch, seq, manifest.hidden]);
    expect(b.dims).toEqual(a.dims);
    const x = a.toFloat32();
    const y = b.toFloat32();
    let worst = 0;
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Number.isNaN(x[i] - y[i]) ? Infinity : Math.abs(x[i] - y[i]));
    expect(worst).toBeLessThanOrEqual(TOLERANCE);
  });
});
