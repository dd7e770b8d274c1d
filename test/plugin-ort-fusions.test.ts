// After the plugin pass, ONNX Runtime's own optimizer must still apply every fusion it applied to the
// original (LayerNorm, Gelu, attention MatMul fusions): the rewrite must not cost speed beyond the
// plugin's own arithmetic by hiding patterns from the optimizer.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { pluginPass } from '../src/compile/passes.js';
import { summarize } from '../src/inspect/summary.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';

const repo = path.resolve(import.meta.dirname, '..');

async function optimizedOps(bytes: Uint8Array): Promise<Record<string, number>> {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-opt-')), 'optimized.onnx');
  const session = await ort.InferenceSession.create(bytes, {
    graphOptimizationLevel: 'extended',
    optimizedModelFilePath: out,
    executionProviders: ['cpu'],
    logSeverityLevel: 4,
  });
  await session.release();
  return summarize(loadModel(out)).ops;
}

/** Ops that only appear through ORT's fusions. */
function fused(ops: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(ops).filter(([op]) => op.startsWith('com.microsoft::') || op === 'LayerNormalization'));
}

describe('ORT fusions survive the plugin pass', () => {
  for (const [fixture, plugin] of [
    ['bert_opset14.onnx', 'builtin:mean:2'],
    ['bert_opset14.onnx', 'builtin:variator:2:attention'],
    ['bert_opset14.onnx', 'builtin:mean:4:layer'],
    ['encoder_decoder.onnx', 'builtin:variator:4'],
    ['bert_opset17.onnx', 'builtin:mean:3:layer'],
  ]) {
    it(`${fixture} with ${plugin}`, async () => {
      const file = path.join(repo, 'fixtures', fixture);
      const before = fused(await optimizedOps(encodeModel(loadModel(file))));
      const model = loadModel(file);
      pluginPass({ plugins: [{ source: plugin }] }).run(model);
      const after = fused(await optimizedOps(encodeModel(model)));
      expect(Object.keys(before).length).toBeGreaterThan(0);
      for (const [op, count] of Object.entries(before)) expect({ op, count: after[op] ?? 0 }).toEqual({ op, count });
    });
  }
});

describe('ORT fusions in a switchable model', () => {
  it('every branch of every layer keeps its fused Gelu (the If outputs are typed)', async () => {
    const { switchablePass } = await import('../src/compile/passes.js');
    const model = loadModel(path.join(repo, 'fixtures', 'bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:variator:4' }] }).run(model);
    const ops = await optimizedOps(encodeModel(model));
    // 3 layers x 3 branches (k = 1, 2, 4), each with its FFN's BiasGelu
    expect(ops['com.microsoft::BiasGelu']).toBe(9);
  });
});
