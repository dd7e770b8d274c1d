// Streamlined plugins (passes/plugin/streamline.ts): the restore's adapter product over [repeat(inner); hidden]
// split in two, its repeated half computed before the repeat, on PyTorch's export of Variator; the same
// function up to float rounding; nothing rewritten that is not provably the same.
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildMeanPlugin, buildVariatorPlugin, initVariatorWeights } from '../passes/plugin/builtin.js';
import type { Plugin } from '../passes/plugin/contract.js';
import { streamlineCandidates, streamlinePlugin } from '../passes/plugin/streamline.js';
import { inferShapes } from '../src/analysis/shapes.js';
import { checkPlugin, loadPlugin } from '../src/compile/load.js';
import { ModelBuilder } from '../src/ir/builder.js';
import type { Graph } from '../src/ir/graph.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openSession, run } from '../src/runtime/session.js';

const FIXTURES = path.resolve(import.meta.dirname, '../fixtures/plugins');

function normal(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal());
}

/** The plugin run on ORT: its two outputs for random hidden [batch, seq, d] and inner [batch, seq/k, d] (keep all ones). */
async function runPlugin(plugin: Plugin, batch: number, seq: number, d: number, seed = 3) {
  const rng = new Rng(seed, 'plugin inputs');
  const feeds: Record<string, Tensor> = {
    hidden: Tensor.fromArray('hidden', DataType.FLOAT, [batch, seq, d], normal(rng, batch * seq * d)),
    inner: Tensor.fromArray('inner', DataType.FLOAT, [batch, seq / plugin.ratio, d], normal(rng, (batch * seq * d) / plugin.ratio)),
  };
  if (plugin.keepInput) feeds.keep = Tensor.fromArray('keep', DataType.FLOAT, [batch, seq], new Float32Array(batch * seq).fill(1));
  const session = await openSession(encodeModel(plugin.model), { threads: 1 });
  try {
    const out = await run(session, feeds);
    return { compressed: out.compressed!.toFloat32(), restored: out.restored!.toFloat32(), feeds };
  } finally {
    await session.release();
  }
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

const opTypes = (graph: Graph) => graph.nodes.map((n) => n.opType);
const count = (graph: Graph, op: string) => graph.nodes.filter((n) => n.opType === op).length;
const floatParams = (plugin: Plugin) =>
  plugin.model.graph.initializers
    .filter((v) => v.initializer!.dataType === DataType.FLOAT)
    .reduce((sum, v) => sum + v.initializer!.size, 0);

describe("a PyTorch export of Variator's plugin", () => {
  for (const file of ['variator_k2_ffn.onnx', 'variator_k3_layer.onnx', 'variator_k3_attention.onnx']) {
    it(`${file}: the adapter product split, its repeated half computed before the repeat`, async () => {
      const plugin = loadPlugin(path.join(FIXTURES, file), { hidden: 32, opset: 14 });
      const original = opTypes(plugin.model.graph);
      const streamlined = streamlinePlugin(plugin);
      expect(streamlined).not.toBe(plugin);
      expect(opTypes(plugin.model.graph)).toEqual(original);
      assertValid(streamlined.model, 'streamline');

      const graph = streamlined.model.graph;
      expect(graph.nodes.filter((n) => n.opType === 'MatMul' && n.inputs[0]?.producer?.opType === 'Concat')).toEqual([]);
      // merge, the adapter's input product as two, the adapter's output product, and the merge's weighted
      // sum as a product per group (no ReduceSum over a weighted copy of hidden)
      expect(count(plugin.model.graph, 'MatMul')).toBe(3);
      expect(count(plugin.model.graph, 'ReduceSum')).toBe(1);
      expect(count(graph, 'MatMul')).toBe(5);
      expect(count(graph, 'ReduceSum')).toBe(0);
      // inner's half is multiplied right after inner is unsqueezed
      const hoisted = graph.nodes.filter((n) => n.opType === 'MatMul' && n.inputs[0]?.producer?.inputs[0] === streamlined.innerInput);
      expect(hoisted.map((n) => n.inputs[0]!.producer!.opType)).toEqual(['Unsqueeze']);
      // no repeat is written out: both repeated terms are added to their groups by broadcasting, and the
      // adapter's two biases are added to the short rows, [batch, groups, 1, width]
      expect(count(plugin.model.graph, 'Expand')).toBe(1);
      expect(count(graph, 'Expand')).toBe(0);
      const shapes = inferShapes(graph);
      const biasAdds = graph.nodes.filter((n) => n.opType === 'Add' && n.inputs.some((v) => /adapter_(in|out)\.bias/.test(v?.name ?? '')));
      expect(biasAdds.map((n) => shapes.rank(n.outputs[0]))).toEqual([4, 4]);
      expect(graph.nodes.some((n) => n.opType === 'Concat' && n.outputs[0]!.uses().some((u) => u.node.opType === 'MatMul'))).toBe(false);
      // the weights are the plugin's own, cut in rows: as many parameters
      expect(floatParams(streamlined)).toBe(floatParams(plugin));
      // the same function up to float reassociation
      const [before, after] = [await runPlugin(plugin, 2, 12, 32), await runPlugin(streamlined, 2, 12, 32)];
      expect(maxAbs(after.compressed, before.compressed)).toBeLessThan(1e-6);
      expect(maxAbs(after.restored, before.restored)).toBeLessThan(1e-5);
    });
  }
});

describe('plugins with nothing to streamline are returned as they are', () => {
  for (const scope of ['ffn', 'layer'] as const) {
    it(`built-in mean and variator (${scope})`, () => {
      const shape = { ratio: 2, hidden: 8, scope, opset: 14 };
      for (const source of ['builtin:mean:2', 'builtin:variator:2']) {
        const plugin = loadPlugin(`${source}:${scope}`, { hidden: 8, opset: 14 });
        expect(streamlinePlugin(plugin)).toBe(plugin);
      }
      expect(streamlineCandidates(buildMeanPlugin(shape).graph)).toEqual({ split: [], hoist: [], group: [], weigh: [] });
      expect(streamlineCandidates(buildVariatorPlugin(shape, initVariatorWeights(2, 8)).graph)).toEqual({
        split: [],
        hoist: [],
        group: [],
        weigh: [],
      });
    });
  }

  it('the identity plugin', () => {
    const plugin = loadPlugin('builtin:identity:1', { hidden: 8, opset: 14 });
    expect(streamlinePlugin(plugin)).toBe(plugin);
  });
});

describe('products that are not provably the same stay as they are', () => {
  const d = 4;
  function graphWith(build: (b: ModelBuilder, x: ReturnType<ModelBuilder['input']>) => ReturnType<ModelBuilder['input']>): Graph {
    const b = new ModelBuilder(14);
    const x = b.input('x', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
    b.output(build(b, x), 'y');
    return b.model.graph;
  }
  const weight = (b: ModelBuilder, rows: number) => b.floats('w', [rows, 3], new Float32Array(rows * 3).fill(0.5));

  it('a Concat along the sequence, or read by something else too, is not split', () => {
    const alongSeq = graphWith((b, x) => b.op.MatMul(b.op.Concat(x, x, { axis: 1 }), weight(b, d)));
    expect(streamlineCandidates(alongSeq).split).toEqual([]);
    const readTwice = graphWith((b, x) => {
      const both = b.op.Concat(x, x, { axis: -1 });
      return b.op.Add(b.op.MatMul(both, weight(b, 2 * d)), b.op.ReduceSum(both, b.int64s('axes', [2]), { keepdims: 1 }));
    });
    expect(streamlineCandidates(readTwice).split).toEqual([]);
    const split = graphWith((b, x) => b.op.MatMul(b.op.Concat(x, x, { axis: 2 }), weight(b, 2 * d)));
    expect(streamlineCandidates(split).split).toHaveLength(1);
  });

  it('a product whose weight is computed is not split', () => {
    const computed = graphWith((b, x) => b.op.MatMul(b.op.Concat(x, x, { axis: -1 }), b.op.Relu(weight(b, 2 * d))));
    expect(streamlineCandidates(computed).split).toEqual([]);
  });

  it('an Expand along the last axis is not hoisted over', () => {
    const widened = graphWith((b, x) =>
      b.op.MatMul(b.op.Expand(b.op.ReduceMax(x, { axes: [2], keepdims: 1 }), b.int64s('shape', [1, 1, d])), weight(b, d)),
    );
    expect(streamlineCandidates(widened).hoist).toEqual([]);
    const repeated = graphWith((b, x) => {
      const grouped = b.op.Expand(b.op.Unsqueeze(x, b.int64s('axes', [2])), b.int64s('shape', [1, 1, 2, 1]));
      return b.op.MatMul(b.op.Reshape(grouped, b.int64s('shape', [0, -1, d])), weight(b, d));
    });
    expect(streamlineCandidates(repeated).hoist).toHaveLength(1);
  });
});

describe('a repeat added at full length is added to its groups', () => {
  const [k, d] = [3, 4];
  type V = ReturnType<ModelBuilder['input']>;
  /** A plugin with the mean as its compress and `restore(repeat(inner), hidden)` as its restore. */
  function repeatPlugin(restore: (b: ModelBuilder, repeated: V, hidden: V) => V): Plugin {
    const b = new ModelBuilder(14);
    const hidden = b.input('hidden', tensorType(DataType.FLOAT, [2, 'seq', d]));
    const inner = b.input('inner', tensorType(DataType.FLOAT, [2, 'groups', d]));
    const compressed = b.op.ReduceMean(b.op.Reshape(hidden, b.int64s('grouped', [0, -1, k, d])), { axes: [2], keepdims: 0 });
    const expanded = b.op.Expand(b.op.Unsqueeze(inner, b.int64s('axes', [2])), b.int64s('repeat', [1, 1, k, 1]));
    const repeated = b.op.Reshape(expanded, b.int64s('merged', [0, -1, d]));
    b.output(compressed, 'compressed', tensorType(DataType.FLOAT, [2, 'groups', d]));
    b.output(restore(b, repeated, hidden), 'restored', tensorType(DataType.FLOAT, [2, 'seq', d]));
    b.model.metadataProps = [
      ['vcompile.ratio', String(k)],
      ['vcompile.scope', 'ffn'],
    ];
    return checkPlugin(b.model, 'repeat.onnx', encodeModel(b.model));
  }
  const product = (b: ModelBuilder, hidden: V) =>
    b.op.MatMul(
      hidden,
      b.floats(
        'w',
        [d, d],
        Float32Array.from({ length: d * d }, (_, i) => (i % 5) - 2),
      ),
    );
  const constant = (b: ModelBuilder, dims: number[]) =>
    b.floats(
      'c',
      dims,
      Float32Array.from({ length: dims.reduce((p, n) => p * n, 1) }, (_, i) => 0.25 * i + 1),
    );

  async function expectSameFunction(plugin: Plugin, streamlined: Plugin) {
    assertValid(streamlined.model, 'streamline');
    const [before, after] = [await runPlugin(plugin, 2, 12, d), await runPlugin(streamlined, 2, 12, d)];
    expect(maxAbs(after.compressed, before.compressed)).toBe(0);
    expect(maxAbs(after.restored, before.restored)).toBeLessThan(1e-5);
  }

  it('with a bias on the last axis moved onto the short rows, before or after the sum', async () => {
    const before = repeatPlugin((b, repeated, hidden) => b.op.Add(repeated, b.op.Add(product(b, hidden), constant(b, [d]))));
    const after = repeatPlugin((b, repeated, hidden) => b.op.Add(b.op.Add(product(b, hidden), repeated), constant(b, [1, 1, d])));
    for (const plugin of [before, after]) {
      const streamlined = streamlinePlugin(plugin);
      const graph = streamlined.model.graph;
      expect(count(graph, 'Expand')).toBe(0);
      const shapes = inferShapes(graph);
      const biasAdd = graph.nodes.filter((n) => n.opType === 'Add' && n.inputs.some((v) => v?.name.startsWith('c')));
      expect(biasAdd.map((n) => shapes.shape(n.outputs[0])?.map(String))).toEqual([['2', 'groups', '1', String(d)]]);
      await expectSameFunction(plugin, streamlined);
    }
  });

  it('a bias that varies along another axis stays on the full-length rows', async () => {
    const plugin = repeatPlugin((b, repeated, hidden) => b.op.Add(repeated, b.op.Add(product(b, hidden), constant(b, [2, 1, 1]))));
    const streamlined = streamlinePlugin(plugin);
    const shapes = inferShapes(streamlined.model.graph);
    const biasAdd = streamlined.model.graph.nodes.filter((n) => n.opType === 'Add' && n.inputs.some((v) => v?.name.startsWith('c')));
    expect(biasAdd.map((n) => shapes.rank(n.outputs[0]))).toEqual([3]);
    expect(count(streamlined.model.graph, 'Expand')).toBe(0);
    await expectSameFunction(plugin, streamlined);
  });

  it('a term that broadcasts against the repeat leaves the repeat written out', () => {
    const plugin = repeatPlugin((b, repeated) => b.op.Add(repeated, constant(b, [1, 1, d])));
    expect(streamlineCandidates(plugin.model.graph).group).toEqual([]);
    expect(streamlinePlugin(plugin)).toBe(plugin);
  });
});

describe('a weighted sum over each group becomes a product only where it is one', () => {
  /** ReduceSum(Mul(w, x), axes) with x [2, 3, 4, 5] and w of the given shape. */
  function weighed(weightDims: number[], axes: number[]): Graph {
    const b = new ModelBuilder(14);
    const x = b.input('x', tensorType(DataType.FLOAT, [2, 3, 4, 5]));
    const w = b.input('w', tensorType(DataType.FLOAT, weightDims));
    b.output(b.op.ReduceSum(b.op.Mul(w, x), b.int64s('axes', axes), { keepdims: 0 }), 'y');
    return b.model.graph;
  }

  it('one weight per row of a group, summed over the group', () => {
    expect(streamlineCandidates(weighed([2, 3, 4, 1], [2])).weigh).toHaveLength(1);
    expect(streamlineCandidates(weighed([2, 3, 4, 1], [-2])).weigh).toHaveLength(1);
  });

  it('not a weight per element, nor a sum over another axis', () => {
    expect(streamlineCandidates(weighed([2, 3, 4, 5], [2])).weigh).toEqual([]);
    expect(streamlineCandidates(weighed([2, 3, 4, 1], [1])).weigh).toEqual([]);
    expect(streamlineCandidates(weighed([2, 3, 4, 1], [2, 3])).weigh).toEqual([]);
  });
});

describe("the built-in Variator's restore is Variator's", () => {
  it('repeat(inner) + W2 tanh(W1 [repeat(inner); hidden] + b1) + b2, in float64', async () => {
    const [k, d, batch, seq] = [2, 6, 2, 8];
    const weights = initVariatorWeights(k, d, { seed: 5, bottleneck: 5 });
    const model = buildVariatorPlugin({ ratio: k, hidden: d, scope: 'ffn', opset: 14 }, weights);
    const plugin = checkPlugin(model, 'variator.onnx', encodeModel(model));
    const { restored, feeds } = await runPlugin(plugin, batch, seq, d);
    const hidden = feeds.hidden!.toFloat32();
    const inner = feeds.inner!.toFloat32();
    const bottleneck = weights.adapterInBias.length;
    const expected: number[] = [];
    for (let row = 0; row < batch * seq; row++) {
      const group = Math.floor((row % seq) / k) + Math.floor(row / seq) * (seq / k);
      const u = Array.from({ length: d }, (_, c) => inner[group * d + c]!);
      const input = [...u, ...Array.from({ length: d }, (_, c) => hidden[row * d + c]!)];
      const down = Array.from({ length: bottleneck }, (_, j) =>
        Math.tanh(input.reduce((s, v, i) => s + v * weights.adapterInWeight[j * 2 * d + i]!, weights.adapterInBias[j]!)),
      );
      for (let c = 0; c < d; c++)
        expected.push(u[c]! + down.reduce((s, v, j) => s + v * weights.adapterOutWeight[c * bottleneck + j]!, weights.adapterOutBias[c]!));
    }
    expect(maxAbs(restored, expected)).toBeLessThan(1e-5);
  });
});
