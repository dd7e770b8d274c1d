// The plugin pass on generated transformers, against a plain TS reference (the mean plugin applied by
// hand), the identity plugin as a plumbing check, and every refusal with its message.
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pluginPass } from '../src/compile/passes.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { openSession, run } from '../src/runtime/session.js';
import { asCommandLine } from './helpers/cli-message.js';
import { referenceForward } from './helpers/reference-transformer.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const tiny: TransformerConfig = {
  layers: 2,
  hidden: 8,
  heads: 2,
  ffnInner: 16,
  norm: 'post',
  activation: 'relu',
  bias: true,
  mask: true,
  causal: false,
  vocab: 30,
  seed: 7,
};

function feeds(batch: number, seq: number, vocab: number, withMask: boolean) {
  const ids = Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, j) => (b * 7 + j * 3) % vocab));
  const mask = Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, j) => (j < Math.max(1, seq - 2 * b) ? 1 : 0)));
  const tensors: Record<string, Tensor> = {
    input_ids: Tensor.fromArray('input_ids', DataType.INT64, [batch, seq], BigInt64Array.from(ids.flat(), BigInt)),
  };
  if (withMask)
    tensors.attention_mask = Tensor.fromArray('attention_mask', DataType.INT64, [batch, seq], BigInt64Array.from(mask.flat(), BigInt));
  return { ids, mask: withMask ? mask : undefined, tensors };
}

async function runModel(model: Model, tensors: Record<string, Tensor>): Promise<Float32Array> {
  const session = await openSession(encodeModel(model));
  try {
    return (await run(session, tensors)).last_hidden_state.toFloat32();
  } finally {
    await session.release();
  }
}

function maxRealError(actual: Float32Array, expected: number[][][], mask: number[][] | undefined): number {
  let worst = 0;
  const d = expected[0][0].length;
  expected.forEach((rows, b) =>
    rows.forEach((row, j) => {
      if (mask && !mask[b][j]) return; // padded positions are not compared
      row.forEach((t, c) => {
        worst = Math.max(worst, Math.abs(actual[(b * rows.length + j) * d + c] - t));
      });
    }),
  );
  return worst;
}

describe('mean plugin against a plain TS reference', () => {
  for (const scope of ['ffn', 'attention', 'layer'] as const) {
    for (const [norm, ratio, seq, withMask] of [
      ['post', 2, 6, true],
      ['post', 3, 7, true],
      ['pre', 2, 5, true],
      ['post', 3, 7, false],
    ] as const) {
      it(`${scope} scope, ${norm}-norm, k=${ratio}, seq ${seq}${withMask ? '' : ', no padding mask'}`, async () => {
        const config: TransformerConfig = { ...tiny, norm, activation: norm === 'pre' ? 'gelu_tanh' : 'relu', mask: withMask };
        const model = buildTransformer(config);
        const reference = buildTransformer(config);
        pluginPass({ plugins: [{ source: `builtin:mean:${ratio}:${scope}` }] }).run(model);
        assertValid(model, 'plugins');
        const { ids, mask, tensors } = feeds(3, seq, config.vocab!, withMask);
        const expected = referenceForward(reference, config, ids, mask, { scope, ratio });
        expect(maxRealError(await runModel(model, tensors), expected, mask)).toBeLessThan(1e-4);
        // and the reference without a plugin is the original model
        const plain = referenceForward(reference, config, ids, mask);
        expect(maxRealError(await runModel(reference, tensors), plain, mask)).toBeLessThan(1e-4);
      });
    }
  }
});

describe('identity plugin: the compiled model equals the original', () => {
  const configs = fc.record({
    layers: fc.integer({ min: 1, max: 3 }),
    heads: fc.constantFrom(1, 2, 4),
    headSize: fc.constantFrom(2, 4),
    ffnMultiple: fc.constantFrom(1, 2),
    norm: fc.constantFrom('pre' as const, 'post' as const),
    activation: fc.constantFrom('gelu' as const, 'relu' as const, 'gelu_tanh' as const),
    bias: fc.boolean(),
    mask: fc.boolean(),
    fusedQkv: fc.boolean(),
    scope: fc.constantFrom('ffn' as const, 'attention' as const, 'layer' as const),
    seed: fc.integer({ min: 1, max: 1000 }),
  });
  it('on generated transformers, several batch sizes and lengths', async () => {
    await fc.assert(
      fc.asyncProperty(configs, async (c) => {
        const config: TransformerConfig = {
          layers: c.layers,
          hidden: c.heads * c.headSize,
          heads: c.heads,
          ffnInner: c.heads * c.headSize * c.ffnMultiple,
          norm: c.norm,
          activation: c.activation,
          bias: c.bias,
          mask: c.mask,
          causal: false,
          fusedQkv: c.fusedQkv,
          vocab: 20,
          seed: c.seed,
        };
        const original = buildTransformer(config);
        const compiled = buildTransformer(config);
        pluginPass({ plugins: [{ source: `builtin:identity:1:${c.scope}` }] }).run(compiled);
        assertValid(compiled, 'plugins');
        for (const [batch, seq] of [
          [1, 5],
          [3, 8],
        ]) {
          const { tensors } = feeds(batch, seq, 20, c.mask);
          const [a, b] = [await runModel(original, tensors), await runModel(compiled, tensors)];
          for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(1e-5);
        }
      }),
      { numRuns: 12 },
    );
  }, 120_000);
});

describe('refusals', () => {
  const causal: TransformerConfig = { ...tiny, causal: true };
  it('leaves causal layers alone by default and reports them', () => {
    const model = buildTransformer(causal);
    const result = pluginPass({ plugins: [{ source: 'builtin:mean:2' }] }).run(model);
    expect(result.modified).toBe(false);
    expect(result.report.skippedCausal).toEqual([0, 1]);
  });

  const cases: [string, Parameters<typeof pluginPass>[0], TransformerConfig, string][] = [
    [
      'a causal layer named explicitly',
      { plugins: [{ source: 'builtin:mean:2' }], layers: [1] },
      causal,
      'layer 1 uses causal self-attention: merging positions would leak future tokens (--compress-causal 1 forces it)',
    ],
    [
      'a layer that does not exist',
      { plugins: [{ source: 'builtin:mean:2' }], layers: [5] },
      tiny,
      'layer 5 does not exist (the model has layers 0-1)',
    ],
    [
      'a malformed builtin',
      { plugins: [{ source: 'builtin:mean:x' }] },
      tiny,
      'plugin builtin:mean:x: expected builtin:KIND:K[:SCOPE] with KIND mean|variator|identity and SCOPE ffn|attention|layer',
    ],
    [
      'two plugins for all layers',
      { plugins: [{ source: 'builtin:mean:2' }, { source: 'builtin:mean:4' }] },
      tiny,
      'give one --plugin for all layers, and --plugin L=FILE for single layers',
    ],
    ['a missing plugin file', { plugins: [{ source: '/nonexistent/p.onnx' }] }, tiny, 'plugin /nonexistent/p.onnx: no such file'],
  ];
  for (const [what, options, config, message] of cases) {
    it(what, () => {
      const model = buildTransformer(config);
      const before = encodeModel(model);
      expect(asCommandLine(() => pluginPass(options).run(model))).toThrow(message);
      expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
    });
  }

  it('--compress-causal forces a causal layer', () => {
    const model = buildTransformer(causal);
    const result = pluginPass({ plugins: [{ source: 'builtin:mean:2' }], compressCausal: [0] }).run(model);
    expect((result.report.layers as { layer: number }[]).map((l) => l.layer)).toEqual([0]);
    assertValid(model, 'plugins');
  });
});
