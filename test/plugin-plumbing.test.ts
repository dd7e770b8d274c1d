// How the plugin pass pads and crops the stream (passes/plugin/index.ts, sequence.ts): not at all where
// the analysis proves the length a multiple of k; once per run of consecutive layer-scope blocks (the tail
// zeroed between them, where a crop and a pad were); the pad arithmetic once per length and ratio. The
// outputs are bit for bit those of padding every block, checked against compiles that cannot share (a
// fixed length against a dynamic one, a switchable model's If branches), with ORT's graph optimizations
// off so that equal computations give equal bits; test/plugin-pass.test.ts and plugin-pytorch.test.ts
// check the function against a TS reference and PyTorch.
import { describe, expect, it } from 'vitest';
import { analyzeTransformer } from '../src/analysis/index.js';
import { inferShapes } from '../src/analysis/shapes.js';
import { pluginPass, switchablePass } from '../src/compile/passes.js';
import type { Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { openSession, run } from '../src/runtime/session.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const config: TransformerConfig = {
  layers: 3,
  hidden: 8,
  heads: 2,
  ffnInner: 16,
  norm: 'post',
  activation: 'relu',
  bias: true,
  mask: true,
  causal: false,
  vocab: 30,
  seed: 11,
};

/** The model with its inputs fixed at [batch, seq] (the analysis then knows the length). */
function fixedAt(model: Model, batch: number, seq: number): Model {
  for (const input of model.graph.inputs) if (!input.initializer) input.type = tensorType(DataType.INT64, [batch, seq]);
  return model;
}

function compiled(plugin: string, options: { batch?: number; seq?: number } = {}): Model {
  const model = buildTransformer(config);
  if (options.seq) fixedAt(model, options.batch ?? 2, options.seq);
  pluginPass({ plugins: [{ source: plugin }] }).run(model);
  assertValid(model, 'plugins');
  return model;
}

/** Nodes of `op` whose data input is the stream ([batch, seq, hidden] float). */
function onStream(model: Model, op: string): number {
  const shapes = inferShapes(model.graph);
  const isStream = (v: Value | null | undefined) => shapes.rank(v) === 3 && shapes.dim(v, -1)?.constant === config.hidden;
  return model.graph.nodes.filter((n) => n.opType === op && isStream(n.inputs[op === 'Where' ? 1 : 0])).length;
}

const count = (model: Model, op: string) => model.graph.nodes.filter((n) => n.opType === op).length;

function feeds(batch: number, seq: number): Record<string, Tensor> {
  const ids = BigInt64Array.from({ length: batch * seq }, (_, i) => BigInt((i * 7) % (config.vocab ?? 30)));
  const mask = BigInt64Array.from({ length: batch * seq }, (_, i) => (i % seq < seq - (Math.floor(i / seq) % 3) ? 1n : 0n));
  return {
    input_ids: Tensor.fromArray('input_ids', DataType.INT64, [batch, seq], ids),
    attention_mask: Tensor.fromArray('attention_mask', DataType.INT64, [batch, seq], mask),
  };
}

/** The outputs on ORT, its graph optimizations off: equal computations then give equal bits. */
async function outputs(model: Model, inputs: Record<string, Tensor>): Promise<Record<string, Float32Array>> {
  const session = await openSession(encodeModel(model), { threads: 1, graphOptimizationLevel: 'disabled' });
  try {
    return Object.fromEntries(Object.entries(await run(session, inputs)).map(([name, t]) => [name, t.toFloat32()]));
  } finally {
    await session.release();
  }
}

function maxAbs(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  return a.reduce((worst, x, i) => Math.max(worst, Math.abs(x - b[i]!)), 0);
}

describe('a length the analysis proves a multiple of k', () => {
  for (const scope of ['ffn', 'attention', 'layer'] as const) {
    it(`${scope} scope: no Pad and no crop of the stream, the outputs of the dynamic compile`, async () => {
      const fixed = compiled(`builtin:variator:4:${scope}`, { seq: 8 });
      expect([onStream(fixed, 'Pad'), onStream(fixed, 'Slice'), onStream(fixed, 'Where')]).toEqual([0, 0, 0]);
      // keep is not padded either: no Pad at all in ffn scope (attention and layer scope pool the mask)
      if (scope === 'ffn') expect(count(fixed, 'Pad')).toBe(0);
      const dynamic = compiled(`builtin:variator:4:${scope}`);
      expect(onStream(dynamic, 'Pad')).toBeGreaterThan(0);
      const inputs = feeds(2, 8);
      const [a, b] = [await outputs(fixed, inputs), await outputs(dynamic, inputs)];
      expect(maxAbs(a.last_hidden_state!, b.last_hidden_state!)).toBe(0);
    });
  }

  it('a fixed length that is not a multiple is padded and cropped in every ffn block', () => {
    const model = compiled('builtin:mean:4', { seq: 6 });
    expect([onStream(model, 'Pad'), onStream(model, 'Slice')]).toEqual([3, 3]);
  });
});

describe('the pad arithmetic', () => {
  it('is computed once for every block of the same length and ratio', () => {
    const model = compiled('builtin:mean:3');
    expect([onStream(model, 'Pad'), onStream(model, 'Slice')]).toEqual([3, 3]);
    // (k - n % k) % k: two Mod; keep is padded alike (the fourth Pad)
    expect(count(model, 'Mod')).toBe(2);
    expect(count(model, 'Pad')).toBe(4);
  });
});

describe('consecutive layer-scope blocks', () => {
  for (const plugin of ['builtin:mean:3:layer', 'builtin:variator:2:layer']) {
    it(`${plugin}: the stream padded once and cropped once, the tail zeroed between blocks`, () => {
      const model = compiled(plugin);
      expect([onStream(model, 'Pad'), onStream(model, 'Slice'), onStream(model, 'Where')]).toEqual([1, 1, config.layers - 1]);
    });
  }

  it("the outputs are those of padding every block (a switchable model's branches, which cannot share)", async () => {
    for (const [plugin, ratio] of [
      ['builtin:mean:3:layer', 3],
      ['builtin:variator:2:layer', 2],
    ] as const) {
      const model = compiled(plugin);
      const reference = buildTransformer(config);
      switchablePass({ plugins: [{ source: plugin }], defaultRatio: ratio }).run(reference);
      expect(onStream(reference, 'Pad')).toBe(0); // inside the branches
      for (const seq of [7, 8, 9]) {
        const inputs = feeds(3, seq);
        const [a, b] = [await outputs(model, inputs), await outputs(reference, inputs)];
        expect(maxAbs(a.last_hidden_state!, b.last_hidden_state!)).toBe(0);
      }
    }
  });

  it('a stream read elsewhere keeps its crop', async () => {
    const model = buildTransformer(config);
    const reference = compiled('builtin:variator:3:layer');
    // the first layer's output (the second's input) becomes a graph output as well
    const layerOne = analyzeTransformer(model).layers[0]!.output;
    layerOne.type = tensorType(DataType.FLOAT, ['batch', 'seq', config.hidden]);
    model.graph.outputs.push(layerOne);
    const name = layerOne.name;
    pluginPass({ plugins: [{ source: 'builtin:variator:3:layer' }] }).run(model);
    assertValid(model, 'plugins');
    expect([onStream(model, 'Pad'), onStream(model, 'Slice'), onStream(model, 'Where')]).toEqual([1, 2, config.layers - 1]);
    const inputs = feeds(3, 7);
    const [a, b] = [await outputs(model, inputs), await outputs(reference, inputs)];
    expect(maxAbs(a.last_hidden_state!, b.last_hidden_state!)).toBe(0);
    expect(a[name]).toHaveLength(3 * 7 * config.hidden);
  });
});
