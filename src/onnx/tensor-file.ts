// Lone TensorProto files, as ONNX's backend tests store their inputs and reference outputs
// (test_data_set_N/input_N.pb, output_N.pb): one serialized TensorProto per file, data inline.
import * as fs from 'node:fs';
import { VcompileError } from '../errors.js';
import type { Tensor } from '../ir/tensor.js';
import { DataType, dataTypeName, elementBits } from '../ir/types.js';
import { concatChunks, decode, encode, ProtoDecodeError } from './codec.js';
import { readFileOrFail } from './file.js';
import { ModelFormatError, tensorFromMessage, tensorToMessage } from './serde.js';

/** Decode one serialized TensorProto, checking that its data matches its type and dims. */
export function decodeTensor(bytes: Uint8Array, label = 'tensor'): Tensor {
  let tensor: Tensor;
  try {
    tensor = tensorFromMessage(decode('TensorProto', bytes));
  } catch (error) {
    if (error instanceof ProtoDecodeError) throw new VcompileError(`${label}: not a TensorProto (${error.message})`);
    if (error instanceof ModelFormatError) throw new VcompileError(`${label}: ${error.message}`);
    throw error;
  }
  const problem = dataProblem(tensor);
  if (problem) throw new VcompileError(`${label}: not a usable TensorProto (${problem})`);
  return tensor;
}

/** Serialize a tensor as one TensorProto, data inline (external data is read in). */
export function encodeTensor(tensor: Tensor): Uint8Array {
  return concatChunks(encode('TensorProto', tensorToMessage(tensor)));
}

export function readTensorFile(file: string): Tensor {
  const bytes = readFileOrFail(file);
  return decodeTensor(bytes, file);
}

export function writeTensorFile(file: string, tensor: Tensor): void {
  try {
    fs.writeFileSync(file, encodeTensor(tensor));
  } catch (error) {
    throw new VcompileError(`${file}: ${(error as Error).message}`);
  }
}

/**
 * Why the tensor's data cannot be what its type and dims say, or undefined when it can. A truncated or
 * bit-flipped file often still parses as protobuf, so this is what tells such a file apart.
 */
function dataProblem(t: Tensor): string | undefined {
  if (t.dims.some((d) => d < 0)) return `negative dimension in [${t.dims.join(', ')}]`;
  const size = t.size;
  const isString = t.dataType === DataType.STRING;
  const bits = elementBits(t.dataType);
  if (!isString && bits === undefined) return `unknown data type ${t.dataType}`;
  const s = t.storage;
  const type = dataTypeName(t.dataType);
  switch (s.kind) {
    case 'none':
      return size === 0 ? undefined : `no data for ${size} ${type} elements`;
    case 'strings':
      if (!isString) return `string data in a ${type} tensor`;
      return s.values.length === size ? undefined : `${s.values.length} strings for ${size} elements`;
    case 'raw': {
      if (isString) return 'raw data in a string tensor';
      const expected = Math.ceil((size * bits!) / 8);
      return s.bytes.length === expected ? undefined : `${s.bytes.length} data bytes for ${size} ${type} elements (${expected} expected)`;
    }
    case 'typed': {
      if (isString) return `${s.field} in a string tensor`;
      const expected = typedFieldCount(t.dataType, bits!, size);
      return s.values.length === expected ? undefined : `${s.values.length} ${s.field} values for ${size} ${type} elements`;
    }
    case 'external':
      return undefined;
  }
}

/** How many entries a typed field holds for `size` elements: complex numbers take two, 4-bit types pack two per entry. */
function typedFieldCount(dataType: number, bits: number, size: number): number {
  if (dataType === DataType.COMPLEX64 || dataType === DataType.COMPLEX128) return size * 2;
  if (bits === 4) return Math.ceil(size / 2);
  return size;
}
