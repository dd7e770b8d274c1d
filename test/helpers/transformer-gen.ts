// Build a transformer encoder/decoder graph the way PyTorch's exporter writes one: projections as
// MatMul + Add, heads split with Shape/Gather/Unsqueeze/Concat/Reshape chains read at run time (so
// batch and seq stay symbolic), norms spelled out or as LayerNormalization, an additive padding mask
// from `attention_mask` and/or a causal triangle computed from Range/Less. Weights are seeded random.
// Tests draw configurations, build them here, and check that the analysis recovers them.
import { type Attrs, float, ModelBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { DataType, tensorType } from '../../src/ir/types.js';

export interface TransformerConfig {
  /** number of layers */
  layers: number;
  hidden: number;
  /** must divide `hidden` */
  heads: number;
  ffnInner: number;
  /** pre: x + f(norm(x)); post: norm(x + f(x)) */
  norm: 'pre' | 'post';
  activation: 'gelu' | 'gelu_tanh' | 'relu';
  /** biases on every projection */
  bias: boolean;
  /** an additive padding mask from the `attention_mask` input */
  mask: boolean;
  /** a causal triangle on the scores */
  causal: boolean;
  /** layernorm (default) or rmsnorm */
  normKind?: 'layernorm' | 'rmsnorm';
  /** spelled out of ReduceMean/Sub/Pow/... (default) or one LayerNormalization op (layernorm only) */
  normForm?: 'spelled' | 'op';
  /** one QKV projection split in three */
  fusedQkv?: boolean;
  /**
   * Where the 1/sqrt(head size) goes: divide the scores (default, BERT), multiply the query (BART), or
   * multiply Q and Kᵀ by its square root computed from Shape(Q) (PyTorch's scaled_dot_product_attention export)
   */
  scale?: 'scores' | 'query' | 'shape';
  /** causal triangle added to the mask (default), or a boolean kept-triangle applied with Where (GPT-2) */
  causalStyle?: 'additive' | 'where';
  /**
   * 'hf' (default): HuggingFace-style attention with [batch, heads, seq, headSize] tensors.
   * 'torch-mha': nn.MultiheadAttention(batch_first=True) as torch.onnx exports it: the input transposed
   * to [seq, batch, d], one in_proj_weight sliced into Q/K/V, heads folded into the batch
   * ([batch*heads, seq, headSize]), the output projection a Gemm on [seq*batch, d], then transposed back.
   * `fusedQkv` and `scale` do not apply.
   */
  attentionStyle?: 'hf' | 'torch-mha';
  vocab?: number;
  /** a head scoring this many classes per position: the output is `logits` [batch, seq, classes] instead */
  classes?: number;
  seed?: number;
}

const OPSET = 17;
const FLOAT_MIN = -3.4028234663852886e38;

/** The model: inputs `input_ids` [batch, seq] (and `attention_mask` [batch, seq] with `mask`), output `last_hidden_state`. */
export function buildTransformer(config: TransformerConfig): Model {
  if (config.hidden % config.heads !== 0) throw new Error(`hidden ${config.hidden} is not a multiple of ${config.heads} heads`);
  const b = new ModelBuilder(OPSET, 'transformer');
  const gen = new Generator(b, config);
  const hidden = gen.build();
  if (config.classes) b.output(gen.head(hidden, config.classes), 'logits', tensorType(DataType.FLOAT, ['batch', 'seq', config.classes]));
  else b.output(hidden, 'last_hidden_state', tensorType(DataType.FLOAT, ['batch', 'seq', config.hidden]));
  return b.model;
}

/** Parameters per layer, counted from the configuration (what the analysis must report). */
export function expectedLayerParams(config: TransformerConfig): number {
  const d = config.hidden;
  const f = config.ffnInner;
  const bias = config.bias ? 1 : 0;
  const normParams = (config.normKind ?? 'layernorm') === 'layernorm' ? 2 * d : d;
  return 4 * d * d + bias * 4 * d + 2 * d * f + bias * (f + d) + 2 * normParams;
}

interface ScoreMask {
  additive?: Value;
  keep?: Value;
}

class Generator {
  private readonly random: () => number;
  private scalars = new Map<number, Value>();

  constructor(
    private readonly b: ModelBuilder,
    private readonly config: TransformerConfig,
  ) {
    let state = (config.seed ?? 1) >>> 0 || 1;
    this.random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  }

  build(): Value {
    const { b, config } = this;
    const ids = b.input('input_ids', tensorType(DataType.INT64, ['batch', 'seq']));
    const maskInput = config.mask ? b.input('attention_mask', tensorType(DataType.INT64, ['batch', 'seq'])) : undefined;
    const table = this.weight('embeddings.word', [config.vocab ?? 50, config.hidden], 1);
    let x = b.op.Gather(table, ids, { axis: 0 });
    const mask = this.scoreMask(ids, maskInput);
    for (let i = 0; i < config.layers; i++) x = this.layer(x, mask, i);
    return config.norm === 'pre' ? this.normalize(x, 'final_norm') : x;
  }

  /** Class scores per position. */
  head(x: Value, classes: number): Value {
    return this.b.op.MatMul(x, this.weight('head.weight', [this.config.hidden, classes], 2 / Math.sqrt(this.config.hidden)));
  }

  private weight(name: string, dims: number[], scale = 1 / Math.sqrt(dims[0])): Value {
    const size = dims.reduce((a, c) => a * c, 1);
    return this.b.floats(
      name,
      dims,
      Array.from({ length: size }, () => (this.random() * 2 - 1) * scale),
    );
  }

  private scalar(value: number): Value {
    let v = this.scalars.get(value);
    if (!v) {
      v = this.b.scalar(`const_${this.scalars.size}`, value);
      this.scalars.set(value, v);
    }
    return v;
  }

  private ints(values: number[]): Value {
    return this.b.int64s('const_ints', values);
  }

  /** dim `axis` of `v` as a 1-element int64 tensor, read at run time (Shape -> Gather -> Unsqueeze). */
  private dimOf(v: Value, axis: number): Value {
    const { op } = this.b;
    const scalar = op.Gather(op.Shape(v), this.b.int64s('axis', [axis], []), { axis: 0 });
    return op.Unsqueeze(scalar, this.ints([0]));
  }

  /**
   * What the scores get: an additive mask (padding (1 - mask) * -10000, causal 0 / FLOAT_MIN, summed
   * when both), and with causalStyle 'where' a boolean [1, 1, seq, seq] triangle of kept positions.
   */
  private scoreMask(ids: Value, maskInput: Value | undefined): ScoreMask {
    const { op } = this.b;
    let padding: Value | undefined;
    if (maskInput) {
      const expanded = op.Cast(op.Unsqueeze(maskInput, this.ints([1, 2])), { to: DataType.FLOAT });
      padding = op.Mul(op.Sub(this.scalar(1), expanded), this.scalar(-10000));
    }
    if (!this.config.causal) return { additive: padding };
    const seq = op.Gather(op.Shape(ids), this.b.int64s('axis', [1], []), { axis: 0 });
    const steps = op.Range(this.b.int64s('zero', [0], []), seq, this.b.int64s('one', [1], []));
    const column = op.Reshape(op.Add(steps, this.b.int64s('one', [1], [])), this.ints([-1, 1]));
    const keep = op.Less(steps, column);
    if (this.config.causalStyle === 'where') return { additive: padding, keep: op.Unsqueeze(keep, this.ints([0, 1])) };
    const triangle = op.Unsqueeze(op.Where(keep, this.scalar(0), this.scalar(FLOAT_MIN)), this.ints([0, 1]));
    return { additive: padding ? op.Add(triangle, padding) : triangle };
  }

  private layer(x: Value, mask: ScoreMask, i: number): Value {
    const h = this.residual(x, `layer${i}.attention`, (input) => this.attention(input, mask, `layer${i}.attention`));
    return this.residual(h, `layer${i}.ffn`, (input) => this.ffn(input, `layer${i}.ffn`));
  }

  private residual(x: Value, name: string, block: (input: Value) => Value): Value {
    if (this.config.norm === 'pre') return this.b.op.Add(x, block(this.normalize(x, `${name}_norm`)));
    return this.normalize(this.b.op.Add(x, block(x)), `${name}_norm`);
  }

  private linear(x: Value, name: string, inDim: number, outDim: number): Value {
    const y = this.b.op.MatMul(x, this.weight(`${name}.weight`, [inDim, outDim]));
    return this.config.bias ? this.b.op.Add(this.weight(`${name}.bias`, [outDim], 0.1), y) : y;
  }

  private attention(x: Value, mask: ScoreMask, name: string): Value {
    if (this.config.attentionStyle === 'torch-mha') return this.torchAttention(x, mask, name);
    const { op } = this.b;
    const { hidden, heads } = this.config;
    const headSize = hidden / heads;
    let q: Value;
    let k: Value;
    let v: Value;
    if (this.config.fusedQkv) {
      const qkv = this.linear(x, `${name}.qkv`, hidden, 3 * hidden);
      [q, k, v] = this.b.multi('Split', [qkv, this.ints([hidden, hidden, hidden])], { axis: -1 }, 3);
    } else {
      q = this.linear(x, `${name}.query`, hidden, hidden);
      k = this.linear(x, `${name}.key`, hidden, hidden);
      v = this.linear(x, `${name}.value`, hidden, hidden);
    }
    const split = (t: Value, perm: number[]) => {
      const shape = op.Concat(this.dimOf(t, 0), this.dimOf(t, 1), this.ints([heads]), this.ints([headSize]), { axis: 0 });
      return op.Transpose(op.Reshape(t, shape), { perm });
    };
    const style = this.config.scale ?? 'scores';
    if (style === 'query') q = op.Mul(q, this.scalar(headSize ** -0.5));
    let qh = split(q, [0, 2, 1, 3]);
    let kt = split(k, [0, 2, 3, 1]);
    if (style === 'shape') {
      // scale = 1 / sqrt(float(shape(q)[-1])), applied as sqrt(scale) to both sides
      const last = op.Slice(op.Shape(qh), this.ints([-1]), this.b.int64s('end', [9223372036854775807n]));
      const root = op.Sqrt(op.Div(this.scalar(1), op.Sqrt(op.Cast(last, { to: DataType.FLOAT }))));
      qh = op.Mul(qh, root);
      kt = op.Mul(kt, root);
    }
    let scores = op.MatMul(qh, kt);
    if (style === 'scores') scores = op.Div(scores, this.scalar(Math.sqrt(headSize)));
    if (mask.keep) scores = op.Where(mask.keep, scores, this.scalar(FLOAT_MIN));
    if (mask.additive) scores = op.Add(scores, mask.additive);
    const probs = op.Softmax(scores, { axis: -1 });
    const context = op.Transpose(op.MatMul(probs, split(v, [0, 2, 1, 3])), { perm: [0, 2, 1, 3] });
    const merged = op.Reshape(context, op.Concat(this.dimOf(context, 0), this.dimOf(context, 1), this.ints([hidden]), { axis: 0 }));
    return this.linear(merged, `${name}.output`, hidden, hidden);
  }

  private torchAttention(x: Value, mask: ScoreMask, name: string): Value {
    const { op } = this.b;
    const { hidden: d, heads } = this.config;
    const headSize = d / heads;
    const xt = op.Transpose(x, { perm: [1, 0, 2] });
    let qkv = op.MatMul(xt, op.Transpose(this.weight(`${name}.in_proj_weight`, [3 * d, d]), { perm: [1, 0] }));
    if (this.config.bias) qkv = op.Add(qkv, this.weight(`${name}.in_proj_bias`, [3 * d], 0.1));
    const part = (i: number) => op.Slice(qkv, this.ints([i * d]), this.ints([(i + 1) * d]), this.ints([-1]));
    const seq = this.dimOf(xt, 0);
    const batch = this.dimOf(xt, 1);
    const batchHeads = op.Mul(batch, this.ints([heads]));
    const fold = (t: Value, perm: number[]) =>
      op.Transpose(op.Reshape(t, op.Concat(seq, batchHeads, this.ints([headSize]), { axis: 0 })), { perm });
    const q = op.Div(fold(part(0), [1, 0, 2]), this.scalar(Math.sqrt(headSize)));
    let scores = op.MatMul(q, fold(part(1), [1, 2, 0]));
    // masks arrive as [batch or 1, 1, seq or 1, seq]: repeat per head and fold like the scores
    const perHead = (m: Value) => {
      const expanded = op.Expand(m, op.Concat(batch, this.ints([heads, 1, 1]), { axis: 0 }));
      return op.Reshape(expanded, op.Concat(batchHeads, this.ints([-1]), seq, { axis: 0 }));
    };
    if (mask.keep) scores = op.Where(perHead(mask.keep), scores, this.scalar(FLOAT_MIN));
    if (mask.additive) scores = op.Add(scores, perHead(mask.additive));
    const context = op.MatMul(op.Softmax(scores, { axis: -1 }), fold(part(2), [1, 0, 2]));
    const merged = op.Reshape(op.Transpose(context, { perm: [1, 0, 2] }), op.Concat(op.Mul(seq, batch), this.ints([d]), { axis: 0 }));
    const outWeight = this.weight(`${name}.out_proj.weight`, [d, d]);
    const projected = this.config.bias
      ? op.Gemm(merged, outWeight, this.weight(`${name}.out_proj.bias`, [d], 0.1), { transB: 1 })
      : op.Gemm(merged, outWeight, { transB: 1 });
    return op.Transpose(op.Reshape(projected, op.Concat(seq, batch, this.ints([d]), { axis: 0 })), { perm: [1, 0, 2] });
  }

  private ffn(x: Value, name: string): Value {
    const { hidden, ffnInner } = this.config;
    const inner = this.linear(x, `${name}.inner`, hidden, ffnInner);
    return this.linear(this.activate(inner), `${name}.output`, ffnInner, hidden);
  }

  private activate(x: Value): Value {
    const { op } = this.b;
    switch (this.config.activation) {
      case 'relu':
        return op.Relu(x);
      case 'gelu':
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, this.scalar(Math.SQRT2))), this.scalar(1))), this.scalar(0.5));
      case 'gelu_tanh': {
        const cube = op.Mul(op.Pow(x, this.scalar(3)), this.scalar(0.044715));
        const inner = op.Mul(op.Add(x, cube), this.scalar(Math.sqrt(2 / Math.PI)));
        return op.Mul(op.Mul(x, this.scalar(0.5)), op.Add(op.Tanh(inner), this.scalar(1)));
      }
    }
  }

  private normalize(x: Value, name: string): Value {
    const { op } = this.b;
    const { hidden } = this.config;
    const kind = this.config.normKind ?? 'layernorm';
    const gamma = this.b.floats(
      `${name}.weight`,
      [hidden],
      Array.from({ length: hidden }, () => 0.5 + this.random()),
    );
    const beta = kind === 'layernorm' ? this.weight(`${name}.bias`, [hidden], 0.1) : undefined;
    if (this.config.normForm === 'op' && beta) return op.LayerNormalization(x, gamma, beta, { axis: -1, epsilon: float(1e-5) });
    const mean = (t: Value) => op.ReduceMean(t, { axes: [-1], keepdims: 1 } satisfies Attrs);
    const epsilon = this.scalar(kind === 'layernorm' ? 1e-5 : 1e-6);
    if (kind === 'rmsnorm') {
      const inv = op.Div(this.scalar(1), op.Sqrt(op.Add(mean(op.Pow(x, this.scalar(2))), epsilon)));
      return op.Mul(gamma, op.Mul(x, inv));
    }
    const centered = op.Sub(x, mean(x));
    const std = op.Sqrt(op.Add(mean(op.Pow(centered, this.scalar(2))), epsilon));
    return op.Add(op.Mul(op.Div(centered, std), gamma), beta!);
  }
}
