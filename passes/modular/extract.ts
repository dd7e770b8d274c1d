// `vcompile extract`: layers START..END of a model as a standalone module under the contract. The
// span's nodes are copied with `hidden` and the attention bias as graph inputs and every weight they
// read (values computed from weights only included) as the module's own initializers, over the same
// data. The module keeps the model's opset imports, so it can be spliced back unchanged, or trained
// in any framework as the starting point of a modular layer.
import { analyzeTransformer, type TransformerAnalysis } from '../../src/analysis/index.js';
import { type Label, msg, VcompileError } from '../../src/errors.js';
import { ModelBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { cloneNodes } from '../../src/ir/transforms.js';
import { DataType, type Dim, dataTypeName, type IrType, tensorType } from '../../src/ir/types.js';
import { ATTENTION_BIAS, HIDDEN, HIDDEN_OUT, SPAN_KEY, START_KEY } from './contract.js';
import { attentionBias, constantDerived, describeSpan, type Span, spanName } from './span.js';

export interface Extracted {
  module: Model;
  span: Span;
  bias?: Value;
  /** each value of the model the module computes or reads, with its counterpart in the module */
  values: Map<Value, Value>;
}

export interface ExtractOptions {
  /** weights of the span to write with other values (e.g. builtin:average's means; same type and shape) */
  weights?: ReadonlyMap<Value, Tensor>;
  /** vcompile.span to record (default: the extracted layers' count): a module of one layer made to replace more */
  replaces?: number;
  /** how refusals name the request (default: `extract layers START-END`) */
  label?: Label;
}

/** Layers `start..end` of `model` as a module (the model is not changed). */
export function extractModule(
  model: Model,
  start: number,
  end: number,
  analysis: TransformerAnalysis = analyzeTransformer(model),
  options: ExtractOptions = {},
): Extracted {
  const what = options.label ?? `extract ${spanName(start, end)}`;
  if (analysis.error) throw new VcompileError(msg`${what}: transformer analysis stopped: ${analysis.error.message}`);
  const hiddenSize = analysis.hidden;
  if (hiddenSize === undefined) throw new VcompileError(msg`${what}: the hidden size of the model is not fixed`);
  const span = describeSpan(analysis, start, end, constantDerived(model.graph), what);
  const bias = attentionBias(span, analysis, what);
  const shapes = analysis.context.shapes;
  const streamType = shapes.get(span.hidden).dtype;
  if (streamType !== DataType.FLOAT)
    throw new VcompileError(msg`${what}: the residual stream is ${dataTypeName(streamType ?? 0)}; the module contract takes float`);
  const local = model.functions.find((f) =>
    [...span.region, ...span.cone].some((n) => n.opType === f.name && (n.domain ?? '') === (f.domain ?? '')),
  );
  if (local)
    throw new VcompileError(
      msg`${what}: the layers call the model-local function ${local.domain ?? ''}::${local.name}; modules cannot carry functions`,
    );

  const b = new ModelBuilder(model.opsetVersion('') ?? 17, `vcompile_module_L${start}-${end}`);
  const module = b.model;
  module.irVersion = model.irVersion;
  module.opsetImports = model.opsetImports.map((o) => ({ domain: o.domain, version: o.version }));
  const stream = tensorType(DataType.FLOAT, ['batch', 'seq', hiddenSize]);
  const mapping = new Map<Value, Value>([[span.hidden, b.input(HIDDEN, stream)]]);
  if (bias) mapping.set(bias, b.input(ATTENTION_BIAS, biasType(bias, span, analysis)));
  for (const weight of span.constants)
    mapping.set(weight, b.initializer(weight.name, tensorCopy(options.weights?.get(weight) ?? weight.constTensor()!)));
  const nodes = new Set([...span.cone, ...span.region]);
  cloneNodes(
    model.graph.nodes.filter((n) => nodes.has(n)),
    b,
    mapping,
  );
  const out = mapping.get(span.output);
  if (!out) throw new Error(`internal: the copied layers do not compute ${span.output.name}`);
  b.output(out, HIDDEN_OUT, stream);
  module.docString = `${spanName(start, end)} of a ${model.graph.name ?? 'model'} graph, extracted by vcompile`;
  module.metadataProps = [
    [SPAN_KEY, String(options.replaces ?? end - start + 1)],
    [START_KEY, String(start)],
  ];
  return { module, span, bias, values: mapping };
}

/** A tensor object of its own over the same data (a module's weights share the model's bytes). */
export function tensorCopy(t: Tensor): Tensor {
  const copy = new Tensor(t.name, t.dataType, [...t.dims], t.storage);
  copy.docString = t.docString;
  copy.segment = t.segment;
  return copy;
}

/** The bias input's type: its inferred element type and shape, with the stream's batch and seq named. */
function biasType(bias: Value, span: Span, analysis: TransformerAnalysis): IrType {
  const shapes = analysis.context.shapes;
  const info = shapes.get(bias);
  const batch = shapes.dim(span.hidden, 0);
  const seq = shapes.dim(span.hidden, 1);
  const dims: Dim[] | undefined = info.shape?.map((d) => {
    if (d?.constant !== undefined) return { value: d.constant };
    if (d && seq && d.equals(seq)) return { param: 'seq' };
    if (d && batch && d.equals(batch)) return { param: 'batch' };
    return {};
  });
  return { kind: 'tensor', elemType: info.dtype ?? DataType.FLOAT, shape: dims };
}
