// The ONNX protobuf schema (onnx.proto, ONNX 1.20, IR version 11) as a table the codec walks.
// Written as data rather than generated code so that one small codec handles every message, keeps
// fields it does not know, and never depends on a protobuf library's notion of the schema.
// Packing follows onnx.proto (proto2): only the TensorProto data arrays are declared packed.

export type ScalarKind = 'int32' | 'int64' | 'uint64' | 'float' | 'double' | 'string' | 'bytes';

export interface FieldDesc {
  readonly no: number;
  readonly name: string;
  readonly kind: ScalarKind | 'message';
  readonly message?: string;
  readonly repeated?: boolean;
  readonly packed?: boolean;
}

export interface MessageDesc {
  readonly name: string;
  readonly fields: readonly FieldDesc[];
  /** fields indexed by number, filled in lazily by the codec */
  byNumber?: (FieldDesc | undefined)[];
}

const scalar = (no: number, name: string, kind: ScalarKind): FieldDesc => ({ no, name, kind });
const list = (no: number, name: string, kind: ScalarKind, packed = false): FieldDesc => ({ no, name, kind, repeated: true, packed });
const msg = (no: number, name: string, message: string): FieldDesc => ({ no, name, kind: 'message', message });
const msgs = (no: number, name: string, message: string): FieldDesc => ({ no, name, kind: 'message', message, repeated: true });

const messages: MessageDesc[] = [
  {
    name: 'ModelProto',
    fields: [
      scalar(1, 'ir_version', 'int64'),
      msgs(8, 'opset_import', 'OperatorSetIdProto'),
      scalar(2, 'producer_name', 'string'),
      scalar(3, 'producer_version', 'string'),
      scalar(4, 'domain', 'string'),
      scalar(5, 'model_version', 'int64'),
      scalar(6, 'doc_string', 'string'),
      msg(7, 'graph', 'GraphProto'),
      msgs(14, 'metadata_props', 'StringStringEntryProto'),
      msgs(20, 'training_info', 'TrainingInfoProto'),
      msgs(25, 'functions', 'FunctionProto'),
      msgs(26, 'configuration', 'DeviceConfigurationProto'),
    ],
  },
  {
    name: 'GraphProto',
    fields: [
      msgs(1, 'node', 'NodeProto'),
      scalar(2, 'name', 'string'),
      msgs(5, 'initializer', 'TensorProto'),
      msgs(15, 'sparse_initializer', 'SparseTensorProto'),
      scalar(10, 'doc_string', 'string'),
      msgs(11, 'input', 'ValueInfoProto'),
      msgs(12, 'output', 'ValueInfoProto'),
      msgs(13, 'value_info', 'ValueInfoProto'),
      msgs(14, 'quantization_annotation', 'TensorAnnotation'),
      msgs(16, 'metadata_props', 'StringStringEntryProto'),
    ],
  },
  {
    name: 'NodeProto',
    fields: [
      list(1, 'input', 'string'),
      list(2, 'output', 'string'),
      scalar(3, 'name', 'string'),
      scalar(4, 'op_type', 'string'),
      scalar(7, 'domain', 'string'),
      scalar(8, 'overload', 'string'),
      msgs(5, 'attribute', 'AttributeProto'),
      scalar(6, 'doc_string', 'string'),
      msgs(9, 'metadata_props', 'StringStringEntryProto'),
      msgs(10, 'device_configurations', 'NodeDeviceConfigurationProto'),
    ],
  },
  {
    name: 'AttributeProto',
    fields: [
      scalar(1, 'name', 'string'),
      scalar(21, 'ref_attr_name', 'string'),
      scalar(13, 'doc_string', 'string'),
      scalar(20, 'type', 'int32'),
      scalar(2, 'f', 'float'),
      scalar(3, 'i', 'int64'),
      scalar(4, 's', 'bytes'),
      msg(5, 't', 'TensorProto'),
      msg(6, 'g', 'GraphProto'),
      msg(22, 'sparse_tensor', 'SparseTensorProto'),
      msg(14, 'tp', 'TypeProto'),
      list(7, 'floats', 'float'),
      list(8, 'ints', 'int64'),
      list(9, 'strings', 'bytes'),
      msgs(10, 'tensors', 'TensorProto'),
      msgs(11, 'graphs', 'GraphProto'),
      msgs(23, 'sparse_tensors', 'SparseTensorProto'),
      msgs(15, 'type_protos', 'TypeProto'),
    ],
  },
  {
    name: 'ValueInfoProto',
    fields: [
      scalar(1, 'name', 'string'),
      msg(2, 'type', 'TypeProto'),
      scalar(3, 'doc_string', 'string'),
      msgs(4, 'metadata_props', 'StringStringEntryProto'),
    ],
  },
  {
    name: 'TensorProto',
    fields: [
      list(1, 'dims', 'int64'),
      scalar(2, 'data_type', 'int32'),
      msg(3, 'segment', 'TensorProto.Segment'),
      list(4, 'float_data', 'float', true),
      list(5, 'int32_data', 'int32', true),
      list(6, 'string_data', 'bytes'),
      list(7, 'int64_data', 'int64', true),
      scalar(8, 'name', 'string'),
      scalar(12, 'doc_string', 'string'),
      scalar(9, 'raw_data', 'bytes'),
      msgs(13, 'external_data', 'StringStringEntryProto'),
      scalar(14, 'data_location', 'int32'),
      list(10, 'double_data', 'double', true),
      list(11, 'uint64_data', 'uint64', true),
      msgs(16, 'metadata_props', 'StringStringEntryProto'),
    ],
  },
  { name: 'TensorProto.Segment', fields: [scalar(1, 'begin', 'int64'), scalar(2, 'end', 'int64')] },
  {
    name: 'SparseTensorProto',
    fields: [msg(1, 'values', 'TensorProto'), msg(2, 'indices', 'TensorProto'), list(3, 'dims', 'int64')],
  },
  { name: 'TensorShapeProto', fields: [msgs(1, 'dim', 'TensorShapeProto.Dimension')] },
  {
    name: 'TensorShapeProto.Dimension',
    fields: [scalar(1, 'dim_value', 'int64'), scalar(2, 'dim_param', 'string'), scalar(3, 'denotation', 'string')],
  },
  {
    name: 'TypeProto',
    fields: [
      msg(1, 'tensor_type', 'TypeProto.Tensor'),
      msg(4, 'sequence_type', 'TypeProto.Sequence'),
      msg(5, 'map_type', 'TypeProto.Map'),
      msg(9, 'optional_type', 'TypeProto.Optional'),
      msg(8, 'sparse_tensor_type', 'TypeProto.Tensor'),
      msg(7, 'opaque_type', 'TypeProto.Opaque'),
      scalar(6, 'denotation', 'string'),
    ],
  },
  { name: 'TypeProto.Tensor', fields: [scalar(1, 'elem_type', 'int32'), msg(2, 'shape', 'TensorShapeProto')] },
  { name: 'TypeProto.Sequence', fields: [msg(1, 'elem_type', 'TypeProto')] },
  { name: 'TypeProto.Map', fields: [scalar(1, 'key_type', 'int32'), msg(2, 'value_type', 'TypeProto')] },
  { name: 'TypeProto.Optional', fields: [msg(1, 'elem_type', 'TypeProto')] },
  { name: 'TypeProto.Opaque', fields: [scalar(1, 'domain', 'string'), scalar(2, 'name', 'string')] },
  { name: 'OperatorSetIdProto', fields: [scalar(1, 'domain', 'string'), scalar(2, 'version', 'int64')] },
  { name: 'StringStringEntryProto', fields: [scalar(1, 'key', 'string'), scalar(2, 'value', 'string')] },
  {
    name: 'TensorAnnotation',
    fields: [scalar(1, 'tensor_name', 'string'), msgs(2, 'quant_parameter_tensor_names', 'StringStringEntryProto')],
  },
  {
    name: 'TrainingInfoProto',
    fields: [
      msg(1, 'initialization', 'GraphProto'),
      msg(2, 'algorithm', 'GraphProto'),
      msgs(3, 'initialization_binding', 'StringStringEntryProto'),
      msgs(4, 'update_binding', 'StringStringEntryProto'),
    ],
  },
  {
    name: 'FunctionProto',
    fields: [
      scalar(1, 'name', 'string'),
      list(4, 'input', 'string'),
      list(5, 'output', 'string'),
      list(6, 'attribute', 'string'),
      msgs(11, 'attribute_proto', 'AttributeProto'),
      msgs(7, 'node', 'NodeProto'),
      scalar(8, 'doc_string', 'string'),
      msgs(9, 'opset_import', 'OperatorSetIdProto'),
      scalar(10, 'domain', 'string'),
      scalar(13, 'overload', 'string'),
      msgs(12, 'value_info', 'ValueInfoProto'),
      msgs(14, 'metadata_props', 'StringStringEntryProto'),
    ],
  },
  {
    name: 'DeviceConfigurationProto',
    fields: [scalar(1, 'name', 'string'), scalar(2, 'num_devices', 'int32'), list(3, 'device', 'string')],
  },
  {
    name: 'NodeDeviceConfigurationProto',
    fields: [scalar(1, 'configuration_id', 'string'), msgs(2, 'sharding_spec', 'ShardingSpecProto'), scalar(3, 'pipeline_stage', 'int32')],
  },
  {
    name: 'ShardingSpecProto',
    fields: [
      scalar(1, 'tensor_name', 'string'),
      list(2, 'device', 'int64'),
      msgs(3, 'index_to_device_group_map', 'IntIntListEntryProto'),
      msgs(4, 'sharded_dim', 'ShardedDimProto'),
    ],
  },
  { name: 'IntIntListEntryProto', fields: [scalar(1, 'key', 'int64'), list(2, 'value', 'int64')] },
  { name: 'ShardedDimProto', fields: [scalar(1, 'axis', 'int64'), msgs(2, 'simple_sharding', 'SimpleShardedDimProto')] },
  {
    name: 'SimpleShardedDimProto',
    fields: [scalar(1, 'dim_value', 'int64'), scalar(2, 'dim_param', 'string'), scalar(3, 'num_shards', 'int64')],
  },
];

const byName = new Map(messages.map((m) => [m.name, m]));

export function messageDesc(name: string): MessageDesc {
  const desc = byName.get(name);
  if (!desc) throw new Error(`unknown protobuf message ${name}`);
  return desc;
}

export function fieldByNumber(desc: MessageDesc, no: number): FieldDesc | undefined {
  if (!desc.byNumber) {
    const table: (FieldDesc | undefined)[] = [];
    for (const f of desc.fields) table[f.no] = f;
    desc.byNumber = table;
  }
  return desc.byNumber[no];
}

/** Fields in field-number order: the order protobuf's reference implementation serializes in. */
export function fieldsInWireOrder(desc: MessageDesc): readonly FieldDesc[] {
  return wireOrder.get(desc) ?? cacheWireOrder(desc);
}

const wireOrder = new Map<MessageDesc, readonly FieldDesc[]>();
function cacheWireOrder(desc: MessageDesc): readonly FieldDesc[] {
  const ordered = [...desc.fields].sort((a, b) => a.no - b.no);
  wireOrder.set(desc, ordered);
  return ordered;
}
