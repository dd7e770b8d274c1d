// What the built-in plugins make of padding, and of the positions of a group at layer scope:
// - a sequence gives the same outputs (at its real positions) alone and inside a padded batch, in every
//   scope: a group's summary comes from its real positions only (the plugin's `keep` input), and a
//   position bias is pooled over real positions only;
// - at layer scope each position keeps its own stream (hidden + repeat(inner - compressed)), so the
//   positions of a group leave the layer different.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildVariatorPlugin, initVariatorWeights } from '../passes/plugin/builtin.js';
import { pluginPass } from '../src/compile/passes.js';
import { GraphBuilder } from '../src/ir/builder.js';
import { replaceAllUses } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { NameAuthority } from '../src/ir/names.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { openSession, run } from '../src/runtime/session.js';
import { referenceForward } from './helpers/reference-transformer.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const SCOPES = ['ffn', 'attention', 'layer'] as const;
const PLUGINS = ['mean:2', 'mean:4', 'variator:2', 'variator:4'];

/** Rows of token ids, right-padded to `seq`; the mask marks the real tokens (or, inverted, the padding). */
function batchOf(rows: number[][], seq: number, mask: { name: string; padding?: boolean } = { name: 'attention_mask' }) {
  const ids = new BigInt64Array(rows.length * seq);
  const real = new Uint8Array(rows.length * seq);
  rows.forEach((row, b) =>
    row.forEach((id, j) => {
      ids[b * seq + j] = BigInt(id);
      real[b * seq + j] = 1;
    }),
  );
  const dims = [rows.length, seq];
  const maskTensor = mask.padding
    ? Tensor.fromArray(
        mask.name,
        DataType.BOOL,
        dims,
        real.map((r) => 1 - r),
      )
    : Tensor.fromArray(mask.name, DataType.INT64, dims, BigInt64Array.from(real, BigInt));
  return { input_ids: Tensor.fromArray('input_ids', DataType.INT64, dims, ids), [mask.name]: maskTensor };
}

async function outputOf(model: Model, feeds: Record<string, Tensor>): Promise<Float32Array> {
  const session = await openSession(encodeModel(model), { threads: 1 });
  try {
    return Object.values(await run(session, feeds))[0]!.toFloat32();
  } finally {
    await session.release();
  }
}

/**
 * The largest |alone - batched| over the real positions of `row` (fed alone, and as row `at` of `others`
 * padded to `seq`), relative to the largest |alone|.
 */
async function aloneVersusBatched(
  model: Model,
  row: number[],
  others: number[][],
  at: number,
  seq: number,
  mask?: { name: string; padding?: boolean },
): Promise<number> {
  const alone = await outputOf(model, batchOf([row], row.length, mask));
  const rows = [...others.slice(0, at), row, ...others.slice(at)];
  const batched = await outputOf(model, batchOf(rows, seq, mask));
  const d = alone.length / row.length;
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < row.length * d; i++) {
    worst = Math.max(worst, Math.abs(alone[i]! - batched[at * seq * d + i]!));
    scale = Math.max(scale, Math.abs(alone[i]!));
  }
  expect(scale).toBeGreaterThan(0);
  return worst / scale;
}

const tokens = (rng: Rng, length: number, vocab: number) => Array.from({ length }, () => 1 + rng.int(vocab - 1));

describe('a sequence gives the same outputs alone and inside a padded batch', () => {
  // 37 is not a multiple of 2 or 4: alone, the compiler pads the last group; batched (to 45), the model's
  // padding shares the last real group and fills two more.
  for (const fixture of ['bert_opset14', 't5_encoder']) {
    for (const scope of SCOPES) {
      it(`${fixture}, ${scope} scope, ${PLUGINS.join(', ')}`, async () => {
        const rng = new Rng(5, fixture);
        const row = tokens(rng, 37, 90);
        const others = [tokens(rng, 45, 90), tokens(rng, 41, 90)];
        for (const plugin of PLUGINS) {
          const model = loadModel(`fixtures/${fixture}.onnx`);
          pluginPass({ plugins: [{ source: `builtin:${plugin}:${scope}` }] }).run(model);
          assertValid(model, 'plugins');
          expect(await aloneVersusBatched(model, row, others, 1, 45), plugin).toBeLessThanOrEqual(1e-5);
        }
      });
    }
  }

  const generated: TransformerConfig = {
    layers: 2,
    hidden: 8,
    heads: 2,
    ffnInner: 16,
    norm: 'pre',
    activation: 'gelu_tanh',
    bias: true,
    mask: true,
    causal: false,
    vocab: 30,
    seed: 11,
  };

  /** The generated model with its mask inverted: `key_padding_mask` (bool, true at padding), as PyTorch's MHA takes it. */
  function withPaddingMask(model: Model): Model {
    const graph = model.graph;
    const old = graph.inputs.find((v) => v.name === 'attention_mask')!;
    const b = new GraphBuilder(graph, NameAuthority.forModel(model), { before: graph.nodes[0] });
    const padding = b.input('key_padding_mask', tensorType(DataType.BOOL, ['batch', 'seq']));
    replaceAllUses(old, b.op.Cast(b.op.Not(padding), { to: DataType.INT64 }));
    graph.inputs = graph.inputs.filter((v) => v !== old);
    return model;
  }

  for (const scope of SCOPES) {
    for (const inverted of [false, true]) {
      it(`generated transformers, ${scope} scope${inverted ? ', a bool mask that is true at padding' : ''}`, async () => {
        const rng = new Rng(3, scope);
        const row = tokens(rng, 7, 30);
        const others = [tokens(rng, 10, 30), tokens(rng, 4, 30)];
        const mask = inverted ? { name: 'key_padding_mask', padding: true } : undefined;
        for (const plugin of ['mean:3', 'variator:2']) {
          for (const norm of ['pre', 'post'] as const) {
            const model = buildTransformer({ ...generated, norm });
            if (inverted) withPaddingMask(model);
            pluginPass({ plugins: [{ source: `builtin:${plugin}:${scope}` }] }).run(model);
            assertValid(model, 'plugins');
            expect(await aloneVersusBatched(model, row, others, 2, 10, mask), `${plugin}, ${norm}-norm`).toBeLessThanOrEqual(1e-5);
          }
        }
      });
    }
  }
});

describe('layer scope: the positions of a group stay distinct', () => {
  /** The smallest, over groups of k and pairs of positions in them, of the largest difference of their outputs. */
  function leastDifferenceInGroups(values: ArrayLike<number>, seq: number, k: number): number {
    const d = values.length / seq;
    let least = Infinity;
    for (let g = 0; g + k <= seq; g += k) {
      for (let i = g; i < g + k; i++) {
        for (let j = i + 1; j < g + k; j++) {
          let most = 0;
          for (let c = 0; c < d; c++) most = Math.max(most, Math.abs(values[i * d + c]! - values[j * d + c]!));
          least = Math.min(least, most);
        }
      }
    }
    return least;
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-layer-scope-'));
  /** variator with a zero adapter (as `plugin init --zero-adapter` writes it): restore is the mean plugin's */
  function zeroAdapterVariator(k: number, options: { uniformMerge?: boolean } = {}): string {
    const weights = initVariatorWeights(k, 64, { seed: 1, zeroAdapter: true });
    if (options.uniformMerge) {
      weights.mergeWeight.fill(0);
      weights.mergeBias.fill(0);
    }
    const file = path.join(dir, `variator-k${k}${options.uniformMerge ? '-uniform' : ''}.onnx`);
    saveModel(buildVariatorPlugin({ ratio: k, hidden: 64, scope: 'layer', opset: 14 }, weights), file);
    return file;
  }

  for (const k of [2, 4]) {
    for (const [what, source] of [
      ['builtin:mean', () => `builtin:mean:${k}:layer`],
      ['variator with a zero adapter', () => zeroAdapterVariator(k)],
    ] as const) {
      it(`bert_opset14, ${what}, k=${k}`, async () => {
        const model = loadModel('fixtures/bert_opset14.onnx');
        pluginPass({ plugins: [{ source: source() }] }).run(model);
        const row = tokens(new Rng(2, `${k}`), 12, 90);
        const output = await outputOf(model, batchOf([row], row.length));
        expect(leastDifferenceInGroups(output, row.length, k)).toBeGreaterThan(0.01);
      });
    }
  }

  it('variator with a zero adapter and a uniform merge computes what mean does', async () => {
    const feeds = batchOf([tokens(new Rng(8, 'uniform'), 11, 90), tokens(new Rng(9, 'uniform'), 9, 90)], 11);
    for (const k of [2, 3]) {
      const [mean, variator] = [`builtin:mean:${k}:layer`, zeroAdapterVariator(k, { uniformMerge: true })].map((source) => {
        const model = loadModel('fixtures/bert_opset14.onnx');
        pluginPass({ plugins: [{ source }] }).run(model);
        return model;
      });
      const [a, b] = [await outputOf(mean, feeds), await outputOf(variator, feeds)];
      expect(Math.max(...a.map((x, i) => Math.abs(x - b[i]!)))).toBeLessThan(1e-5);
    }
  });

  it('generated transformers: distinct as in the float64 reference, and equal to it', async () => {
    const config: TransformerConfig = {
      layers: 2,
      hidden: 8,
      heads: 2,
      ffnInner: 16,
      norm: 'post',
      activation: 'relu',
      bias: true,
      mask: false,
      causal: false,
      vocab: 30,
      seed: 4,
    };
    for (const k of [2, 3]) {
      const model = buildTransformer(config);
      const reference = buildTransformer(config);
      pluginPass({ plugins: [{ source: `builtin:mean:${k}:layer` }] }).run(model);
      const ids = [[3, 8, 1, 12, 5, 20, 7]]; // distinct: the model has no position embeddings
      const expected = referenceForward(reference, config, ids, undefined, { scope: 'layer', ratio: k }).flat(2);
      const actual = await outputOf(model, { input_ids: batchOf(ids, 7).input_ids });
      expect(leastDifferenceInGroups(expected, 7, k)).toBeGreaterThan(0.01);
      expect(Math.max(...expected.map((e, i) => Math.abs(e - actual[i]!)))).toBeLessThan(1e-4);
    }
  });
});
