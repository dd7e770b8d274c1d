// The graph IR: values are objects that know their producer and their uses; nodes own their inputs'
// use-list entries, so the only way to change an edge is through a Node method that keeps both sides right.
import type { Tensor } from './tensor.js';
import type { Entry, IrType, UnknownFields } from './types.js';

export interface Use {
  node: Node;
  index: number;
}

export class Value {
  type?: IrType;
  docString?: string;
  metadataProps?: Entry[];
  unknownFields: UnknownFields;
  /** The weight this value holds, when it is an initializer of `graph`. */
  initializer?: Tensor;
  producer: Node | null = null;
  producerIndex = -1;
  /** The graph whose scope defines this value (set when it becomes an input, initializer or node output). */
  graph: Graph | null = null;
  private readonly useList: Use[] = [];

  constructor(
    public name: string,
    type?: IrType,
  ) {
    this.type = type;
  }

  /** A snapshot: safe to iterate while rewriting. */
  uses(): Use[] {
    return [...this.useList];
  }

  get useCount(): number {
    return this.useList.length;
  }

  /** @internal only Node changes use-lists */
  _addUse(node: Node, index: number): void {
    this.useList.push({ node, index });
  }

  /** @internal */
  _removeUse(node: Node, index: number): void {
    const at = this.useList.findIndex((u) => u.node === node && u.index === index);
    if (at < 0) throw new Error(`internal: ${this.name} has no use at ${node.opType}#${index}`);
    this.useList.splice(at, 1);
  }

  get isGraphInput(): boolean {
    return this.graph?.inputs.includes(this) ?? false;
  }

  get isGraphOutput(): boolean {
    return this.graph?.outputs.includes(this) ?? false;
  }

  /** The constant tensor behind this value: an initializer, or the `value` of a Constant node. */
  constTensor(): Tensor | undefined {
    if (this.initializer && !this.isGraphInput) return this.initializer;
    const p = this.producer;
    if (p && p.opType === 'Constant' && (p.domain ?? '') === '') return p.attr('value')?.t;
    return undefined;
  }
}

export interface SparseTensor {
  values: Tensor;
  indices: Tensor;
  dims?: number[];
}

/** An attribute mirrors AttributeProto field by field, with IR objects in place of messages. */
export interface Attribute {
  name: string;
  type?: number;
  refAttrName?: string;
  docString?: string;
  f?: number;
  i?: bigint;
  s?: Uint8Array;
  t?: Tensor;
  g?: Graph;
  sparseTensor?: SparseTensor;
  tp?: IrType;
  floats?: number[];
  ints?: bigint[];
  strings?: Uint8Array[];
  tensors?: Tensor[];
  graphs?: Graph[];
  sparseTensors?: SparseTensor[];
  typeProtos?: IrType[];
  unknownFields?: UnknownFields;
}

export const AttributeType = {
  UNDEFINED: 0,
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSOR: 11,
  SPARSE_TENSORS: 12,
  TYPE_PROTO: 13,
  TYPE_PROTOS: 14,
} as const;

/** Plain data for NodeProto.device_configurations (sharding annotations), carried through untouched. */
export type DeviceConfiguration = Record<string, unknown>;

const utf8 = new TextDecoder();

export class Node {
  name?: string;
  domain?: string;
  overload?: string;
  docString?: string;
  metadataProps?: Entry[];
  deviceConfigurations?: DeviceConfiguration[];
  unknownFields: UnknownFields;
  attributes: Attribute[];
  graph: Graph | null = null;
  readonly inputs: (Value | null)[] = [];
  readonly outputs: (Value | null)[] = [];

  constructor(
    public opType: string,
    inputs: readonly (Value | null)[] = [],
    outputs: readonly (Value | null)[] = [],
    attributes: Attribute[] = [],
  ) {
    this.attributes = attributes;
    inputs.forEach((v, i) => this.setInput(i, v));
    outputs.forEach((v, i) => this.setOutput(i, v));
  }

  /** Point input `index` at `value`, keeping both use-lists right. */
  setInput(index: number, value: Value | null): void {
    const old = this.inputs[index];
    if (old) old._removeUse(this, index);
    while (this.inputs.length <= index) this.inputs.push(null);
    this.inputs[index] = value;
    if (value) value._addUse(this, index);
  }

  /** Drop every input edge (the node is being removed). */
  detachInputs(): void {
    this.inputs.forEach((v, i) => v?._removeUse(this, i));
    this.inputs.length = 0;
  }

  setOutput(index: number, value: Value | null): void {
    if (value?.producer && value.producer !== this) {
      throw new Error(`value ${value.name} already has a producer (${value.producer.opType})`);
    }
    while (this.outputs.length <= index) this.outputs.push(null);
    this.outputs[index] = value;
    if (value) {
      value.producer = this;
      value.producerIndex = index;
      value.graph = this.graph;
    }
  }

  get qualifiedOp(): string {
    return this.domain ? `${this.domain}::${this.opType}` : this.opType;
  }

  attr(name: string): Attribute | undefined {
    return this.attributes.find((a) => a.name === name);
  }

  attrInt(name: string, fallback?: number): number {
    const value = this.attr(name)?.i;
    if (value === undefined) return required(this, name, fallback);
    return safeNumber(this, name, value);
  }

  attrInts(name: string, fallback?: number[]): number[] {
    const values = this.attr(name)?.ints;
    if (values === undefined) return required(this, name, fallback);
    return values.map((v) => safeNumber(this, name, v));
  }

  attrFloat(name: string, fallback?: number): number {
    const value = this.attr(name)?.f;
    return value === undefined ? required(this, name, fallback) : value;
  }

  attrString(name: string, fallback?: string): string {
    const value = this.attr(name)?.s;
    return value === undefined ? required(this, name, fallback) : utf8.decode(value);
  }

  /** Subgraphs held in this node's attributes (If branches, Loop/Scan bodies). */
  subgraphs(): Graph[] {
    return this.attributes.flatMap((a) => [...(a.g ? [a.g] : []), ...(a.graphs ?? [])]);
  }

  /** Values from enclosing scopes that this node's subgraphs read. */
  implicitInputs(): Value[] {
    const found = new Set<Value>();
    for (const sub of this.subgraphs()) collectOuterReads(sub, found);
    return [...found];
  }

  toString(): string {
    return `${this.qualifiedOp}${this.name ? ` '${this.name}'` : ''}`;
  }
}

/** A node whose attributes do not say what its op needs (missing, or out of range): the model is malformed. */
export class MalformedNodeError extends Error {}

function required<T>(node: Node, name: string, fallback: T | undefined): T {
  if (fallback === undefined) throw new MalformedNodeError(`${node}: attribute '${name}' is missing`);
  return fallback;
}

function safeNumber(node: Node, name: string, value: bigint): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new MalformedNodeError(`${node}: attribute '${name}' value ${value} is beyond 2^53`);
  return n;
}

/**
 * Reads, anywhere inside `graph` (nested subgraphs included), of values defined outside it. A subgraph
 * may return an outer value as its own output without any node reading it: that is a read too.
 */
function collectOuterReads(graph: Graph, found: Set<Value>): void {
  for (const out of graph.outputs) if (!graph.encloses(out)) found.add(out);
  for (const node of graph.nodes) {
    for (const input of node.inputs) if (input && !graph.encloses(input)) found.add(input);
    for (const sub of node.subgraphs()) {
      const inner = new Set<Value>();
      collectOuterReads(sub, inner);
      for (const v of inner) if (!graph.encloses(v)) found.add(v);
    }
  }
}

export interface QuantizationAnnotation {
  tensorName: string;
  quantParameterTensorNames?: Entry[];
  unknownFields?: UnknownFields;
}

export class Graph {
  name?: string;
  docString?: string;
  metadataProps?: Entry[];
  unknownFields: UnknownFields;
  readonly nodes: Node[] = [];
  inputs: Value[] = [];
  outputs: Value[] = [];
  /** Values holding weights, in file order. */
  initializers: Value[] = [];
  sparseInitializers: { value: Value; sparse: SparseTensor }[] = [];
  /** Values whose type is recorded in the graph's value_info list, in file order. */
  valueInfos: Value[] = [];
  quantizationAnnotations: QuantizationAnnotation[] = [];
  /** The scope that encloses this one (for If/Loop/Scan bodies and training graphs). */
  outerScope: Graph | null = null;

  constructor(name?: string) {
    this.name = name;
  }

  /** Whether `value` is defined in this graph's own scope (not an enclosing one). */
  encloses(value: Value): boolean {
    return value.graph === this;
  }

  /** Find a value by name in this scope, then in enclosing scopes. Linear: for tools, not hot paths. */
  lookup(name: string): Value | undefined {
    for (let scope: Graph | null = this; scope; scope = scope.outerScope) {
      const local = scope.localValues().find((v) => v.name === name);
      if (local) return local;
    }
    return undefined;
  }

  /** Values this scope defines: inputs, initializers, sparse initializers, node outputs. */
  localValues(): Value[] {
    const values = [...this.inputs, ...this.initializers, ...this.sparseInitializers.map((s) => s.value)];
    for (const node of this.nodes) for (const out of node.outputs) if (out) values.push(out);
    return [...new Set(values)];
  }

  addInput(value: Value): Value {
    value.graph = this;
    this.inputs.push(value);
    return value;
  }

  addInitializer(value: Value, tensor: Tensor): Value {
    value.graph = this;
    value.initializer = tensor;
    this.initializers.push(value);
    return value;
  }

  /** Insert nodes before `before` (or at the end); their output values join this scope. */
  insertNodes(nodes: readonly Node[], before?: Node): void {
    const at = before ? this.nodes.indexOf(before) : this.nodes.length;
    if (at < 0) throw new Error(`${before}: not in graph ${this.name ?? ''}`);
    for (const node of nodes) {
      if (node.graph) throw new Error(`${node} already belongs to a graph`);
    }
    for (const node of nodes) {
      node.graph = this;
      for (const out of node.outputs) if (out) out.graph = this;
      for (const sub of node.subgraphs()) sub.outerScope = this;
    }
    this.nodes.splice(at, 0, ...nodes);
  }

  appendNode(node: Node): Node {
    this.insertNodes([node]);
    return node;
  }

  /**
   * Remove nodes whose outputs nothing else uses. Checks everything first: on error nothing changes.
   */
  removeNodes(nodes: readonly Node[]): void {
    const removing = new Set(nodes);
    let nested: Graph[] | undefined;
    for (const node of removing) {
      if (node.graph !== this) throw new Error(`${node}: not in graph ${this.name ?? ''}`);
      for (const out of node.outputs) {
        if (!out) continue;
        const outside = out.uses().find((u) => !removing.has(u.node) && !insideAny(u.node, removing));
        if (outside) throw new Error(`cannot remove ${node}: its output ${out.name} is used by ${outside.node}`);
        if (this.outputs.includes(out)) throw new Error(`cannot remove ${node}: its output ${out.name} is a graph output`);
        const returning = (nested ??= [...this.subgraphsDeep()]).find((g) => returnsOuter(g, out) && !insideAny(g, removing));
        if (returning) throw new Error(`cannot remove ${node}: its output ${out.name} is an output of subgraph ${returning.name ?? ''}`);
      }
    }
    for (const node of removing) {
      node.detachInputs();
      detachSubgraphInputs(node);
      node.graph = null;
    }
    this.removeFromLists(removing);
  }

  private removeFromLists(removing: Set<Node>): void {
    const kept = this.nodes.filter((n) => !removing.has(n));
    this.nodes.length = 0;
    this.nodes.push(...kept);
    const gone = new Set<Value>();
    for (const node of removing) for (const out of node.outputs) if (out) gone.add(out);
    this.valueInfos = this.valueInfos.filter((v) => !gone.has(v));
  }

  /** Remove initializers that nothing reads any more. */
  removeUnusedInitializers(): number {
    const before = this.initializers.length;
    const returned = new Set([...this.subgraphsDeep()].flatMap((g) => g.outputs.filter((v) => !g.encloses(v))));
    const keep = (v: Value) => v.useCount > 0 || this.outputs.includes(v) || this.inputs.includes(v) || returned.has(v);
    const dropped = this.initializers.filter((v) => !keep(v));
    this.initializers = this.initializers.filter(keep);
    const droppedSet = new Set(dropped);
    this.valueInfos = this.valueInfos.filter((v) => !droppedSet.has(v));
    return before - this.initializers.length;
  }

  /** Nested graphs that list `value` among their outputs without defining it (it is from an outer scope). */
  subgraphsReturning(value: Value): Graph[] {
    // A plain walk over attributes: replaceAllUses calls this on every rewrite, mostly on graphs with no subgraphs.
    const found: Graph[] = [];
    const visit = (graph: Graph) => {
      for (const node of graph.nodes) {
        for (const a of node.attributes) {
          if (a.g) check(a.g);
          if (a.graphs) a.graphs.forEach(check);
        }
      }
    };
    const check = (g: Graph) => {
      if (returnsOuter(g, value)) found.push(g);
      visit(g);
    };
    visit(this);
    return found;
  }

  /** Every graph nested in this one's nodes, depth first. */
  *subgraphsDeep(): Generator<Graph> {
    for (const node of this.nodes) {
      for (const sub of node.subgraphs()) {
        yield sub;
        yield* sub.subgraphsDeep();
      }
    }
  }
}

function returnsOuter(g: Graph, value: Value): boolean {
  return g.outputs.includes(value) && !g.encloses(value);
}

/** Whether `at` (a node, or a graph) lies inside a subgraph of one of `removing`. */
function insideAny(at: Node | Graph, removing: Set<Node>): boolean {
  for (let g = at instanceof Graph ? at : at.graph; g; g = g.outerScope) {
    for (const outer of removing) if (outer.subgraphs().includes(g)) return true;
  }
  return false;
}

function detachSubgraphInputs(node: Node): void {
  for (const sub of node.subgraphs()) {
    for (const inner of sub.nodes) {
      inner.detachInputs();
      detachSubgraphInputs(inner);
    }
  }
}

/**
 * Point every use of `from` at `to`: node inputs (inside subgraphs too), its graph's outputs, and the
 * outputs of nested subgraphs that return `from` directly.
 */
export function replaceAllUses(from: Value, to: Value): void {
  if (from === to) return;
  for (const use of from.uses()) use.node.setInput(use.index, to);
  const scope = from.graph;
  if (!scope) return;
  for (const g of [scope, ...scope.subgraphsReturning(from)]) g.outputs = g.outputs.map((v) => (v === from ? to : v));
}
