// A model that sets every field of the ONNX schema (src/onnx/schema.ts) at least once, with edge values
// where a field has them (int64 extremes, NaN and -0, every data type in raw and typed form, every type
// and attribute kind) plus fields the schema does not know. It is not meant to run: it is the test of
// whether reading and writing loses anything.

import { float, GraphBuilder, ModelBuilder } from '../../src/ir/builder.js';
import { type Attribute, AttributeType, Graph, type SparseTensor, Value } from '../../src/ir/graph.js';
import { type Model, ModelFunction } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { Tensor, type TypedField, type TypedValues } from '../../src/ir/tensor.js';
import { DataType, type IrType, tensorType } from '../../src/ir/types.js';

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const text = (s: string) => new TextEncoder().encode(s);

// ------------------------------------------------------------------------------------ unknown fields

function varint(value: number): number[] {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** One protobuf field, tag included, as raw bytes: what the codec keeps for a field number it does not know. */
export function rawField(fieldNumber: number, wireType: 0 | 1 | 2 | 5, payload: number[]): Uint8Array {
  const body = wireType === 2 ? [...varint(payload.length), ...payload] : payload;
  return Uint8Array.from([...varint(fieldNumber * 8 + wireType), ...body]);
}

/** Unknown fields planted on each kind of message, by where they are; the tests look for each one. */
export const UNKNOWN = {
  model: [rawField(100, 0, varint(42)), rawField(1000, 2, [...text('future model field')])],
  graph: [rawField(200, 2, [...text('hi')])],
  node: [rawField(99, 5, [1, 2, 3, 4])],
  tensor: [rawField(77, 1, [1, 2, 3, 4, 5, 6, 7, 8])],
  valueInfo: [rawField(50, 0, varint(2 ** 40 + 3))],
  attribute: [rawField(60, 2, [])],
  opset: [rawField(3, 0, varint(1))],
  function: [rawField(30, 2, [0xff, 0x00])],
  trainingInfo: [rawField(9, 0, varint(7))],
  annotation: [rawField(5, 5, [0, 0, 0x80, 0x7f])],
};

// ------------------------------------------------------------------------------------ tensors

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

interface DataTypeSample {
  name: string;
  dataType: number;
  dims: number[];
  raw?: Uint8Array;
  typed?: { field: TypedField; values: TypedValues };
  strings?: Uint8Array[];
}

/** For every data type, sample data as raw_data and in the typed field ONNX assigns to it. */
export function dataTypeSamples(): DataTypeSample[] {
  const i32 = (...v: number[]) => ({ field: 'int32_data' as const, values: Int32Array.from(v) });
  const small = (name: string, dataType: number, dims: number[], raw: number[], typed: number[]): DataTypeSample => ({
    name,
    dataType,
    dims,
    raw: Uint8Array.from(raw),
    typed: i32(...typed),
  });
  return [
    {
      name: 'float',
      dataType: DataType.FLOAT,
      dims: [7],
      raw: bytesOf(Float32Array.from([1.5, -0, NaN, Infinity, -Infinity, 3.4028234663852886e38, 1e-45])),
      typed: { field: 'float_data', values: Float32Array.from([0.25, -0, NaN, -Infinity, 1e-45, 2, 3]) },
    },
    small('uint8', DataType.UINT8, [3], [0, 255, 128], [0, 255, 128]),
    { name: 'int8', dataType: DataType.INT8, dims: [3], raw: bytesOf(Int8Array.from([-128, 127, 0])), typed: i32(-128, 127, 0) },
    { name: 'uint16', dataType: DataType.UINT16, dims: [2], raw: bytesOf(Uint16Array.from([0, 65535])), typed: i32(65535, 1) },
    { name: 'int16', dataType: DataType.INT16, dims: [2], raw: bytesOf(Int16Array.from([-32768, 32767])), typed: i32(-32768, 32767) },
    {
      name: 'int32',
      dataType: DataType.INT32,
      dims: [3],
      raw: bytesOf(Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 0])),
      typed: i32(-(2 ** 31), 2 ** 31 - 1, -1),
    },
    {
      name: 'int64',
      dataType: DataType.INT64,
      dims: [5],
      raw: bytesOf(BigInt64Array.from([INT64_MIN, INT64_MAX, 0n, -1n, 2n ** 53n + 1n])),
      typed: { field: 'int64_data', values: BigInt64Array.from([INT64_MIN, INT64_MAX, 0n, -1n, 2n ** 40n + 2n ** 33n]) },
    },
    small('bool', DataType.BOOL, [3], [1, 0, 1], [1, 0, 1]),
    {
      name: 'float16',
      dataType: DataType.FLOAT16,
      dims: [4],
      raw: bytesOf(Uint16Array.from([0x3c00, 0x8000, 0x7e00, 0x7c00])),
      typed: i32(0x3c00, 0xfc00, 0x0001, 0x7bff),
    },
    {
      name: 'double',
      dataType: DataType.DOUBLE,
      dims: [4],
      raw: bytesOf(Float64Array.from([Math.PI, -0, NaN, 1e308])),
      typed: { field: 'double_data', values: Float64Array.from([2.5, -Infinity, 5e-324, -0]) },
    },
    {
      name: 'uint32',
      dataType: DataType.UINT32,
      dims: [2],
      raw: bytesOf(Uint32Array.from([0, 4294967295])),
      typed: { field: 'uint64_data', values: BigUint64Array.from([4294967295n, 7n]) },
    },
    {
      name: 'uint64',
      dataType: DataType.UINT64,
      dims: [3],
      raw: bytesOf(BigUint64Array.from([0n, UINT64_MAX, 2n ** 63n])),
      typed: { field: 'uint64_data', values: BigUint64Array.from([UINT64_MAX, 2n ** 63n, 1n]) },
    },
    {
      name: 'complex64',
      dataType: DataType.COMPLEX64,
      dims: [2],
      raw: bytesOf(Float32Array.from([1, 2, -3, NaN])),
      typed: { field: 'float_data', values: Float32Array.from([1, -2, 0.5, -0]) },
    },
    {
      name: 'complex128',
      dataType: DataType.COMPLEX128,
      dims: [1],
      raw: bytesOf(Float64Array.from([1, -1])),
      typed: { field: 'double_data', values: Float64Array.from([0.5, Infinity]) },
    },
    {
      name: 'bfloat16',
      dataType: DataType.BFLOAT16,
      dims: [2],
      raw: bytesOf(Uint16Array.from([0x3f80, 0xff80])),
      typed: i32(0x3f80, 0x7fc0),
    },
    small('float8e4m3fn', DataType.FLOAT8E4M3FN, [3], [0x38, 0x7f, 0xff], [0x38, 0x7e, 0x80]),
    small('float8e4m3fnuz', DataType.FLOAT8E4M3FNUZ, [3], [0x40, 0x80, 0x01], [0x40, 0x7f, 0x00]),
    small('float8e5m2', DataType.FLOAT8E5M2, [3], [0x3c, 0x7c, 0xfe], [0x3c, 0xfc, 0x7f]),
    small('float8e5m2fnuz', DataType.FLOAT8E5M2FNUZ, [3], [0x40, 0x80, 0x7f], [0x3f, 0x00, 0xff]),
    // 4-bit types: two elements per byte (and per int32_data entry), low nibble first; odd counts pad.
    small('uint4', DataType.UINT4, [3], [0x21, 0x0f], [0x21, 0x0f]),
    small('int4', DataType.INT4, [3], [0x8f, 0x07], [0x78, 0x08]),
    small('float4e2m1', DataType.FLOAT4E2M1, [4], [0x21, 0x7f], [0xf7, 0x12]),
    small('float8e8m0', DataType.FLOAT8E8M0, [3], [0x7f, 0xff, 0x00], [0x7f, 0x00, 0xfe]),
    // Strings have no raw form: empty, non-ASCII, and bytes that are not UTF-8.
    {
      name: 'string',
      dataType: DataType.STRING,
      dims: [3],
      strings: [new Uint8Array(0), text('héllo'), Uint8Array.from([0xff, 0x00, 0xfe])],
    },
  ];
}

function sampleTensors(): Tensor[] {
  const tensors: Tensor[] = [];
  for (const s of dataTypeSamples()) {
    if (s.raw) tensors.push(Tensor.fromRaw(`w_${s.name}_raw`, s.dataType, s.dims, s.raw));
    if (s.typed) tensors.push(new Tensor(`w_${s.name}_typed`, s.dataType, s.dims, { kind: 'typed', ...s.typed }));
    if (s.strings) tensors.push(new Tensor(`w_${s.name}_typed`, s.dataType, s.dims, { kind: 'strings', values: s.strings }));
  }
  return tensors;
}

function decoratedTensor(): Tensor {
  const t = Tensor.fromArray('w_decorated', DataType.FLOAT, [2, 2], Float32Array.from([1, 2, 3, 4]));
  t.docString = 'a tensor with every optional field';
  t.metadataProps = [
    ['origin', 'test'],
    ['empty', ''],
  ];
  t.segment = { begin: 0n, end: INT64_MAX };
  t.dataLocation = 0; // DEFAULT, written explicitly
  t.unknownFields = UNKNOWN.tensor;
  return t;
}

function sparseTensor(name: string | undefined): SparseTensor {
  return {
    values: new Tensor(name, DataType.FLOAT, [3], { kind: 'typed', field: 'float_data', values: Float32Array.from([1, -0, NaN]) }),
    indices: Tensor.fromArray(undefined, DataType.INT64, [3], BigInt64Array.from([0n, 4n, 9n])),
    dims: [10],
  };
}

// ------------------------------------------------------------------------------------ types

const FLOAT_X: IrType = {
  kind: 'tensor',
  elemType: DataType.FLOAT,
  denotation: 'IMAGE',
  shape: [{ param: 'batch', denotation: 'DATA_BATCH' }, { value: 4, denotation: 'DATA_CHANNEL' }, {}],
};

/** One type of every kind, nested kinds included. */
export function typeSamples(): IrType[] {
  return [
    FLOAT_X,
    tensorType(DataType.BOOL, []),
    tensorType(DataType.FLOAT), // unknown rank
    { kind: 'sequence', elem: tensorType(DataType.FLOAT, [2]), denotation: 'seq' },
    { kind: 'map', keyType: DataType.INT64, value: tensorType(DataType.FLOAT) },
    { kind: 'optional', elem: { kind: 'sequence', elem: tensorType(DataType.INT32, ['n']) } },
    { kind: 'sparse_tensor', elemType: DataType.FLOAT, shape: [{ value: 10 }] },
    { kind: 'opaque', domain: 'com.example', name: 'Blob', denotation: 'custom' },
    { kind: 'sequence' },
    { kind: 'unset', denotation: 'nothing but a denotation' },
  ];
}

// ------------------------------------------------------------------------------------ the model

/** Builds the model; every call returns a fresh one. */
export function buildEveryFieldModel(): Model {
  const b = new ModelBuilder(21, 'main');
  const model = b.model;
  describeModel(model);

  const x = b.input('X', FLOAT_X);
  x.docString = 'the main input';
  x.metadataProps = [['role', 'data']];
  x.unknownFields = UNKNOWN.valueInfo;
  const cond = b.input('cond', tensorType(DataType.BOOL, []));
  typeSamples()
    .slice(3, 8)
    .forEach((t, i) => b.input(`typed_input_${i}`, t));

  for (const t of sampleTensors()) b.graph.addInitializer(new Value(t.name!), t);
  b.graph.addInitializer(new Value('w_decorated'), decoratedTensor());
  const tripCount = b.graph.addInitializer(
    new Value('trip_count'),
    Tensor.fromArray('trip_count', DataType.INT64, [], BigInt64Array.of(3n)),
  );
  for (const v of b.graph.initializers) b.names.claim(v.name);
  const sparse = new Value('sparse_w');
  sparse.graph = b.graph;
  b.graph.sparseInitializers.push({ value: sparse, sparse: sparseTensor('sparse_w') });
  b.names.claim('sparse_w');

  model.functions.push(scaledAddFunction());
  const z1 = callFunction(b, x);
  const ifOut = ifNode(b, cond, x, z1);
  const loopOut = loopNode(b, tripCount, cond, x);
  const [allOut, allOut2] = allAttributesNode(b, x, cond);

  b.output(ifOut, 'if_out', FLOAT_X);
  b.output(loopOut, 'loop_out', FLOAT_X);
  b.output(allOut, 'all_out', tensorType(DataType.FLOAT, ['batch', 4, 'n']));
  allOut2.type = tensorType(DataType.INT64, [2]);
  allOut2.docString = 'second output of AllAttrs';

  z1.type = FLOAT_X;
  z1.docString = 'function result';
  z1.metadataProps = [['k', 'v']];
  const untyped = b.op.Identity(z1);
  b.graph.valueInfos = [z1, allOut2, untyped];

  b.graph.docString = 'the main graph';
  b.graph.metadataProps = [['graph-key', 'graph-value']];
  b.graph.unknownFields = UNKNOWN.graph;
  b.graph.quantizationAnnotations = [
    {
      tensorName: 'w_float_raw',
      quantParameterTensorNames: [
        ['SCALE_TENSOR', 'w_float_typed'],
        ['ZERO_POINT_TENSOR', 'w_int8_raw'],
      ],
      unknownFields: UNKNOWN.annotation,
    },
    { tensorName: 'X' },
  ];
  model.trainingInfo.push(trainingInfo(b));
  return model;
}

function describeModel(model: Model): void {
  model.irVersion = 10;
  model.opsetImports = [
    { domain: '', version: 21 },
    { domain: 'com.example', version: 1, unknownFields: UNKNOWN.opset },
    { domain: 'ai.onnx.ml', version: 5 },
    { domain: 'ai.onnx.preview.training', version: 1 },
  ];
  model.producerName = 'vcompile-tests';
  model.producerVersion = '0.1.0+every-field';
  model.domain = 'org.vcompile.test';
  model.modelVersion = 2n ** 40n + 2n ** 33n;
  model.docString = 'Every field of onnx.proto, set at least once. ünïcödé too.';
  model.metadataProps = [
    ['author', 'tests'],
    ['license', 'MIT'],
    ['', 'empty key'],
  ];
  model.configuration = [{ name: 'mesh', num_devices: 2, device: ['cpu:0', 'cpu:1'] }];
  model.unknownFields = UNKNOWN.model;
}

/** com.example::ScaledAdd (overload v2): C = A * alpha + B + beta, with alpha required and beta defaulted. */
function scaledAddFunction(): ModelFunction {
  const body = new Graph('ScaledAdd');
  const fn = new ModelFunction('com.example', 'ScaledAdd', body);
  // Function bodies have their own scope, so their own name authority.
  const fb = new GraphBuilder(body, new NameAuthority());
  const a = body.addInput(new Value('A'));
  const bIn = body.addInput(new Value('B'));
  const alpha = fb.node('Constant', [], {}).outputs[0]!;
  alpha.producer!.attributes = [{ name: 'value_float', type: AttributeType.FLOAT, refAttrName: 'alpha' }];
  const beta = fb.node('Constant', [], {}).outputs[0]!;
  beta.producer!.attributes = [{ name: 'value_int', type: AttributeType.INT, refAttrName: 'beta', docString: 'from the default' }];
  const scaled = fb.op.Mul(a, alpha);
  const betaLike = fb.op.CastLike(beta, a);
  const sum = fb.op.Add(scaled, bIn);
  const c = fb.op.Add(sum, betaLike);
  body.outputs = [c];
  scaled.type = tensorType(DataType.FLOAT);
  body.valueInfos = [scaled];
  fn.overload = 'v2';
  fn.docString = 'a model-local function';
  fn.metadataProps = [['fn-key', 'fn-value']];
  fn.attributeNames = ['alpha'];
  fn.attributeProtos = [{ name: 'beta', type: AttributeType.INT, i: -3n, docString: 'default beta' }];
  fn.opsetImports = [{ domain: '', version: 21 }];
  fn.unknownFields = UNKNOWN.function;
  return fn;
}

function callFunction(b: ModelBuilder, x: Value): Value {
  const node = b.node('ScaledAdd', [x, x], { alpha: float(0.5) }, 1, 'com.example');
  node.overload = 'v2';
  node.docString = 'calls the model-local function';
  node.metadataProps = [['node-key', 'node-value']];
  node.unknownFields = UNKNOWN.node;
  node.deviceConfigurations = [
    {
      configuration_id: 'mesh',
      sharding_spec: [
        {
          tensor_name: 'X',
          device: [0n, 1n],
          index_to_device_group_map: [
            { key: 0n, value: [0n, 1n] },
            { key: 1n, value: [INT64_MAX] },
          ],
          sharded_dim: [
            {
              axis: 0n,
              simple_sharding: [
                { dim_value: 4n, num_shards: 2n },
                { dim_param: 'batch', num_shards: 2n },
              ],
            },
            { axis: -1n },
          ],
        },
      ],
      pipeline_stage: 1,
    },
    { configuration_id: 'other', pipeline_stage: -1 },
  ];
  return node.outputs[0]!;
}

/** If(cond): the then branch reads the function result, the else branch the graph input. */
function ifNode(b: ModelBuilder, cond: Value, x: Value, z1: Value): Value {
  const thenBranch = subgraph(b, 'then_branch', (sb) => [sb.op.Identity(z1)]);
  const elseBranch = subgraph(b, 'else_branch', (sb) => [sb.op.Neg(x)]);
  return b.op.If(cond, { then_branch: thenBranch, else_branch: elseBranch });
}

function loopNode(b: ModelBuilder, tripCount: Value, cond: Value, x: Value): Value {
  const body = subgraph(b, 'loop_body', (sb) => {
    sb.graph.addInput(new Value(b.names.fresh('iter'), tensorType(DataType.INT64, [])));
    const condIn = sb.graph.addInput(new Value(b.names.fresh('cond_in'), tensorType(DataType.BOOL, [])));
    const vIn = sb.graph.addInput(new Value(b.names.fresh('v_in'), FLOAT_X));
    const outerWeight = b.graph.initializers.find((v) => v.name === 'w_float_raw')!;
    return [sb.op.Identity(condIn), sb.op.Add(vIn, outerWeight)];
  });
  return b.op.Loop(tripCount, cond, x, { body });
}

/** A graph for an attribute; `fill` adds its nodes and returns its outputs (typed here). */
function subgraph(b: GraphBuilder, name: string, fill: (sb: GraphBuilder) => Value[]): Graph {
  const g = new Graph(name);
  g.outerScope = b.graph;
  const sb = new GraphBuilder(g, b.names);
  g.outputs = fill(sb);
  for (const out of g.outputs) out.type ??= FLOAT_X;
  return g;
}

/** A custom-domain node with one attribute of every AttributeType, an empty input and an empty output. */
function allAttributesNode(b: ModelBuilder, x: Value, cond: Value): Value[] {
  const node = b.node('AllAttrs', [x, null, cond], {}, 3, 'com.example');
  node.setOutput(1, null);
  const gIn = () => new Value(b.names.fresh('g_in'), tensorType(DataType.FLOAT, [1]));
  const graphWithInput = (name: string) =>
    subgraph(b, name, (sb) => {
      const input = sb.graph.addInput(gIn());
      return [sb.op.Relu(input)];
    });
  const attributes: Attribute[] = [
    { name: 'f', type: AttributeType.FLOAT, f: -0, docString: 'negative zero', unknownFields: UNKNOWN.attribute },
    { name: 'f_nan', type: AttributeType.FLOAT, f: NaN },
    { name: 'i', type: AttributeType.INT, i: INT64_MIN },
    { name: 's', type: AttributeType.STRING, s: Uint8Array.from([0xff, 0x00, 0x41]) },
    {
      name: 't',
      type: AttributeType.TENSOR,
      t: Tensor.fromArray('attr_t', DataType.INT64, [2], BigInt64Array.from([INT64_MAX, INT64_MIN])),
    },
    { name: 'g', type: AttributeType.GRAPH, g: graphWithInput('attr_g') },
    { name: 'sparse_tensor', type: AttributeType.SPARSE_TENSOR, sparseTensor: sparseTensor('attr_sparse') },
    { name: 'tp', type: AttributeType.TYPE_PROTO, tp: FLOAT_X },
    { name: 'floats', type: AttributeType.FLOATS, floats: [1.5, -0, Infinity, NaN, 1e-45] },
    { name: 'ints', type: AttributeType.INTS, ints: [INT64_MIN, INT64_MAX, -1n, 0n, 2n ** 53n + 1n, 2n ** 40n + 2n ** 33n] },
    { name: 'strings', type: AttributeType.STRINGS, strings: [text('a'), new Uint8Array(0), text('ü')] },
    {
      name: 'tensors',
      type: AttributeType.TENSORS,
      tensors: [
        new Tensor('attr_ts_0', DataType.DOUBLE, [1], { kind: 'typed', field: 'double_data', values: Float64Array.of(NaN) }),
        new Tensor(undefined, DataType.STRING, [1], { kind: 'strings', values: [text('s')] }),
      ],
    },
    {
      name: 'graphs',
      type: AttributeType.GRAPHS,
      graphs: [graphWithInput('attr_gs_0'), subgraph(b, 'attr_gs_1', (sb) => [sb.op.Identity(x)])],
    },
    { name: 'sparse_tensors', type: AttributeType.SPARSE_TENSORS, sparseTensors: [sparseTensor('attr_sp_0'), sparseTensor(undefined)] },
    { name: 'type_protos', type: AttributeType.TYPE_PROTOS, typeProtos: typeSamples() },
    { name: 'untyped', i: 5n },
  ];
  node.attributes = attributes;
  for (const sub of node.subgraphs()) sub.outerScope = b.graph;
  return [node.outputs[0]!, node.outputs[2]!];
}

/** Training: an initialization graph producing a new weight, an algorithm graph updating it. */
function trainingInfo(b: ModelBuilder): Model['trainingInfo'][number] {
  const weight = b.graph.initializers.find((v) => v.name === 'w_float_raw')!;
  const init = subgraph(b, 'training_init', (sb) => [sb.op.RandomNormal({ shape: [7], seed: float(1) })]);
  const algorithm = subgraph(b, 'training_algorithm', (sb) => {
    const lr = sb.floats('learning_rate', [], [0.01]);
    return [sb.op.Mul(weight, lr)];
  });
  init.outputs[0].type = tensorType(DataType.FLOAT, [7]);
  algorithm.outputs[0].type = tensorType(DataType.FLOAT, [7]);
  return {
    initialization: init,
    algorithm,
    initializationBinding: [['w_float_raw', init.outputs[0].name]],
    updateBinding: [['w_float_raw', algorithm.outputs[0].name]],
    unknownFields: UNKNOWN.trainingInfo,
  };
}
