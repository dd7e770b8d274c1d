// The one builder that writes every new subgraph: passes, plugin generators, fixtures and tests.
//   const b = new GraphBuilder(graph, names, { prefix: 'vcompile/plugin/L3/' });
//   const y = b.op.MatMul(x, w);            // one output
//   const [q, k, v] = b.multi('Split', [qkv], { axis: -1 }, 3);
// Attribute values: integers become INT(S), other numbers FLOAT(S); `float(1)` forces a float.
import { type Attribute, AttributeType, Graph, Node, Value } from './graph.js';
import { Model } from './model.js';
import { NameAuthority } from './names.js';
import { Tensor } from './tensor.js';
import { DataType, type IrType, tensorType } from './types.js';

export class FloatAttr {
  constructor(readonly values: number | number[]) {}
}
/** Mark an attribute value as float even when it is a whole number. */
export const float = (values: number | number[]) => new FloatAttr(values);

export type AttrValue = number | bigint | string | number[] | bigint[] | string[] | FloatAttr | Tensor | Graph | Graph[] | IrType;
export type Attrs = Record<string, AttrValue | undefined>;

type OpFn = (...args: (Value | null | Attrs)[]) => Value;

export interface BuilderOptions {
  /** prefix for every node and value name this builder creates */
  prefix?: string;
  /** insert new nodes before this node instead of appending */
  before?: Node;
}

export class GraphBuilder {
  readonly created: Node[] = [];
  /** `b.op.MatMul(x, w)`, `b.op.Softmax(x, { axis: -1 })`: single-output ops by name. */
  readonly op: Record<string, OpFn>;

  constructor(
    readonly graph: Graph,
    readonly names: NameAuthority,
    private readonly options: BuilderOptions = {},
  ) {
    this.op = new Proxy({} as Record<string, OpFn>, {
      get:
        (_, opType: string) =>
        (...args: (Value | null | Attrs)[]) => {
          const last = args[args.length - 1];
          const hasAttrs = last !== null && last !== undefined && !(last instanceof Value);
          const inputs = (hasAttrs ? args.slice(0, -1) : args) as (Value | null)[];
          return this.node(opType, inputs, hasAttrs ? (last as Attrs) : {}).outputs[0]!;
        },
    });
  }

  private name(base: string): string {
    return this.names.fresh(`${this.options.prefix ?? ''}${base}`);
  }

  /** Add a node with `outputCount` fresh outputs (or named outputs) and return it. */
  node(opType: string, inputs: (Value | null)[], attrs: Attrs = {}, outputCount = 1, domain?: string): Node {
    const nodeName = this.name(opType);
    const outputs = Array.from({ length: outputCount }, (_, i) => new Value(this.names.fresh(`${nodeName}_output_${i}`)));
    const node = new Node(opType, inputs, outputs, toAttributes(attrs));
    node.name = nodeName;
    if (domain) node.domain = domain;
    this.graph.insertNodes([node], this.options.before);
    this.created.push(node);
    return node;
  }

  /** A multi-output op; returns its outputs. */
  multi(opType: string, inputs: (Value | null)[], attrs: Attrs, outputCount: number, domain?: string): Value[] {
    return this.node(opType, inputs, attrs, outputCount, domain).outputs as Value[];
  }

  /** A weight: a new initializer holding `tensor` (its name is made unique). */
  initializer(baseName: string, tensor: Tensor): Value {
    const name = this.name(baseName);
    tensor.name = name;
    return this.graph.addInitializer(new Value(name), tensor);
  }

  floats(baseName: string, dims: number[], values: ArrayLike<number>): Value {
    return this.initializer(baseName, Tensor.fromArray(baseName, DataType.FLOAT, dims, Float32Array.from(values)));
  }

  int64s(baseName: string, values: readonly (number | bigint)[], dims: number[] = [values.length]): Value {
    const data = BigInt64Array.from(values, (v) => BigInt(v));
    return this.initializer(baseName, Tensor.fromArray(baseName, DataType.INT64, dims, data));
  }

  scalar(baseName: string, value: number): Value {
    return this.floats(baseName, [], [value]);
  }

  /** A graph input named exactly `name`; with `defaultValue`, an initializer of the same name is its default. */
  input(name: string, type: IrType = tensorType(DataType.FLOAT), defaultValue?: Tensor): Value {
    this.names.claim(name);
    const value = this.graph.addInput(new Value(name, type));
    if (defaultValue) this.graph.addInitializer(value, defaultValue);
    return value;
  }

  /** Mark `value` as a graph output, renaming it to `name` when given and typing it with `type`. */
  output(value: Value, name?: string, type?: IrType): Value {
    if (name && name !== value.name) {
      this.names.claim(name);
      value.name = name;
    }
    if (type) value.type = type;
    this.graph.outputs.push(value);
    return value;
  }

  /** A builder for a new subgraph (an If or Loop body) that reads this graph's values from its outer scope. */
  subgraph(name: string, options: BuilderOptions = {}): GraphBuilder {
    const graph = new Graph(name);
    graph.outerScope = this.graph;
    return new GraphBuilder(graph, this.names, { prefix: options.prefix ?? this.options.prefix, before: options.before });
  }
}

function toAttributes(attrs: Attrs): Attribute[] {
  return Object.entries(attrs)
    .filter((e): e is [string, AttrValue] => e[1] !== undefined)
    .map(([name, value]) => ({ name, ...attributeValue(value) }));
}

function attributeValue(value: AttrValue): Omit<Attribute, 'name'> {
  if (value instanceof FloatAttr) {
    return Array.isArray(value.values)
      ? { type: AttributeType.FLOATS, floats: value.values }
      : { type: AttributeType.FLOAT, f: value.values };
  }
  // Only safe integers are taken for INT: a whole number like 3.4e38 or 2^63 is a float that int64 cannot hold.
  if (typeof value === 'number')
    return Number.isSafeInteger(value) ? { type: AttributeType.INT, i: BigInt(value) } : { type: AttributeType.FLOAT, f: value };
  if (typeof value === 'bigint') return { type: AttributeType.INT, i: int64(value) };
  if (typeof value === 'string') return { type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (value instanceof Tensor) return { type: AttributeType.TENSOR, t: value };
  if (value instanceof Graph) return { type: AttributeType.GRAPH, g: value };
  if (Array.isArray(value)) return listAttribute(value);
  return { type: AttributeType.TYPE_PROTO, tp: value };
}

function listAttribute(values: number[] | bigint[] | string[] | Graph[]): Omit<Attribute, 'name'> {
  const items = values as unknown[];
  // An empty list carries no type of its own; INTS is what empty lists (axes, perm, pads) almost always are.
  if (items.length === 0) return { type: AttributeType.INTS, ints: [] };
  if (items.every((v) => v instanceof Graph)) return { type: AttributeType.GRAPHS, graphs: items as Graph[] };
  if (items.every((v) => typeof v === 'string'))
    return { type: AttributeType.STRINGS, strings: (items as string[]).map((s) => new TextEncoder().encode(s)) };
  if (items.every((v) => typeof v === 'bigint' || Number.isSafeInteger(v)))
    return { type: AttributeType.INTS, ints: items.map((v) => int64(BigInt(v as number))) };
  return { type: AttributeType.FLOATS, floats: items as number[] };
}

function int64(value: bigint): bigint {
  if (BigInt.asIntN(64, value) !== value) throw new RangeError(`attribute value ${value} does not fit in int64`);
  return value;
}

/** A new model with one graph, for plugins, fixtures and tests. */
export class ModelBuilder extends GraphBuilder {
  readonly model: Model;

  constructor(opset = 17, graphName = 'main', options: BuilderOptions = {}) {
    const model = new Model(new Graph(graphName));
    model.irVersion = opset >= 21 ? 10 : 8;
    model.opsetImports = [{ domain: '', version: opset }];
    model.producerName = 'vcompile';
    super(model.graph, new NameAuthority(), options);
    this.model = model;
  }
}
