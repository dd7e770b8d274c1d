// A canonical, codec-independent description of a Model: plain JSON-able data that two models share
// exactly when they mean the same ONNX file content. Tests compare models through it, so a failure shows
// a readable diff of what changed rather than a mismatch deep inside IR objects.
//
// What it ignores on purpose: how a tensor's bytes are stored (raw_data, a typed field or external data;
// see `storageDetail`), types of node outputs that no value_info lists (they are not written), and the
// difference between an empty list and an absent one (the wire cannot tell them apart either).
import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import type { Attribute, Graph, Node, SparseTensor, Value } from '../../src/ir/graph.js';
import type { Model, ModelFunction, OpsetId, TrainingInfo } from '../../src/ir/model.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { DataType, type Dim, type Entry, type IrType, type UnknownFields } from '../../src/ir/types.js';

export interface CanonicalOptions {
  /**
   * Also describe where tensor data lives (storage kind, typed field, data_location): for round trips
   * that must keep a tensor's encoding, not only its bytes. Off when comparing across external data.
   */
  storageDetail?: boolean;
}

/** JSON, plus `undefined` for absent fields while building (strip() removes them from the result). */
type Json = string | number | boolean | null | undefined | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

/** Tensors at most this long are shown as hex; longer ones as a SHA-256 and a length. */
const INLINE_BYTES = 64;

export function canonicalModel(model: Model, options: CanonicalOptions = {}): Json {
  const c = new Canonicalizer(options);
  return strip({
    irVersion: model.irVersion,
    opsetImports: list(model.opsetImports.map((o) => c.opset(o))),
    producerName: model.producerName,
    producerVersion: model.producerVersion,
    domain: model.domain,
    modelVersion: big(model.modelVersion),
    docString: model.docString,
    metadataProps: entries(model.metadataProps),
    graph: c.graph(model.graph),
    trainingInfo: list(model.trainingInfo.map((t) => c.trainingInfo(t))),
    functions: list(model.functions.map((f) => c.function(f))),
    configuration: list(model.configuration.map(plainMessage)),
    unknownFields: unknown(model.unknownFields),
  });
}

/** Two models describe the same ONNX content (see canonicalModel for what is compared). */
export function expectSameModel(actual: Model, expected: Model, options: CanonicalOptions = {}): void {
  expect(canonicalModel(actual, options)).toEqual(canonicalModel(expected, options));
}

class Canonicalizer {
  constructor(private readonly options: CanonicalOptions) {}

  opset(o: OpsetId): Obj {
    return { domain: o.domain, version: o.version, unknownFields: unknown(o.unknownFields) };
  }

  graph(g: Graph): Obj {
    return {
      name: g.name,
      docString: g.docString,
      metadataProps: entries(g.metadataProps),
      inputs: list(g.inputs.map((v) => this.valueInfo(v))),
      initializers: list(g.initializers.map((v) => this.tensor(v.initializer!, v.name))),
      sparseInitializers: list(g.sparseInitializers.map((s) => this.sparse(s.sparse, s.value.name))),
      nodes: list(g.nodes.map((n) => this.node(n, g))),
      outputs: list(g.outputs.map((v) => this.valueInfo(v))),
      valueInfos: list(g.valueInfos.map((v) => this.valueInfo(v))),
      quantizationAnnotations: list(
        g.quantizationAnnotations.map((q) => ({
          tensorName: q.tensorName,
          quantParameterTensorNames: entries(q.quantParameterTensorNames),
          unknownFields: unknown(q.unknownFields),
        })),
      ),
      unknownFields: unknown(g.unknownFields),
    };
  }

  valueInfo(v: Value): Obj {
    return {
      name: v.name,
      type: v.type && type(v.type),
      docString: v.docString,
      metadataProps: entries(v.metadataProps),
      unknownFields: unknown(v.unknownFields),
    };
  }

  node(n: Node, g: Graph): Obj {
    return {
      name: n.name,
      opType: n.opType,
      domain: n.domain,
      overload: n.overload,
      inputs: list(n.inputs.map((v) => (v ? reference(v, g) : ''))),
      outputs: list(n.outputs.map((v) => v?.name ?? '')),
      attributes: list(n.attributes.map((a) => this.attribute(a))),
      docString: n.docString,
      metadataProps: entries(n.metadataProps),
      deviceConfigurations: n.deviceConfigurations && list(n.deviceConfigurations.map(plainMessage)),
      unknownFields: unknown(n.unknownFields),
    };
  }

  attribute(a: Attribute): Obj {
    return {
      name: a.name,
      type: a.type,
      refAttrName: a.refAttrName,
      docString: a.docString,
      f: a.f === undefined ? undefined : float32(a.f),
      i: big(a.i),
      s: a.s && hex(a.s),
      t: a.t && this.tensor(a.t),
      g: a.g && this.graph(a.g),
      sparseTensor: a.sparseTensor && this.sparse(a.sparseTensor),
      tp: a.tp && type(a.tp),
      floats: a.floats && list(a.floats.map(float32)),
      ints: a.ints && list(a.ints.map((i) => i.toString())),
      strings: a.strings && list(a.strings.map(hex)),
      tensors: a.tensors && list(a.tensors.map((t) => this.tensor(t))),
      graphs: a.graphs && list(a.graphs.map((sub) => this.graph(sub))),
      sparseTensors: a.sparseTensors && list(a.sparseTensors.map((s) => this.sparse(s))),
      typeProtos: a.typeProtos && list(a.typeProtos.map(type)),
      unknownFields: unknown(a.unknownFields),
    };
  }

  tensor(t: Tensor, name = t.name): Obj {
    const s = t.storage;
    const out: Obj = {
      name,
      dataType: t.dataType,
      dims: t.dims,
      segment: t.segment && { begin: big(t.segment.begin), end: big(t.segment.end) },
      docString: t.docString,
      metadataProps: entries(t.metadataProps),
      unknownFields: unknown(t.unknownFields),
    };
    if (s.kind === 'strings' || (s.kind === 'none' && t.dataType === DataType.STRING)) {
      out.strings = s.kind === 'strings' ? s.values.map(hex) : [];
    } else {
      out.data = bytesSummary(t.bytes());
    }
    if (this.options.storageDetail) {
      out.storage = s.kind === 'typed' ? `typed:${s.field}` : s.kind;
      out.dataLocation = t.dataLocation;
      if (s.kind === 'external') out.externalEntries = s.external.entries;
    }
    return out;
  }

  sparse(s: SparseTensor, name?: string): Obj {
    return { values: this.tensor(s.values, name ?? s.values.name), indices: this.tensor(s.indices), dims: s.dims };
  }

  /** What FunctionProto can hold of a graph: no name, initializers, or types on the interface. */
  functionBody(g: Graph): Obj {
    return {
      inputs: list(g.inputs.map((v) => v.name)),
      nodes: list(g.nodes.map((n) => this.node(n, g))),
      outputs: list(g.outputs.map((v) => v.name)),
      valueInfos: list(g.valueInfos.map((v) => this.valueInfo(v))),
    };
  }

  trainingInfo(t: TrainingInfo): Obj {
    return {
      initialization: t.initialization && this.graph(t.initialization),
      algorithm: t.algorithm && this.graph(t.algorithm),
      initializationBinding: entries(t.initializationBinding),
      updateBinding: entries(t.updateBinding),
      unknownFields: unknown(t.unknownFields),
    };
  }

  function(f: ModelFunction): Obj {
    return {
      domain: f.domain,
      name: f.name,
      overload: f.overload,
      docString: f.docString,
      metadataProps: entries(f.metadataProps),
      attributeNames: list(f.attributeNames),
      attributeProtos: list(f.attributeProtos.map((a) => this.attribute(a))),
      opsetImports: list(f.opsetImports.map((o) => this.opset(o))),
      body: this.functionBody(f.body),
      unknownFields: unknown(f.unknownFields),
    };
  }
}

/**
 * A node input: its name, plus how many scopes up it is defined (0 = this graph), so a subgraph reading
 * the wrong one of two same-named values shows up. `?` marks a value no enclosing scope defines.
 */
function reference(v: Value, from: Graph): string {
  let depth = 0;
  for (let scope: Graph | null = from; scope; scope = scope.outerScope, depth++) {
    if (v.graph === scope) return depth === 0 ? v.name : `${v.name}@${depth}`;
  }
  return `${v.name}@?`;
}

export function type(t: IrType): Obj {
  const base: Obj = { kind: t.kind, denotation: t.denotation };
  switch (t.kind) {
    case 'tensor':
    case 'sparse_tensor':
      return { ...base, elemType: t.elemType, shape: t.shape?.map(dim) };
    case 'sequence':
    case 'optional':
      return { ...base, elem: t.elem && type(t.elem) };
    case 'map':
      return { ...base, keyType: t.keyType, value: t.value && type(t.value) };
    case 'opaque':
      return { ...base, domain: t.domain, name: t.name };
    case 'unset':
      return base;
  }
}

function dim(d: Dim): Obj {
  return { value: d.value, param: d.param, denotation: d.denotation };
}

/** A float attribute as the float32 it is on the wire: bit pattern (keeps -0 and NaN payloads) and value. */
function float32(x: number): string {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x, true);
  return `${view.getUint32(0, true).toString(16).padStart(8, '0')}(${Object.is(x, -0) ? '-0' : Math.fround(x)})`;
}

function bytesSummary(bytes: Uint8Array): string {
  if (bytes.length <= INLINE_BYTES) return hex(bytes);
  return `${bytes.length} bytes sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

function big(v: bigint | undefined): string | undefined {
  return v === undefined ? undefined : v.toString();
}

function entries(e: Entry[] | undefined): Json[] | undefined {
  return e && list(e.map(([k, v]) => [k, v]));
}

function unknown(fields: UnknownFields): Json[] | undefined {
  return fields && list(fields.map(hex));
}

/** An empty list is the same as none: protobuf writes nothing for either. */
function list<T extends Json | Obj>(items: T[]): Json[] | undefined {
  return items.length ? (items as Json[]) : undefined;
}

/**
 * A message the IR carries as decoded protobuf data (device configurations): bigints and typed arrays
 * become strings and arrays, bytes become hex, `$unknown` stays as hex under its own key.
 */
function plainMessage(value: unknown): Json {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return hex(value);
  if (ArrayBuffer.isView(value)) return Array.from(value as unknown as ArrayLike<number | bigint>, (x) => plainMessage(x));
  if (Array.isArray(value)) return value.map(plainMessage);
  if (value && typeof value === 'object') {
    const out: Obj = {};
    for (const [key, v] of Object.entries(value)) {
      if (
        v === undefined ||
        (Array.isArray(v) && v.length === 0) ||
        (ArrayBuffer.isView(v) && (v as Uint8Array).length === 0 && !(v instanceof Uint8Array))
      )
        continue;
      out[key] = key === '$unknown' ? (v as Uint8Array[]).map(hex) : plainMessage(v);
    }
    return out as Json;
  }
  return value as Json;
}

/** Drops undefined keys at every level so the result is plain JSON and diffs stay short. */
function strip(value: unknown): Json {
  if (Array.isArray(value)) return value.map(strip);
  if (value && typeof value === 'object') {
    const out: { [key: string]: Json } = {};
    for (const [key, v] of Object.entries(value)) if (v !== undefined) out[key] = strip(v);
    return out;
  }
  return value as Json;
}
