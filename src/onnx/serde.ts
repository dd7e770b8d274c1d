// The one bridge between decoded protobuf messages and the IR, both ways. Every ONNX field has a place
// in the IR; fields this schema does not know ride along as `unknownFields` on models, graphs, nodes,
// attributes, tensors and value infos.
import { type Attribute, Graph, Node, type SparseTensor, Value } from '../ir/graph.js';
import { Model, ModelFunction, type OpsetId, type TrainingInfo } from '../ir/model.js';
import { type ExternalData, Tensor, type TensorStorage, type TypedField, type TypedValues } from '../ir/tensor.js';
import type { Dim, Entry, IrType } from '../ir/types.js';
import type { ProtoMessage } from './codec.js';

type P = ProtoMessage;
const list = <T = P>(m: P, field: string): T[] => (m[field] as T[] | undefined) ?? [];

export class ModelFormatError extends Error {}

export interface DecodeContext {
  /** Turns a tensor's external_data entries into lazily read data; absent when decoding from bytes alone. */
  externalData?: (entries: Entry[], tensorName: string) => ExternalData;
}

// ------------------------------------------------------------------------------------ decode

export function modelFromProto(p: P, ctx: DecodeContext = {}): Model {
  const model = new Model();
  model.irVersion = optionalNumber(p.ir_version, 'ir_version');
  model.opsetImports = list(p, 'opset_import').map(opsetFromProto);
  model.producerName = p.producer_name as string | undefined;
  model.producerVersion = p.producer_version as string | undefined;
  model.domain = p.domain as string | undefined;
  model.modelVersion = p.model_version as bigint | undefined;
  model.docString = p.doc_string as string | undefined;
  model.graph = p.graph ? graphFromProto(p.graph as P, null, ctx) : new Graph();
  model.metadataProps = entriesFromProto(p.metadata_props);
  model.trainingInfo = list(p, 'training_info').map((t) => trainingInfoFromProto(t, model.graph, ctx));
  model.functions = list(p, 'functions').map((f) => functionFromProto(f, ctx));
  model.configuration = list(p, 'configuration');
  model.unknownFields = p.$unknown;
  return model;
}

function optionalNumber(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value as bigint);
  if (!Number.isSafeInteger(n)) throw new ModelFormatError(`${what} ${value} is out of range`);
  return n;
}

function opsetFromProto(p: P): OpsetId {
  return { domain: p.domain as string | undefined, version: optionalNumber(p.version, 'opset version') ?? 0, unknownFields: p.$unknown };
}

function entriesFromProto(value: unknown): Entry[] | undefined {
  if (value === undefined) return undefined;
  return (value as P[]).map((e) => [(e.key as string) ?? '', (e.value as string) ?? '']);
}

function trainingInfoFromProto(p: P, mainGraph: Graph, ctx: DecodeContext): TrainingInfo {
  return {
    initialization: p.initialization ? graphFromProto(p.initialization as P, mainGraph, ctx) : undefined,
    algorithm: p.algorithm ? graphFromProto(p.algorithm as P, mainGraph, ctx) : undefined,
    initializationBinding: entriesFromProto(p.initialization_binding),
    updateBinding: entriesFromProto(p.update_binding),
    unknownFields: p.$unknown,
  };
}

function functionFromProto(p: P, ctx: DecodeContext): ModelFunction {
  const asGraph: P = {
    node: p.node,
    input: list<string>(p, 'input').map((name) => ({ name })),
    output: list<string>(p, 'output').map((name) => ({ name })),
    value_info: p.value_info,
  };
  const fn = new ModelFunction(p.domain as string | undefined, (p.name as string) ?? '', graphFromProto(asGraph, null, ctx));
  fn.overload = p.overload as string | undefined;
  fn.docString = p.doc_string as string | undefined;
  fn.metadataProps = entriesFromProto(p.metadata_props);
  fn.attributeNames = list<string>(p, 'attribute');
  fn.attributeProtos = list(p, 'attribute_proto').map((a) => attributeFromProto(a, fn.body, ctx));
  fn.opsetImports = list(p, 'opset_import').map(opsetFromProto);
  fn.unknownFields = p.$unknown;
  return fn;
}

class Scope {
  private readonly names = new Map<string, Value>();
  constructor(
    readonly graph: Graph,
    private readonly outer: Scope | null,
  ) {}

  define(value: Value): void {
    if (!this.names.has(value.name)) this.names.set(value.name, value);
  }

  resolve(name: string): Value | undefined {
    return this.names.get(name) ?? this.outer?.resolve(name);
  }

  /** A name nothing defines: kept as a free-standing value so the verifier can report it. */
  resolveOrDangling(name: string): Value {
    const found = this.resolve(name);
    if (found) return found;
    const dangling = new Value(name);
    this.names.set(name, dangling);
    return dangling;
  }
}

const scopes = new WeakMap<Graph, Scope>();

function graphFromProto(p: P, outer: Graph | null, ctx: DecodeContext): Graph {
  const graph = new Graph(p.name as string | undefined);
  graph.outerScope = outer;
  const scope = new Scope(graph, outer ? (scopes.get(outer) ?? null) : null);
  scopes.set(graph, scope);
  graph.docString = p.doc_string as string | undefined;
  graph.metadataProps = entriesFromProto(p.metadata_props);
  graph.unknownFields = p.$unknown;

  for (const info of list(p, 'input')) scope.define(graph.addInput(valueFromInfo(info)));
  for (const t of list(p, 'initializer')) defineInitializer(graph, scope, tensorFromProto(t, ctx));
  for (const s of list(p, 'sparse_initializer')) {
    const sparse = sparseFromProto(s, ctx);
    const name = sparse.values.name ?? '';
    const value = scope.resolve(name)?.graph === graph ? scope.resolve(name)! : new Value(name);
    value.graph = graph;
    scope.define(value);
    graph.sparseInitializers.push({ value, sparse });
  }
  // Outputs of every node are defined before any input is resolved, so files whose nodes are not in
  // topological order still decode (the verifier reports the order).
  const nodeProtos = list(p, 'node');
  const nodes = nodeProtos.map((n) => nodeShellFromProto(n));
  graph.insertNodes(nodes);
  for (const node of nodes) for (const out of node.outputs) if (out) scope.define(out);
  nodes.forEach((node, i) => completeNode(node, nodeProtos[i], graph, scope, ctx));

  graph.outputs = list(p, 'output').map((info) => applyInfo(scope.resolveOrDangling(info.name as string), info));
  graph.valueInfos = list(p, 'value_info').map((info) => applyInfo(scope.resolveOrDangling((info.name as string) ?? ''), info));
  graph.quantizationAnnotations = list(p, 'quantization_annotation').map((q) => ({
    tensorName: (q.tensor_name as string) ?? '',
    quantParameterTensorNames: entriesFromProto(q.quant_parameter_tensor_names),
    unknownFields: q.$unknown,
  }));
  return graph;
}

function defineInitializer(graph: Graph, scope: Scope, tensor: Tensor): void {
  const name = tensor.name ?? '';
  const asInput = graph.inputs.find((v) => v.name === name);
  // Before IR 4, initializers were also listed as graph inputs: one value, both roles.
  const value = asInput ?? new Value(name);
  if (asInput) value.initializer = tensor;
  graph.addInitializer(value, tensor);
  scope.define(value);
}

function valueFromInfo(info: P): Value {
  return applyInfo(new Value((info.name as string) ?? ''), info);
}

function applyInfo(value: Value, info: P): Value {
  if (info.type !== undefined) value.type = typeFromProto(info.type as P);
  if (info.doc_string !== undefined) value.docString = info.doc_string as string;
  if (info.metadata_props !== undefined) value.metadataProps = entriesFromProto(info.metadata_props);
  if (info.$unknown) value.unknownFields = info.$unknown;
  return value;
}

function nodeShellFromProto(p: P): Node {
  const outputs = list<string>(p, 'output').map((name) => (name === '' ? null : new Value(name)));
  const node = new Node((p.op_type as string) ?? '', [], outputs);
  node.name = p.name as string | undefined;
  node.domain = p.domain as string | undefined;
  node.overload = p.overload as string | undefined;
  node.docString = p.doc_string as string | undefined;
  node.metadataProps = entriesFromProto(p.metadata_props);
  node.deviceConfigurations = p.device_configurations as P[] | undefined;
  node.unknownFields = p.$unknown;
  return node;
}

function completeNode(node: Node, p: P, graph: Graph, scope: Scope, ctx: DecodeContext): void {
  list<string>(p, 'input').forEach((name, i) => node.setInput(i, name === '' ? null : scope.resolveOrDangling(name)));
  node.attributes = list(p, 'attribute').map((a) => attributeFromProto(a, graph, ctx));
  for (const sub of node.subgraphs()) sub.outerScope = graph;
}

function attributeFromProto(p: P, graph: Graph, ctx: DecodeContext): Attribute {
  const a: Attribute = { name: (p.name as string) ?? '' };
  if (p.type !== undefined) a.type = p.type as number;
  if (p.ref_attr_name !== undefined) a.refAttrName = p.ref_attr_name as string;
  if (p.doc_string !== undefined) a.docString = p.doc_string as string;
  if (p.f !== undefined) a.f = p.f as number;
  if (p.i !== undefined) a.i = p.i as bigint;
  if (p.s !== undefined) a.s = p.s as Uint8Array;
  if (p.t !== undefined) a.t = tensorFromProto(p.t as P, ctx);
  if (p.g !== undefined) a.g = graphFromProto(p.g as P, graph, ctx);
  if (p.sparse_tensor !== undefined) a.sparseTensor = sparseFromProto(p.sparse_tensor as P, ctx);
  if (p.tp !== undefined) a.tp = typeFromProto(p.tp as P);
  if (p.floats !== undefined) a.floats = Array.from(p.floats as Float32Array);
  if (p.ints !== undefined) a.ints = Array.from(p.ints as BigInt64Array);
  if (p.strings !== undefined) a.strings = p.strings as Uint8Array[];
  if (p.tensors !== undefined) a.tensors = list(p, 'tensors').map((t) => tensorFromProto(t, ctx));
  if (p.graphs !== undefined) a.graphs = list(p, 'graphs').map((g) => graphFromProto(g, graph, ctx));
  if (p.sparse_tensors !== undefined) a.sparseTensors = list(p, 'sparse_tensors').map((s) => sparseFromProto(s, ctx));
  if (p.type_protos !== undefined) a.typeProtos = list(p, 'type_protos').map(typeFromProto);
  if (p.$unknown) a.unknownFields = p.$unknown;
  return a;
}

const TYPED_FIELDS: TypedField[] = ['float_data', 'int32_data', 'int64_data', 'double_data', 'uint64_data'];

function tensorFromProto(p: P, ctx: DecodeContext): Tensor {
  const name = p.name as string | undefined;
  const dims = Array.from((p.dims as BigInt64Array | undefined) ?? [], (d) => optionalNumber(d, `tensor ${name ?? ''} dim`)!);
  const tensor = new Tensor(name, (p.data_type as number | undefined) ?? 0, dims, storageFromProto(p, ctx));
  tensor.docString = p.doc_string as string | undefined;
  tensor.metadataProps = entriesFromProto(p.metadata_props);
  tensor.dataLocation = p.data_location as number | undefined;
  if (p.segment) tensor.segment = { begin: (p.segment as P).begin as bigint, end: (p.segment as P).end as bigint };
  tensor.unknownFields = p.$unknown;
  return tensor;
}

function storageFromProto(p: P, ctx: DecodeContext): TensorStorage {
  const name = (p.name as string) ?? '';
  if (p.external_data !== undefined || p.data_location === 1) {
    if (!ctx.externalData) {
      throw new ModelFormatError(`tensor ${name} stores its data in an external file: load the model from its path`);
    }
    return { kind: 'external', external: ctx.externalData(entriesFromProto(p.external_data) ?? [], name) };
  }
  if (p.raw_data !== undefined) return { kind: 'raw', bytes: p.raw_data as Uint8Array };
  if (p.string_data !== undefined) return { kind: 'strings', values: p.string_data as Uint8Array[] };
  const field = TYPED_FIELDS.find((f) => p[f] !== undefined);
  if (field) return { kind: 'typed', field, values: p[field] as TypedValues };
  return { kind: 'none' };
}

function sparseFromProto(p: P, ctx: DecodeContext): SparseTensor {
  const emptyTensor = () => new Tensor(undefined, 0, [], { kind: 'none' });
  return {
    values: p.values ? tensorFromProto(p.values as P, ctx) : emptyTensor(),
    indices: p.indices ? tensorFromProto(p.indices as P, ctx) : emptyTensor(),
    dims: p.dims ? Array.from(p.dims as BigInt64Array, (d) => optionalNumber(d, 'sparse dim')!) : undefined,
  };
}

export function typeFromProto(p: P): IrType {
  const denotation = p.denotation as string | undefined;
  const withDenotation = <T extends IrType>(t: T): T => (denotation === undefined ? t : { ...t, denotation });
  if (p.tensor_type || p.sparse_tensor_type) {
    const t = (p.tensor_type ?? p.sparse_tensor_type) as P;
    return withDenotation({
      kind: p.tensor_type ? 'tensor' : 'sparse_tensor',
      elemType: t.elem_type as number | undefined,
      shape: t.shape ? list(t.shape as P, 'dim').map(dimFromProto) : undefined,
    });
  }
  if (p.sequence_type || p.optional_type) {
    const inner = (p.sequence_type ?? p.optional_type) as P;
    return withDenotation({
      kind: p.sequence_type ? 'sequence' : 'optional',
      elem: inner.elem_type ? typeFromProto(inner.elem_type as P) : undefined,
    });
  }
  if (p.map_type) {
    const m = p.map_type as P;
    return withDenotation({
      kind: 'map',
      keyType: m.key_type as number | undefined,
      value: m.value_type ? typeFromProto(m.value_type as P) : undefined,
    });
  }
  if (p.opaque_type) {
    const o = p.opaque_type as P;
    return withDenotation({ kind: 'opaque', domain: o.domain as string | undefined, name: o.name as string | undefined });
  }
  return withDenotation({ kind: 'unset' });
}

function dimFromProto(p: P): Dim {
  const dim: Dim = {};
  if (p.dim_value !== undefined) dim.value = optionalNumber(p.dim_value, 'dim_value');
  if (p.dim_param !== undefined) dim.param = p.dim_param as string;
  if (p.denotation !== undefined) dim.denotation = p.denotation as string;
  return dim;
}

// ------------------------------------------------------------------------------------ encode

export interface EncodeContext {
  /**
   * Decides where a tensor's data goes: return external_data entries to store it outside the model
   * (the callback writes the bytes), or undefined to keep it inline.
   */
  placeExternal?: (tensor: Tensor, name: string) => Entry[] | undefined;
}

export function modelToProto(model: Model, ctx: EncodeContext = {}): P {
  return {
    ir_version: model.irVersion === undefined ? undefined : BigInt(model.irVersion),
    opset_import: model.opsetImports.map(opsetToProto),
    producer_name: model.producerName,
    producer_version: model.producerVersion,
    domain: model.domain,
    model_version: model.modelVersion,
    doc_string: model.docString,
    graph: graphToProto(model.graph, ctx),
    metadata_props: entriesToProto(model.metadataProps),
    training_info: nonEmpty(model.trainingInfo.map((t) => trainingInfoToProto(t, ctx))),
    functions: nonEmpty(model.functions.map((f) => functionToProto(f, ctx))),
    configuration: nonEmpty(model.configuration as P[]),
    $unknown: model.unknownFields,
  };
}

function nonEmpty<T>(items: T[]): T[] | undefined {
  return items.length ? items : undefined;
}

function opsetToProto(o: OpsetId): P {
  return { domain: o.domain, version: BigInt(o.version), $unknown: o.unknownFields };
}

function entriesToProto(entries: Entry[] | undefined): P[] | undefined {
  return entries?.map(([key, value]) => ({ key, value }));
}

function trainingInfoToProto(t: TrainingInfo, ctx: EncodeContext): P {
  return {
    initialization: t.initialization && graphToProto(t.initialization, ctx),
    algorithm: t.algorithm && graphToProto(t.algorithm, ctx),
    initialization_binding: entriesToProto(t.initializationBinding),
    update_binding: entriesToProto(t.updateBinding),
    $unknown: t.unknownFields,
  };
}

function functionToProto(fn: ModelFunction, ctx: EncodeContext): P {
  const body = fn.body;
  return {
    name: fn.name,
    input: nonEmpty(body.inputs.map((v) => v.name)),
    output: nonEmpty(body.outputs.map((v) => v.name)),
    attribute: nonEmpty(fn.attributeNames),
    attribute_proto: nonEmpty(fn.attributeProtos.map((a) => attributeToProto(a, ctx))),
    node: nonEmpty(body.nodes.map((n) => nodeToProto(n, ctx))),
    doc_string: fn.docString,
    opset_import: nonEmpty(fn.opsetImports.map(opsetToProto)),
    domain: fn.domain,
    overload: fn.overload,
    value_info: nonEmpty(body.valueInfos.map(valueInfoToProto)),
    metadata_props: entriesToProto(fn.metadataProps),
    $unknown: fn.unknownFields,
  };
}

function graphToProto(g: Graph, ctx: EncodeContext): P {
  return {
    node: nonEmpty(g.nodes.map((n) => nodeToProto(n, ctx))),
    name: g.name,
    initializer: nonEmpty(g.initializers.map((v) => tensorToProto(v.initializer!, ctx, v.name))),
    sparse_initializer: nonEmpty(g.sparseInitializers.map((s) => sparseToProto(s.sparse, ctx, s.value.name))),
    doc_string: g.docString,
    input: nonEmpty(g.inputs.map(valueInfoToProto)),
    output: nonEmpty(g.outputs.map(valueInfoToProto)),
    value_info: nonEmpty(g.valueInfos.map(valueInfoToProto)),
    quantization_annotation: nonEmpty(
      g.quantizationAnnotations.map((q) => ({
        tensor_name: q.tensorName,
        quant_parameter_tensor_names: entriesToProto(q.quantParameterTensorNames),
        $unknown: q.unknownFields,
      })),
    ),
    metadata_props: entriesToProto(g.metadataProps),
    $unknown: g.unknownFields,
  };
}

function valueInfoToProto(v: Value): P {
  return {
    name: v.name,
    type: v.type && typeToProto(v.type),
    doc_string: v.docString,
    metadata_props: entriesToProto(v.metadataProps),
    $unknown: v.unknownFields,
  };
}

function nodeToProto(n: Node, ctx: EncodeContext): P {
  return {
    input: nonEmpty(n.inputs.map((v) => v?.name ?? '')),
    output: nonEmpty(n.outputs.map((v) => v?.name ?? '')),
    name: n.name,
    op_type: n.opType,
    domain: n.domain,
    overload: n.overload,
    attribute: nonEmpty(n.attributes.map((a) => attributeToProto(a, ctx))),
    doc_string: n.docString,
    metadata_props: entriesToProto(n.metadataProps),
    device_configurations: n.deviceConfigurations as P[] | undefined,
    $unknown: n.unknownFields,
  };
}

function attributeToProto(a: Attribute, ctx: EncodeContext): P {
  return {
    name: a.name,
    ref_attr_name: a.refAttrName,
    doc_string: a.docString,
    type: a.type,
    f: a.f,
    i: a.i,
    s: a.s,
    t: a.t && tensorToProto(a.t, ctx),
    g: a.g && graphToProto(a.g, ctx),
    sparse_tensor: a.sparseTensor && sparseToProto(a.sparseTensor, ctx),
    tp: a.tp && typeToProto(a.tp),
    floats: a.floats && Float32Array.from(a.floats),
    ints: a.ints && BigInt64Array.from(a.ints),
    strings: a.strings,
    tensors: a.tensors?.map((t) => tensorToProto(t, ctx)),
    graphs: a.graphs?.map((g) => graphToProto(g, ctx)),
    sparse_tensors: a.sparseTensors?.map((s) => sparseToProto(s, ctx)),
    type_protos: a.typeProtos?.map(typeToProto),
    $unknown: a.unknownFields,
  };
}

function tensorToProto(t: Tensor, ctx: EncodeContext, name = t.name): P {
  const m: P = {
    dims: BigInt64Array.from(t.dims, (d) => BigInt(d)),
    data_type: t.dataType,
    segment: t.segment && { begin: t.segment.begin, end: t.segment.end },
    name,
    doc_string: t.docString,
    data_location: t.dataLocation,
    metadata_props: entriesToProto(t.metadataProps),
    $unknown: t.unknownFields,
  };
  const external = ctx.placeExternal?.(t, name ?? '');
  if (external) {
    m.external_data = entriesToProto(external);
    m.data_location = 1;
    return m;
  }
  const s = t.storage;
  if (s.kind === 'raw') m.raw_data = s.bytes;
  else if (s.kind === 'typed') m[s.field] = s.values;
  else if (s.kind === 'strings') m.string_data = s.values;
  else if (s.kind === 'external') {
    m.raw_data = s.external.load();
    m.data_location = undefined;
  }
  return m;
}

function sparseToProto(s: SparseTensor, ctx: EncodeContext, name?: string): P {
  const values = tensorToProto(s.values, ctx, name ?? s.values.name);
  return { values, indices: tensorToProto(s.indices, ctx), dims: s.dims && BigInt64Array.from(s.dims, (d) => BigInt(d)) };
}

export function typeToProto(t: IrType): P {
  const m: P = { denotation: t.denotation };
  switch (t.kind) {
    case 'tensor':
    case 'sparse_tensor':
      m[t.kind === 'tensor' ? 'tensor_type' : 'sparse_tensor_type'] = {
        elem_type: t.elemType,
        shape: t.shape && { dim: nonEmpty(t.shape.map(dimToProto)) },
      };
      break;
    case 'sequence':
    case 'optional':
      m[t.kind === 'sequence' ? 'sequence_type' : 'optional_type'] = { elem_type: t.elem && typeToProto(t.elem) };
      break;
    case 'map':
      m.map_type = { key_type: t.keyType, value_type: t.value && typeToProto(t.value) };
      break;
    case 'opaque':
      m.opaque_type = { domain: t.domain, name: t.name };
      break;
  }
  return m;
}

function dimToProto(d: Dim): P {
  return { dim_value: d.value === undefined ? undefined : BigInt(d.value), dim_param: d.param, denotation: d.denotation };
}

// ------------------------------------------------------------------------------------ lone tensors

/** A decoded TensorProto message (as in ONNX's test_data_set_N/*.pb files) as an IR tensor; data must be inline. */
export function tensorFromMessage(p: P): Tensor {
  return tensorFromProto(p, {});
}

/** An IR tensor as a TensorProto message, data inline. */
export function tensorToMessage(t: Tensor): P {
  return tensorToProto(t, {});
}
