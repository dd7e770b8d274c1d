// Modules fitted from data (src/decide/fit-modules.ts): what a fit rewrites, and the rewrite.
//
// A fitted module has the structure of its span's first layer (as builtin:keep-first or builtin:average
// make it); the fit changes one thing, the last projection before the output: the weight W and bias b
// of that layer's feed-forward output projection ("down projection", inc = a W + b for the activation a).
// Both fitted variants end as a new W and b (a linear map T on inc is folded in: (a W + b) T + t0 =
// a (W T) + (b T + t0)), so a fitted module runs exactly as many MACs as its initial layer.
//
// The fit site is checked on the model before any work, and refused in one line when the layer is not
// what the rewrite needs: a plain residual Add after the block (not a fused SkipLayerNormalization,
// whose bias and sum live inside the fused op), a MatMul or Gemm whose weight is a whole float
// [inner, hidden] matrix (or its transpose), on [batch, seq, ...] activations (rows in stream order).
import type { Layer, Sublayer, TransformerAnalysis } from '../../src/analysis/index.js';
import { nodeLabel } from '../../src/analysis/patterns.js';
import type { Projection } from '../../src/analysis/projection.js';
import { type Label, msg, VcompileError } from '../../src/errors.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { isFloatType, Tensor } from '../../src/ir/tensor.js';
import { eliminateDeadCode, toposort } from '../../src/ir/transforms.js';
import { DataType } from '../../src/ir/types.js';

/** The layer's last sublayer (its feed-forward branch) and the projection a fit rewrites. */
export interface FitSite {
  layer: Layer;
  ffn: Sublayer;
  down: Projection;
  /** the down projection's input width (f) and the hidden size (d) */
  inner: number;
  hidden: number;
}

/** Check that layer `index` can be the start of a fitted module; `what` prefixes the refusal. */
export function fitSite(analysis: TransformerAnalysis, index: number, what: Label): FitSite {
  const layer = analysis.layers[index];
  if (!layer) throw new Error(`internal: no layer ${index}`);
  const ctx = analysis.context;
  const refuse = (why: string) => new VcompileError(msg`${what}: layer ${index}: ${why}`);
  const ffn = layer.sublayers[layer.sublayers.length - 1];
  if (ffn?.kind !== 'ffn' || !ffn.ffn) throw refuse('the layer does not end in a feed-forward block');
  if (ffn.side)
    throw refuse(
      `a term is added to the feed-forward block's output before its residual add (a fitted module's context maps); fit modules on the original model`,
    );
  const add = ffn.residualAdd;
  if (add.opType !== 'Add' || add.domain)
    throw refuse(
      `the feed-forward block joins the stream in ${nodeLabel(add, ctx)}, a fused op; module fitting rewrites a plain Add (fit the model before ONNX Runtime's fusions)`,
    );
  const down = ffn.ffn.down;
  const mm = down.matmul;
  const hidden = analysis.hidden;
  const inner = ffn.ffn.inner;
  if (hidden === undefined) throw refuse('the hidden size is not fixed');
  if (mm.opType === 'Gemm' && mm.attrInt('transA', 0) !== 0)
    throw refuse(`the feed-forward output projection ${nodeLabel(mm, ctx)} transposes its input (transA)`);
  const t = down.weight.tensor;
  const expected = down.weight.transposed ? [hidden, inner] : [inner, hidden];
  if (!isFloatType(t.dataType) || t.dims.length !== 2 || t.dims[0] !== expected[0] || t.dims[1] !== expected[1]) {
    throw refuse(
      `the feed-forward output projection ${nodeLabel(mm, ctx)} reads ${down.weight.value.name} [${t.dims.join(', ')}], not a whole [${inner}, ${hidden}] matrix; module fitting rewrites that matrix`,
    );
  }
  const rank = (v: Value) => ctx.shapes.rank(v);
  if (rank(down.input) !== 3 || rank(ffn.ffn.output) !== 3)
    throw refuse(
      `the feed-forward block works on ${down.input.name} of rank ${rank(down.input) ?? '?'}; module fitting needs [batch, seq, ${inner}] activations`,
    );
  if (down.bias && !down.biasAdd && mm.opType !== 'Gemm')
    throw refuse(`the bias of the feed-forward output projection ${nodeLabel(mm, ctx)} is added inside another op`);
  if (ffn.placement === 'post' && ffn.norm.input !== add.outputs[0])
    throw refuse(`the norm after ${nodeLabel(add, ctx)} does not read the residual sum`);
  return { layer, ffn, down, inner, hidden };
}

/**
 * W [f][d] (row-major, as `a W`) of the site's down projection: the model's weight, or what `weights`
 * (e.g. builtin:average's means) puts in its place.
 */
export function downWeight(site: FitSite, weights?: ReadonlyMap<Value, Tensor>): Float32Array {
  const values = (weights?.get(site.down.weight.value) ?? site.down.weight.tensor).toFloat32();
  const { inner: f, hidden: d } = site;
  if (!site.down.weight.transposed) return Float32Array.from(values);
  const w = new Float32Array(f * d);
  for (let i = 0; i < d; i++) for (let j = 0; j < f; j++) w[j * d + i] = values[i * f + j];
  return w;
}

/** b [d] of the site's down projection (zeros without one), or what `weights` puts in its place. */
export function downBias(site: FitSite, weights?: ReadonlyMap<Value, Tensor>): Float32Array {
  const t = site.down.bias && (weights?.get(site.down.bias) ?? site.down.bias.constTensor());
  if (site.down.bias && !t) throw new Error(`internal: the bias ${site.down.bias.name} is not a constant`);
  return t ? Float32Array.from(t.toFloat32()) : new Float32Array(site.hidden);
}

/**
 * Write W (`weight`, [f][d] row-major) and b into the down projection of `module`, a copy of the site's
 * layer (`values` maps the model's values to the module's, as extractModule returns them). The projection
 * reads new initializers; a projection without a bias gets one, as an Add after it (`addedBias`).
 */
export function setDownProjection(
  module: Model,
  values: ReadonlyMap<Value, Value>,
  site: FitSite,
  weight: Float32Array,
  bias: Float32Array,
): { addedBias: boolean } {
  const { inner: f, hidden: d } = site;
  const mm = values.get(site.down.matmul.outputs[0]!)?.producer;
  if (!mm) throw new Error('internal: the module does not compute the down projection');
  const b = new GraphBuilder(module.graph, NameAuthority.forModel(module), { prefix: 'vcompile/fit/' });
  const transB = mm.opType === 'Gemm' && mm.attrInt('transB', 0) === 1;
  let data = weight;
  if (transB) {
    data = new Float32Array(f * d);
    for (let j = 0; j < f; j++) for (let i = 0; i < d; i++) data[i * f + j] = weight[j * d + i];
  }
  mm.setInput(1, b.initializer('down_weight', Tensor.fromArray('down_weight', DataType.FLOAT, transB ? [d, f] : [f, d], data)));
  const biasValue = b.initializer('down_bias', Tensor.fromArray('down_bias', DataType.FLOAT, [d], Float32Array.from(bias)));
  let addedBias = false;
  const add = site.down.biasAdd && values.get(site.down.biasAdd.outputs[0]!)?.producer;
  if (site.down.biasAdd && add) {
    add.setInput(site.down.biasAdd.inputs.indexOf(site.down.bias!), biasValue);
  } else if (mm.opType === 'Gemm' && site.down.bias) {
    mm.setInput(2, biasValue);
  } else {
    const product = mm.outputs[0]!;
    const uses = product.uses();
    const sum = b.op.Add(product, biasValue);
    for (const use of uses) use.node.setInput(use.index, sum);
    if (product.isGraphOutput) throw new Error('internal: the down projection is the module output');
    addedBias = true;
  }
  eliminateDeadCode(module.graph);
  toposort(module.graph);
  return { addedBias };
}
