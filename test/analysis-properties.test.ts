// Property tests: draw transformer configurations, build each graph the way exporters write it
// (test/helpers/transformer-gen.ts), and check that the analysis recovers exactly that structure, and
// that removing a residual add is reported at the right layer and node. A few generated models also run
// in ONNX Runtime, to show the generator makes valid graphs.
import fc from 'fast-check';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { analyzeTransformer, describeAnalysis } from '../src/analysis/index.js';
import { replaceAllUses } from '../src/ir/graph.js';
import { verifyModel } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { buildTransformer, expectedLayerParams, type TransformerConfig } from './helpers/transformer-gen.js';

const configArb: fc.Arbitrary<TransformerConfig> = fc
  .record({
    layers: fc.integer({ min: 1, max: 6 }),
    heads: fc.integer({ min: 1, max: 4 }),
    headSize: fc.constantFrom(2, 4, 8, 12),
    ffnInner: fc.integer({ min: 2, max: 64 }),
    norm: fc.constantFrom('pre' as const, 'post' as const),
    activation: fc.constantFrom('gelu' as const, 'gelu_tanh' as const, 'relu' as const),
    bias: fc.boolean(),
    mask: fc.boolean(),
    causal: fc.boolean(),
    normKind: fc.constantFrom('layernorm' as const, 'rmsnorm' as const),
    normForm: fc.constantFrom('spelled' as const, 'op' as const),
    fusedQkv: fc.boolean(),
    scale: fc.constantFrom('scores' as const, 'query' as const, 'shape' as const),
    causalStyle: fc.constantFrom('additive' as const, 'where' as const),
    attentionStyle: fc.constantFrom('hf' as const, 'hf' as const, 'torch-mha' as const),
    seed: fc.integer({ min: 1, max: 1_000_000 }),
  })
  .map(({ headSize, ...c }) => ({ ...c, hidden: c.heads * headSize }));

/** Shrunk counterexamples and edge cases kept as regression cases. */
const REGRESSIONS: TransformerConfig[] = [
  // one head of size 2, FFN narrower than the stream
  { layers: 1, hidden: 2, heads: 1, ffnInner: 2, norm: 'pre', activation: 'gelu', bias: false, mask: false, causal: false },
  // RMSNorm asked in op form: the generator spells it out (no RMSNorm op at opset 17)
  {
    layers: 2,
    hidden: 8,
    heads: 2,
    ffnInner: 3,
    norm: 'post',
    activation: 'gelu_tanh',
    bias: true,
    mask: true,
    causal: true,
    normKind: 'rmsnorm',
    normForm: 'op',
  },
  // causal without padding mask, fused QKV, post-LN LayerNormalization op
  {
    layers: 3,
    hidden: 12,
    heads: 3,
    ffnInner: 7,
    norm: 'post',
    activation: 'relu',
    bias: true,
    mask: false,
    causal: true,
    fusedQkv: true,
    normForm: 'op',
  },
  // FFN as wide as the stream (inner size equal to hidden must not confuse FFN with attention output)
  { layers: 2, hidden: 16, heads: 4, ffnInner: 16, norm: 'pre', activation: 'relu', bias: false, mask: true, causal: false },
  // nn.MultiheadAttention export: [seq, batch, d] inside the block, heads folded into the batch, Gemm output
  {
    layers: 2,
    hidden: 12,
    heads: 3,
    ffnInner: 20,
    norm: 'post',
    activation: 'gelu',
    bias: true,
    mask: true,
    causal: true,
    attentionStyle: 'torch-mha',
  },
  {
    layers: 1,
    hidden: 8,
    heads: 1,
    ffnInner: 8,
    norm: 'pre',
    activation: 'relu',
    bias: false,
    mask: false,
    causal: true,
    causalStyle: 'where',
    attentionStyle: 'torch-mha',
  },
];

/** MACs per layer by hand: projections 4*b*s*d*d, scores and context 2*b*h*s*s*dh, FFN 2*b*s*d*f. */
function expectedMacs(c: TransformerConfig, b: number, s: number): number {
  const d = c.hidden;
  return 4 * b * s * d * d + 2 * b * c.heads * s * s * (d / c.heads) + 2 * b * s * d * c.ffnInner;
}

function checkRecovers(config: TransformerConfig): void {
  const model = buildTransformer(config);
  expect(verifyModel(model)).toEqual([]);
  const analysis = analyzeTransformer(model);
  expect(analysis.error?.message).toBeUndefined();
  expect(analysis.hidden).toBe(config.hidden);
  expect(analysis.layers).toHaveLength(config.layers);
  const desc = describeAnalysis(analysis, { batch: 2, seq: 9 });
  for (const layer of analysis.layers) {
    const attn = layer.selfAttention;
    expect({
      heads: attn.heads,
      headSize: attn.headSize,
      causal: attn.causal,
      cross: !!layer.crossAttention,
      fusedQkv: attn.fusedQkv,
      ffnInner: layer.ffn.inner,
      activation: layer.ffn.activation,
      norm: layer.placement,
      normKind: layer.normKind,
      stack: layer.stack,
      params: layer.paramCount,
    }).toEqual({
      heads: config.heads,
      headSize: config.hidden / config.heads,
      causal: config.causal,
      cross: false,
      fusedQkv: !!config.fusedQkv || config.attentionStyle === 'torch-mha',
      ffnInner: config.ffnInner,
      activation: config.activation,
      norm: config.norm,
      normKind: config.normKind ?? 'layernorm',
      stack: config.causal ? 'decoder' : 'encoder',
      params: expectedLayerParams(config),
    });
    expect(attn.scale).toBeCloseTo(1 / Math.sqrt(config.hidden / config.heads), 6);
    expect(attn.input).toBe(config.norm === 'pre' ? layer.sublayers[0].norm.output : layer.input);
    // the causal triangle as its own Where term, or summed into the additive mask with the padding
    const select = attn.terms.filter((t) => t.mode === 'select');
    const additive = attn.terms.filter((t) => t.mode === 'add');
    const whereStyle = config.causal && config.causalStyle === 'where';
    expect(select).toHaveLength(whereStyle ? 1 : 0);
    expect(additive).toHaveLength(config.mask || (config.causal && !whereStyle) ? 1 : 0);
    for (const term of attn.terms) expect(term.kind).toBe('mask');
    for (const term of select) expect(term).toMatchObject({ causal: true, keepWhen: true, inputs: [] });
    for (const term of additive) {
      expect(term.inputs.map((v) => v.name)).toEqual(config.mask ? ['attention_mask'] : []);
      expect(term.causal).toBe(config.causal && !whereStyle);
    }
    expect(desc.layers[layer.index].macs).toBe(expectedMacs(config, 2, 9));
  }
}

describe('the analysis recovers generated transformers', () => {
  for (const [i, config] of REGRESSIONS.entries()) {
    it(`regression case ${i}`, () => checkRecovers(config));
  }

  it('on drawn configurations', () => {
    fc.assert(
      fc.property(configArb, (config) => checkRecovers(config)),
      { numRuns: 60, seed: 20261122 },
    );
  });

  it('reports a missing residual add at its layer and node', () => {
    const drawn = fc.record({ config: configArb, at: fc.nat(), branch: fc.constantFrom('ffn' as const, 'self-attention' as const) });
    fc.assert(
      fc.property(drawn, ({ config, at, branch }) => {
        const model = buildTransformer(config);
        const intact = analyzeTransformer(model);
        const k = at % config.layers;
        const sublayer = intact.layers[k].sublayers.find((s) => s.kind === branch)!;
        const add = sublayer.residualAdd;
        const blockOutput = branch === 'ffn' ? sublayer.ffn!.output : sublayer.attention!.output;
        const projection = branch === 'ffn' ? sublayer.ffn!.down : sublayer.attention!.outputProjection;
        replaceAllUses(add.outputs[0]!, blockOutput);
        model.graph.removeNodes([add]);
        expect(verifyModel(model)).toEqual([]);
        const broken = analyzeTransformer(model);
        expect(broken.layers).toHaveLength(k);
        expect(broken.error?.layer).toBe(k);
        const stoppedAt = projection.biasAdd ?? projection.matmul;
        expect(broken.error?.node).toBe(stoppedAt);
        const block = branch === 'ffn' ? 'feed-forward' : 'self-attention';
        expect(broken.error?.message).toMatch(
          new RegExp(`^layer ${k}: no residual add after the ${block} block at node ${stoppedAt.name} \\(`),
        );
      }),
      { numRuns: 20, seed: 7 },
    );
  });
});

describe('generated models run in ONNX Runtime', () => {
  const drawn = fc.sample(configArb, { numRuns: 3, seed: 42 });
  for (const [i, config] of [...REGRESSIONS.slice(1, 3), REGRESSIONS[4], ...drawn].entries()) {
    it(`config ${i}: ${config.layers} layers, ${config.norm}-${config.normKind ?? 'layernorm'}, ${config.activation}, mask ${config.mask}, causal ${config.causal}`, async () => {
      const session = await ort.InferenceSession.create(encodeModel(buildTransformer(config)), { logSeverityLevel: 3 });
      const [batch, seq] = [2, 5];
      const ids = BigInt64Array.from({ length: batch * seq }, (_, j) => BigInt(j % 50));
      const feeds: Record<string, ort.Tensor> = { input_ids: new ort.Tensor('int64', ids, [batch, seq]) };
      if (config.mask) {
        const mask = BigInt64Array.from({ length: batch * seq }, (_, j) => (j === batch * seq - 1 ? 0n : 1n));
        feeds.attention_mask = new ort.Tensor('int64', mask, [batch, seq]);
      }
      const out = (await session.run(feeds)).last_hidden_state;
      expect(out.dims).toEqual([batch, seq, config.hidden]);
      expect((out.data as Float32Array).every(Number.isFinite)).toBe(true);
      await session.release();
    });
  }
});
