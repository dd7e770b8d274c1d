// The modular pass: extracting layers as a module and splicing it back gives the original model (fixtures
// and generated transformers); the built-in modules against a plain TS reference fed with the weights they
// stand for (the span's first layer; the element-wise mean of the span's layers); and the pass's refusals,
// which leave the model as it was.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { translateLayers } from '../passes/common/layers.js';
import { extractModule } from '../passes/modular/extract.js';
import type { ModuleRequest } from '../passes/modular/index.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { modularPass, pluginPass } from '../src/compile/passes.js';
import { GraphBuilder } from '../src/ir/builder.js';
import type { Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { NameAuthority } from '../src/ir/names.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { openSession, run } from '../src/runtime/session.js';
import { asCommandLine } from './helpers/cli-message.js';
import { referenceForward } from './helpers/reference-transformer.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-modular-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

async function outputsOf(model: Model | Uint8Array, feeds: Record<string, Tensor>): Promise<Record<string, Float32Array>> {
  const session = await openSession(model instanceof Uint8Array ? model : encodeModel(model), { threads: 1 });
  try {
    const out = await run(session, feeds);
    return Object.fromEntries(Object.entries(out).map(([name, t]) => [name, t.toFloat32()]));
  } finally {
    await session.release();
  }
}

function maxDifference(a: Record<string, Float32Array>, b: Record<string, Float32Array>): number {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  let worst = 0;
  for (const [name, x] of Object.entries(a)) {
    const y = b[name];
    expect(y.length).toBe(x.length);
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Number.isNaN(x[i] - y[i]) ? Infinity : Math.abs(x[i] - y[i]));
  }
  return worst;
}

/** Extract `start..end` to a file, splice it back into a fresh copy; returns both models and the report. */
function roundTrip(load: () => Model, start: number, end: number, label: string) {
  const source = load();
  const { module, bias } = extractModule(source, start, end);
  assertValid(module, 'extract');
  const file = path.join(TMP, `${label}_L${start}-${end}.onnx`);
  saveModel(module, file, { overwrite: true });
  const target = load();
  const removedWeights = new Set<Value>(
    analyzeTransformer(target)
      .layers.slice(start, end + 1)
      .flatMap((l) => l.params),
  );
  const result = modularPass({ modules: [{ start, end, source: file }] }).run(target);
  assertValid(target, 'modules');
  return { source, module, bias, target, removedWeights, report: result.report };
}

async function expectSameOutputs(original: Model, rewritten: Model, sizes: [number, number][]): Promise<void> {
  const specs = describeInputs(original);
  const before = encodeModel(original);
  const after = encodeModel(rewritten);
  for (const [batch, seq] of sizes) {
    const feeds = generateFeeds(specs, { batch, seq }, batch * 100 + seq);
    expect(maxDifference(await outputsOf(before, feeds), await outputsOf(after, feeds))).toBeLessThanOrEqual(1e-5);
  }
}

describe('extract, then splice back: the original model', () => {
  const cases: [string, number, number][] = [
    ['bert_opset14', 0, 0],
    ['bert_opset14', 1, 2],
    ['bert_opset14', 0, 2],
    ['bert_fused_qkv', 0, 1],
    ['vit', 0, 1],
    ['vit', 1, 1],
    ['encoder_decoder', 0, 1],
    ['gpt_decoder', 0, 1],
  ];
  it.each(cases)('%s layers %i-%i', async (name, start, end) => {
    const load = () => loadModel(`fixtures/${name}.onnx`);
    const { source, module, target, removedWeights, report } = roundTrip(load, start, end, name);
    expect(module.getMetadata('vcompile.span')).toBe(String(end - start + 1));
    expect(module.getMetadata('vcompile.start')).toBe(String(start));
    expect(module.opsetImports).toEqual(source.opsetImports.map((o) => ({ domain: o.domain, version: o.version })));
    expect(module.graph.outputs.map((v) => v.name)).toEqual(['hidden_out']);
    // the removed layers' weights are gone; the module's copies (over the same data) replace them
    expect(removedWeights.size).toBeGreaterThan(0);
    expect(target.graph.initializers.filter((v) => removedWeights.has(v))).toEqual([]);
    // other layers keep their numbers; the spliced layers are found again, as module layers
    const layers = analyzeTransformer(source).layers.length;
    expect(report.layerMap).toEqual(Array.from({ length: layers }, (_, i) => (i >= start && i <= end ? null : i)));
    await expectSameOutputs(
      source,
      target,
      name === 'vit'
        ? [
            [1, 1],
            [3, 1],
          ]
        : [
            [1, 5],
            [3, 9],
          ],
    );
  });

  it('takes the mask the model computes as attention_bias ([batch, 1, 1, seq] for BERT), nothing for ViT', () => {
    const bert = extractModule(loadModel('fixtures/bert_opset14.onnx'), 0, 1).module;
    expect(bert.graph.inputs.map((v) => v.name)).toEqual(['hidden', 'attention_bias']);
    expect(bert.graph.inputs[1].type).toEqual({
      kind: 'tensor',
      elemType: DataType.FLOAT,
      shape: [{ param: 'batch' }, { value: 1 }, { value: 1 }, { param: 'seq' }],
    });
    expect(extractModule(loadModel('fixtures/vit.onnx'), 0, 1).module.graph.inputs.map((v) => v.name)).toEqual(['hidden']);
  });

  it('two adjacent modules and a built-in in one pass', async () => {
    const load = () => loadModel('fixtures/bert_opset14.onnx');
    const files = [
      [0, 0],
      [1, 1],
    ].map(([s, e]) => {
      const file = path.join(TMP, `adjacent_L${s}-${e}.onnx`);
      saveModel(extractModule(load(), s, e).module, file, { overwrite: true });
      return { start: s, end: e, source: file };
    });
    const target = load();
    const result = modularPass({ modules: [...files, { start: 2, end: 2, source: 'builtin:average' }] }).run(target);
    assertValid(target, 'modules');
    expect(result.report.layerMap).toEqual([null, null, null]);
    await expectSameOutputs(load(), target, [[2, 6]]);
  });
});

const configArb = fc.record({
  layers: fc.integer({ min: 1, max: 4 }),
  heads: fc.constantFrom(1, 2, 4),
  headSize: fc.constantFrom(2, 4),
  ffnMultiple: fc.constantFrom(1, 2),
  norm: fc.constantFrom('pre' as const, 'post' as const),
  activation: fc.constantFrom('gelu' as const, 'relu' as const, 'gelu_tanh' as const),
  bias: fc.boolean(),
  mask: fc.boolean(),
  causal: fc.boolean(),
  causalStyle: fc.constantFrom('additive' as const, 'where' as const),
  fusedQkv: fc.boolean(),
  normKind: fc.constantFrom('layernorm' as const, 'rmsnorm' as const),
  scale: fc.constantFrom('scores' as const, 'query' as const, 'shape' as const),
  attentionStyle: fc.constantFrom('hf' as const, 'torch-mha' as const),
  seed: fc.integer({ min: 1, max: 100_000 }),
  at: fc.nat(),
  length: fc.nat(),
});

describe('extract, then splice back, on generated transformers', () => {
  it('gives the original outputs, or refuses a span that reads two score terms', async () => {
    await fc.assert(
      fc.asyncProperty(configArb, async (c) => {
        const config: TransformerConfig = {
          layers: c.layers,
          hidden: c.heads * c.headSize,
          heads: c.heads,
          ffnInner: c.heads * c.headSize * c.ffnMultiple,
          norm: c.norm,
          activation: c.activation,
          bias: c.bias,
          mask: c.mask,
          causal: c.causal,
          causalStyle: c.causalStyle,
          fusedQkv: c.fusedQkv,
          normKind: c.normKind,
          scale: c.scale,
          attentionStyle: c.attentionStyle,
          vocab: 20,
          seed: c.seed,
        };
        const start = c.at % c.layers;
        const end = start + (c.length % (c.layers - start));
        const load = () => buildTransformer(config);
        if (c.causal && c.causalStyle === 'where' && c.mask) {
          // GPT-2-style kept triangle plus a padding mask: two values on the scores, one attention_bias
          expect(() => extractModule(load(), start, end)).toThrow(
            /reads? 2 values besides hidden and weights .*; the module contract has one attention_bias/,
          );
          return;
        }
        const { source, target, removedWeights, report } = roundTrip(load, start, end, `gen${c.seed}`);
        expect(target.graph.initializers.filter((v) => removedWeights.has(v))).toEqual([]);
        expect(report.layerMap.filter((i) => i !== null)).toEqual(
          Array.from({ length: c.layers }, (_, i) => i).filter((i) => i < start || i > end),
        );
        await expectSameOutputs(source, target, [
          [1, 4],
          [3, 7],
        ]);
      }),
      { numRuns: 20, seed: 20261122 },
    );
  }, 180_000);
});

/** The weights the reference reads, renamed so that layer j of the result is `layers[j]` of the model. */
function weightsView(model: Model, layers: number[], mean?: { at: number; over: number[] }): Model {
  const byName = new Map(model.graph.initializers.map((v) => [v.name, v.initializer!]));
  const initializers: { name: string; initializer: Tensor }[] = [];
  for (const [name, tensor] of byName) {
    const match = /^layer(\d+)\.(.*)$/.exec(name);
    if (!match) {
      initializers.push({ name, initializer: tensor });
      continue;
    }
    const j = layers.indexOf(Number(match[1]));
    if (j < 0) continue;
    let t = tensor;
    if (mean && Number(match[1]) === mean.at) {
      const sum = new Float64Array(t.size);
      for (const i of mean.over)
        byName
          .get(`layer${i}.${match[2]}`)!
          .toFloat32()
          .forEach((x, k) => (sum[k] += x));
      t = Tensor.fromArray(
        name,
        DataType.FLOAT,
        t.dims,
        Float32Array.from(sum, (s) => s / mean.over.length),
      );
    }
    initializers.push({ name: `layer${j}.${match[2]}`, initializer: t });
  }
  return { graph: { initializers } } as unknown as Model;
}

describe('built-in modules against a plain TS reference', () => {
  const drawn = fc.record({
    layers: fc.integer({ min: 2, max: 4 }),
    norm: fc.constantFrom('pre' as const, 'post' as const),
    normKind: fc.constantFrom('layernorm' as const, 'rmsnorm' as const),
    bias: fc.boolean(),
    mask: fc.boolean(),
    kind: fc.constantFrom('keep-first' as const, 'average' as const),
    seed: fc.integer({ min: 1, max: 100_000 }),
    at: fc.nat(),
    length: fc.nat(),
  });
  it("keep-first runs the span's first layer only; average, one layer of mean weights", async () => {
    await fc.assert(
      fc.asyncProperty(drawn, async (c) => {
        const config: TransformerConfig = {
          layers: c.layers,
          hidden: 8,
          heads: 2,
          ffnInner: 16,
          norm: c.norm,
          normKind: c.normKind,
          activation: c.norm === 'pre' ? 'gelu_tanh' : 'relu',
          bias: c.bias,
          mask: c.mask,
          causal: false,
          vocab: 30,
          seed: c.seed,
        };
        const start = c.at % (c.layers - 1);
        const end = start + 1 + (c.length % (c.layers - start - 1));
        const model = buildTransformer(config);
        const original = buildTransformer(config);
        modularPass({ modules: [{ start, end, source: `builtin:${c.kind}` }] }).run(model);
        assertValid(model, 'modules');
        const span = Array.from({ length: end - start + 1 }, (_, i) => start + i);
        const kept = Array.from({ length: c.layers }, (_, i) => i).filter((i) => i <= start || i > end);
        const view = weightsView(original, kept, c.kind === 'average' ? { at: start, over: span } : undefined);
        const [batch, seq] = [2, 5];
        const ids = Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, j) => (b * 7 + j * 3 + c.seed) % 30));
        const mask = c.mask ? ids.map((row, b) => row.map((_, j) => (j < seq - 2 * b ? 1 : 0))) : undefined;
        const expected = referenceForward(view, { ...config, layers: kept.length }, ids, mask);
        const feeds: Record<string, Tensor> = {
          input_ids: Tensor.fromArray('input_ids', DataType.INT64, [batch, seq], BigInt64Array.from(ids.flat(), BigInt)),
        };
        if (mask)
          feeds.attention_mask = Tensor.fromArray('attention_mask', DataType.INT64, [batch, seq], BigInt64Array.from(mask.flat(), BigInt));
        const actual = (await outputsOf(model, feeds)).last_hidden_state;
        let worst = 0;
        expected.forEach((rows, b) =>
          rows.forEach((row, j) => {
            if (mask && !mask[b][j]) return;
            row.forEach((t, k) => (worst = Math.max(worst, Math.abs(actual[(b * seq + j) * 8 + k] - t))));
          }),
        );
        expect(worst).toBeLessThan(1e-4);
      }),
      { numRuns: 16, seed: 7 },
    );
  }, 120_000);

  it('keep-first and average also work where a module file could not (T5: position bias and mask; decoder layers)', async () => {
    for (const [name, start, end, kind] of [
      ['t5_encoder', 0, 1, 'average'],
      ['t5_encoder', 0, 1, 'keep-first'],
      ['encoder_decoder', 2, 3, 'keep-first'],
    ] as const) {
      const model = loadModel(`fixtures/${name}.onnx`);
      const result = modularPass({ modules: [{ start, end, source: `builtin:${kind}` }] }).run(model);
      assertValid(model, 'modules');
      expect(result.report.removedInitializers).toBeGreaterThan(0);
      const feeds = generateFeeds(describeInputs(model), { batch: 2, seq: 6 }, 3);
      const out = await outputsOf(model, feeds);
      for (const values of Object.values(out)) expect(values.every(Number.isFinite)).toBe(true);
    }
  });

  it('average refuses layers of different structure, naming the difference', () => {
    const model = loadModel('fixtures/bert_contrib_fused.onnx');
    expect(asCommandLine(() => modularPass({ modules: [{ start: 0, end: 1, source: 'builtin:average' }] }).run(model))).toThrow(
      '--module 0-1=builtin:average: layer 1 differs from layer 0 in structure: node 4 is com.microsoft::FastGelu, not com.microsoft::BiasGelu; builtin:average needs layers of one structure',
    );
  });
});

describe('plugins on the layers that remain', () => {
  it('translates original layer numbers through the layer map, refusing replaced layers', async () => {
    const model = loadModel('fixtures/bert_opset14.onnx');
    const original = loadModel('fixtures/bert_opset14.onnx');
    const report = modularPass({ modules: [{ start: 0, end: 1, source: 'builtin:keep-first' }] }).run(model).report;
    expect(report.layerMap).toEqual([0, 2]);
    expect(translateLayers(report.layerMap, [0, 2])).toEqual([0, 1]);
    expect(asCommandLine(() => translateLayers(report.layerMap, [1]))).toThrow(
      '--plugin: layer 1 was replaced by a module (plugins go on the layers that remain)',
    );
    expect(() => translateLayers(report.layerMap, [1])).toThrow(
      'plugins: layer 1 was replaced by a module (plugins go on the layers that remain)',
    );
    const plugins = pluginPass({ plugins: [{ source: 'builtin:identity:1:layer' }], layers: translateLayers(report.layerMap, [2]) }).run(
      model,
    );
    assertValid(model, 'plugins');
    expect((plugins.report.layers as { layer: number }[]).map((l) => l.layer)).toEqual([1]);
    const dropped = loadModel('fixtures/bert_opset14.onnx');
    modularPass({ modules: [{ start: 0, end: 1, source: 'builtin:keep-first' }] }).run(dropped);
    await expectSameOutputs(dropped, model, [[2, 5]]);
    // and the layers dropped do change the output (so the comparison above could fail)
    const feeds = generateFeeds(describeInputs(original), { batch: 1, seq: 4 }, 0);
    expect(maxDifference(await outputsOf(original, feeds), await outputsOf(model, feeds))).toBeGreaterThan(1e-3);
  });
});

describe('refusals leave the model unchanged', () => {
  const bertFile = (start: number, end: number) => {
    const file = path.join(TMP, `bert_refusal_L${start}-${end}.onnx`);
    if (!fs.existsSync(file)) saveModel(extractModule(loadModel('fixtures/bert_opset14.onnx'), start, end).module, file);
    return file;
  };
  const cases: [string, () => ModuleRequest[], string | RegExp][] = [
    [
      'overlapping spans',
      () => [
        { start: 0, end: 1, source: bertFile(0, 1) },
        { start: 1, end: 2, source: bertFile(1, 2) },
      ],
      /^--module 0-1=.* and --module 1-2=.* overlap \(layer 1\)$/,
    ],
    [
      'a span of the wrong length',
      () => [{ start: 0, end: 2, source: bertFile(0, 1) }],
      /^--module 0-2=.*: the module replaces 2 layers \(vcompile\.span = 2\) but layers 0-2 are 3 layers$/,
    ],
    [
      'layers that do not exist',
      () => [{ start: 2, end: 3, source: 'builtin:keep-first' }],
      '--module 2-3=builtin:keep-first: layers 2-3 do not exist (the model has layers 0-2)',
    ],
    [
      'an unknown built-in',
      () => [{ start: 0, end: 1, source: 'builtin:median' }],
      "--module 0-1=builtin:median: unknown built-in module 'median' (there are builtin:keep-first and builtin:average)",
    ],
    ['a missing module file', () => [{ start: 0, end: 1, source: '/nonexistent/m.onnx' }], 'module /nonexistent/m.onnx: no such file'],
  ];
  it.each(cases)('%s', (_what, requests, message) => {
    const model = loadModel('fixtures/bert_opset14.onnx');
    const before = encodeModel(model);
    expect(asCommandLine(() => modularPass({ modules: requests() }).run(model))).toThrow(message);
    expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
  });

  it('a module whose hidden size differs', () => {
    const model = loadModel('fixtures/bert_opset14.onnx');
    const before = encodeModel(model);
    const other = path.join(TMP, 'fused_L0-1.onnx');
    saveModel(extractModule(loadModel('fixtures/bert_fused_qkv.onnx'), 0, 1).module, other, { overwrite: true });
    expect(asCommandLine(() => modularPass({ modules: [{ start: 1, end: 2, source: other }] }).run(model))).toThrow(
      `module ${other}: hidden size 48 does not match the model's 64`,
    );
    expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
  });

  it('layers whose inside is read from outside (a graph output)', () => {
    const model = loadModel('fixtures/bert_opset14.onnx');
    const inside = analyzeTransformer(model).layers[0].output;
    model.graph.outputs.push(inside);
    const before = encodeModel(model);
    expect(asCommandLine(() => modularPass({ modules: [{ start: 0, end: 1, source: 'builtin:average' }] }).run(model))).toThrow(
      `--module 0-1=builtin:average: layers 0-1 cannot be removed: ${inside.name}, computed inside, is a graph output`,
    );
    expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
  });

  it('layers whose inside is read from outside (a node after them)', () => {
    const model = loadModel('fixtures/bert_opset14.onnx');
    const inside = analyzeTransformer(model).layers[1].selfAttention.output;
    const b = new GraphBuilder(model.graph, NameAuthority.forModel(model));
    const peek = b.node('Identity', [inside]);
    peek.name = 'peek';
    model.graph.outputs.push(peek.outputs[0]!);
    peek.outputs[0]!.type = inside.type ?? tensorType(DataType.FLOAT);
    const before = encodeModel(model);
    expect(asCommandLine(() => modularPass({ modules: [{ start: 0, end: 1, source: 'builtin:keep-first' }] }).run(model))).toThrow(
      `--module 0-1=builtin:keep-first: layer 1 cannot be removed: ${inside.name}, computed inside, is also read by peek (Identity) outside`,
    );
    expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
  });
});
