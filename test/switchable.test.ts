// One model, many speeds: every branch of a switchable model equals the single-ratio compiled model bit
// for bit, every weight is read one If level deep (what ONNX Runtime prepacks), ONNX Runtime has no shapes
// to merge, the default applies when the ratio is not fed, unknown ratios fail clearly, and the policies
// choose as documented.

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pluginPass, switchablePass } from '../src/compile/passes.js';
import type { Graph, Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import {
  AdaptiveSession,
  type CallContext,
  fixed,
  latencyBudget,
  queueDepth,
  ratioTensor,
  withFeedableRatio,
} from '../src/runtime/adaptive.js';
import { openSession, run } from '../src/runtime/session.js';
import { asCommandLine, asCommandLineAsync } from './helpers/cli-message.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const fixture = (name: string) => path.resolve(import.meta.dirname, '../fixtures', name);

function textFeeds(batch: number, seq: number, vocab: number, withMask = true): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {
    input_ids: Tensor.fromArray(
      'input_ids',
      DataType.INT64,
      [batch, seq],
      BigInt64Array.from({ length: batch * seq }, (_, i) => BigInt((i * 13) % vocab)),
    ),
  };
  if (withMask) {
    const mask = BigInt64Array.from({ length: batch * seq }, (_, i) => (i % seq < Math.max(1, seq - 2 * Math.floor(i / seq)) ? 1n : 0n));
    feeds.attention_mask = Tensor.fromArray('attention_mask', DataType.INT64, [batch, seq], mask);
  }
  return feeds;
}

type Optimization = 'all' | 'disabled';

async function outputsOf(model: Model, feeds: Record<string, Tensor>, optimization: Optimization = 'all'): Promise<Float32Array[]> {
  const session = await openSession(encodeModel(model), { graphOptimizationLevel: optimization });
  try {
    return Object.values(await run(session, feeds)).map((t) => t.toFloat32());
  } finally {
    await session.release();
  }
}

function maxDiff(a: Float32Array[], b: Float32Array[]): number {
  let worst = 0;
  a.forEach((x, i) => x.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - b[i][j])))));
  return worst;
}

/**
 * Every branch against its single-ratio model (the original for k=1), max abs difference 0: the same
 * kernels on the same prepacked weights. With `optimization` 'disabled' ORT runs the graphs as written.
 */
async function expectBranchesMatch(
  load: () => Model,
  plugins: string[],
  feeds: Record<string, Tensor>,
  optimization: Optimization = 'all',
): Promise<void> {
  const switchable = load();
  switchablePass({ plugins: plugins.map((source) => ({ source })) }).run(switchable);
  assertValid(switchable, 'switchable-plugins');
  const session = await openSession(encodeModel(withFeedableRatio(switchable)), { graphOptimizationLevel: optimization });
  for (const [ratio, plugin] of [[1, undefined], ...plugins.map((p) => [Number(p.split(':')[2]), p] as const)] as const) {
    const single = load();
    if (plugin) pluginPass({ plugins: [{ source: plugin }] }).run(single);
    const branch = Object.values(await run(session, { ...feeds, vcompile_ratio: ratioTensor(ratio) })).map((t) => t.toFloat32());
    expect({ ratio, diff: maxDiff(branch, await outputsOf(single, feeds, optimization)) }).toEqual({ ratio, diff: 0 });
  }
  await session.release();
}

describe('every branch equals the single-ratio compiled model', () => {
  for (const [file, plugins] of [
    ['bert_opset14.onnx', ['builtin:mean:2', 'builtin:variator:4']],
    ['t5_encoder.onnx', ['builtin:variator:2:layer', 'builtin:mean:3:layer']],
    ['encoder_decoder.onnx', ['builtin:mean:2:attention', 'builtin:variator:4:attention']],
  ] as const) {
    it(`${file}: ${plugins.join(', ')}`, async () => {
      const vocab = file === 'bert_opset14.onnx' ? 1000 : 512;
      const feeds = textFeeds(2, 7, vocab);
      if (file === 'encoder_decoder.onnx')
        feeds.decoder_input_ids = Tensor.fromArray(
          'decoder_input_ids',
          DataType.INT64,
          [2, 5],
          BigInt64Array.from({ length: 10 }, (_, i) => BigInt(i + 3)),
        );
      await expectBranchesMatch(() => loadModel(fixture(file)), [...plugins], feeds);
    });
  }

  // ORT's optimizer fuses these graphs (spelled-out norms, bias adds) differently on the two sides of an
  // If, which moves results by up to ~6e-7; run as written, they are bit-exact.
  it('on generated transformers, as written', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('ffn' as const, 'attention' as const, 'layer' as const),
        fc.constantFrom('pre' as const, 'post' as const),
        fc.integer({ min: 1, max: 99 }),
        async (scope, norm, seed) => {
          const config: TransformerConfig = {
            layers: 2,
            hidden: 8,
            heads: 2,
            ffnInner: 16,
            norm,
            activation: 'relu',
            bias: true,
            mask: true,
            causal: false,
            vocab: 20,
            seed,
          };
          await expectBranchesMatch(
            () => buildTransformer(config),
            [`builtin:mean:2:${scope}`, `builtin:variator:3:${scope}`],
            textFeeds(2, 5, 20),
            'disabled',
          );
        },
      ),
      { numRuns: 6 },
    );
  }, 60_000);
});

/**
 * For every weight of the main graph (an initializer that is not an input's default, as vcompile_ratio's
 * is), the deepest If level it is read at (0: the main graph), and by which ops.
 */
function weightReads(model: Model): Map<Value, { depth: number; ops: Set<string> }> {
  const weights = new Set(model.graph.initializers.filter((v) => !model.graph.inputs.includes(v)));
  const reads = new Map<Value, { depth: number; ops: Set<string> }>();
  const visit = (graph: Graph, depth: number) => {
    for (const node of graph.nodes) {
      for (const input of node.inputs) {
        if (!input || !weights.has(input)) continue;
        const read = reads.get(input) ?? { depth, ops: new Set<string>() };
        reads.set(input, { depth: Math.max(read.depth, depth), ops: read.ops.add(node.opType) });
      }
      for (const sub of node.subgraphs()) visit(sub, depth + 1);
    }
  };
  visit(model.graph, 0);
  return reads;
}

describe('the structure ONNX Runtime runs fast', () => {
  it('reads every weight at most one If level deep, whatever the number of ratios', () => {
    for (const plugins of [
      ['builtin:mean:2'],
      ['builtin:mean:2', 'builtin:variator:4'],
      ['builtin:mean:2', 'builtin:mean:3', 'builtin:mean:4'],
    ]) {
      const model = loadModel(fixture('bert_opset14.onnx'));
      switchablePass({ plugins: plugins.map((source) => ({ source })) }).run(model);
      const reads = [...weightReads(model).values()];
      const deepest = Math.max(...reads.map((r) => r.depth));
      expect({ plugins, deepest }).toEqual({ plugins, deepest: 1 });
      // the two FFN MatMul weights of each of the 3 layers (and the plugins' own) are read in the branches
      expect(reads.filter((r) => r.depth === 1 && r.ops.has('MatMul')).length).toBeGreaterThanOrEqual(6);
    }
  });

  it('gives ONNX Runtime no shapes to merge: no warning when it loads the model', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-sw-warn-'));
    const files = [
      ['bert_opset14.onnx', ['builtin:mean:2', 'builtin:variator:4']],
      ['t5_encoder.onnx', ['builtin:variator:2:layer', 'builtin:mean:3:layer']],
      ['encoder_decoder.onnx', ['builtin:mean:2:attention']],
    ].map(([name, plugins]) => {
      const model = loadModel(fixture(name as string));
      switchablePass({ plugins: (plugins as string[]).map((source) => ({ source })) }).run(model);
      const file = path.join(dir, name as string);
      saveModel(model, file);
      return file;
    });
    // ORT logs to the process's stderr: a child process opens each model at warning level
    const script = `import * as ort from 'onnxruntime-node';
ort.env.logLevel = 'warning';
for (const file of process.argv.slice(1)) await (await ort.InferenceSession.create(file, { logSeverityLevel: 2 })).release();`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script, ...files], {
      encoding: 'utf8',
      cwd: path.resolve(import.meta.dirname, '..'),
    });
    expect(child.status).toBe(0);
    const warnings = child.stderr.split('\n').filter((line) => line.includes('[W:onnxruntime'));
    // the one warning left is the ratio input's default, once per model (by design: see README)
    expect(warnings.filter((w) => !w.includes('Initializer vcompile_ratio appears in graph inputs'))).toEqual([]);
    expect(warnings).toHaveLength(files.length);
  });
});

describe('the ratio input', () => {
  it('takes its default when not fed', async () => {
    const switchable = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }], defaultRatio: 4 }).run(switchable);
    const single = loadModel(fixture('bert_opset14.onnx'));
    pluginPass({ plugins: [{ source: 'builtin:mean:4' }] }).run(single);
    const feeds = textFeeds(1, 9, 1000);
    expect(maxDiff(await outputsOf(switchable, feeds), await outputsOf(single, feeds))).toBe(0);
  });

  it('an unknown ratio fails with a message naming the ratios', async () => {
    const model = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }] }).run(model);
    const session = await AdaptiveSession.create(model, fixed(3));
    await expect(session.run(textFeeds(1, 4, 1000))).rejects.toThrow('vcompile_ratio must be one of 1, 2, 4, got 3');
    // fed directly, the model itself refuses it
    const raw = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }] }).run(raw);
    const direct = await openSession(encodeModel(withFeedableRatio(raw)));
    await expect(run(direct, { ...textFeeds(1, 4, 1000), vcompile_ratio: ratioTensor(3) })).rejects.toThrow(
      'vcompile_ratio must be one of 1, 2, 4 (layer 0)',
    );
  });

  it('stores the backbone once: the file is the original plus the plugins', () => {
    const original = encodeModel(loadModel(fixture('bert_opset14.onnx'))).length;
    const withTwo = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:variator:2' }, { source: 'builtin:variator:4' }] }).run(withTwo);
    const single2 = loadModel(fixture('bert_opset14.onnx'));
    pluginPass({ plugins: [{ source: 'builtin:variator:2' }] }).run(single2);
    const single4 = loadModel(fixture('bert_opset14.onnx'));
    pluginPass({ plugins: [{ source: 'builtin:variator:4' }] }).run(single4);
    const plugins = encodeModel(single2).length - original + (encodeModel(single4).length - original);
    expect(encodeModel(withTwo).length).toBeLessThan(original + plugins + 64 * 1024);
  });

  it('refuses what it cannot build', () => {
    const model = loadModel(fixture('bert_opset14.onnx'));
    expect(() => switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:variator:2' }] }).run(model)).toThrow(
      'two plugins for all layers have ratio 2; give one per ratio',
    );
    expect(asCommandLine(() => switchablePass({ plugins: [{ source: 'builtin:mean:2' }], defaultRatio: 4 }).run(model))).toThrow(
      '--default-ratio 4 is not among the ratios of the plugins given (1, 2)',
    );
    expect(() =>
      switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4:layer', layer: 1 }] }).run(model),
    ).toThrow('layer 1 gets plugins of different scopes (ffn, layer); a switchable layer needs one scope');
  });
});

describe('policies', () => {
  const call = (batch: number, seq: number, pending = 1, waitedMs = 0): CallContext => ({
    batch,
    seq,
    pending,
    waitedMs,
    ratios: [1, 2, 4],
  });

  it('fixed and queueDepth', () => {
    expect(fixed(2).choose(call(1, 8))).toBe(2);
    const byQueue = queueDepth({ 4: 2, 16: 4 });
    expect([1, 3, 4, 15, 16, 40].map((pending) => byQueue.choose(call(1, 8, pending)))).toEqual([1, 1, 2, 2, 4, 4]);
  });

  it('latencyBudget never picks a ratio whose learned latency exceeds the budget when another meets it', () => {
    const lines = fc.array(
      fc.record({ fixedMs: fc.double({ min: 0, max: 20, noNaN: true }), perToken: fc.double({ min: 0.001, max: 1, noNaN: true }) }),
      { minLength: 3, maxLength: 3 },
    );
    fc.assert(
      fc.property(
        lines,
        fc.double({ min: 1, max: 500, noNaN: true }),
        fc.integer({ min: 1, max: 64 }),
        fc.integer({ min: 1, max: 512 }),
        (latency, budget, batch, seq) => {
          const ratios = [1, 2, 4];
          const policy = latencyBudget(budget);
          const ms = (i: number, tokens: number) => latency[i].fixedMs + latency[i].perToken * tokens;
          // learned from calls at two sizes, as a warm-up and a first real call would give
          for (const tokens of [64, 1024]) ratios.forEach((r, i) => policy.observe(r, { ...call(1, tokens) }, ms(i, tokens)));
          const chosen = policy.choose(call(batch, seq));
          const tokens = batch * seq;
          const meeting = ratios.filter((_, i) => ms(i, tokens) <= budget + 1e-9);
          if (meeting.length) {
            expect(meeting).toContain(chosen);
            expect(chosen).toBe(Math.min(...meeting));
          } else {
            expect(chosen).toBe(4);
          }
        },
      ),
    );
  });

  it('latencyBudget counts the time a call already waited', () => {
    const policy = latencyBudget(100);
    [1, 2, 4].forEach((r, i) => policy.observe(r, call(1, 100), [80, 50, 20][i]));
    expect([0, 30, 60, 90].map((waited) => policy.choose(call(1, 100, 1, waited)))).toEqual([1, 2, 4, 4]);
  });

  it('AdaptiveSession reports the ratio that served each call (fake clock)', async () => {
    const model = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }] }).run(model);
    // A fake clock: the session reads it before and after each run; the second read adds the ratio's cost.
    const cost: Record<number, number> = { 1: 40, 2: 25, 4: 12 };
    let now = 0;
    let reads = 0;
    let running = 1;
    const clock = () => (reads++ % 2 === 0 ? now : (now += cost[running]));
    const session = await AdaptiveSession.create(model, latencyBudget(30), { clock });
    const runAt = session.runAt.bind(session);
    session.runAt = (ratio, feeds, c) => {
      running = ratio;
      return runAt(ratio, feeds, c);
    };
    const feeds = textFeeds(1, 8, 1000);
    await session.warmUp(feeds);
    const served = await session.run(feeds);
    expect(served).toMatchObject({ ratio: 2, ms: 25 });
    expect(session.history.map((h) => h.ratio)).toEqual([1, 2, 4, 2]);
    expect(served.outputs.last_hidden_state.dims).toEqual([1, 8, 64]);
    await session.release();
  });
});

describe('vcompile bench --ratios', () => {
  it('times every branch of a switchable model as its own entry, on one session', async () => {
    const { benchModels } = await import('../src/bench/latency.js');
    const { saveModel } = await import('../src/onnx/file.js');
    const os = await import('node:os');
    const fs = await import('node:fs');
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-sw-')), 'sw.onnx');
    const model = loadModel(fixture('bert_opset14.onnx'));
    switchablePass({ plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }] }).run(model);
    saveModel(model, file);
    const report = await benchModels([file, fixture('bert_opset14.onnx')], { batches: [1], seqs: [8], warmup: 0, runs: 2, ratios: [1, 4] });
    expect(report.models.map((m) => [m.label.endsWith('@k=1'), m.label.endsWith('@k=4'), m.ratio])).toEqual([
      [true, false, 1],
      [false, true, 4],
      [false, false, null],
    ]);
    expect(report.points[0].results.every((r) => r.samplesMs.length === 2)).toBe(true);
    // measured in a child process, the switchable file once (opened there without the ratio's default)
    expect(report.models.map((m) => m.memoryMiB! > 0)).toEqual([true, true, true]);
    expect(report.models[0].memoryMiB).toBe(report.models[1].memoryMiB);
    await expect(
      asCommandLineAsync(() => benchModels([file], { batches: [1], seqs: [8], warmup: 0, runs: 1, ratios: [3] })),
    ).rejects.toThrow('--ratios 3 is not offered (the model has 1, 2, 4)');
  });
});
