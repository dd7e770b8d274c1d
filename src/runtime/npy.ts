// NumPy .npy files (format versions 1.0 to 3.0) for little-endian numeric arrays, so model inputs can
// come from Python (`numpy.save`) and outputs can go back to it. Big-endian, Fortran-ordered (beyond 1-D),
// object, string and structured arrays are refused in one line.
import * as fs from 'node:fs';
import { VcompileError } from '../errors.js';
import { Tensor } from '../ir/tensor.js';
import { DataType, dataTypeName, elementBits } from '../ir/types.js';
import { readFileOrFail } from '../onnx/file.js';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** NumPy type codes (without the byte-order character) and the ONNX types they hold. */
const NPY_TYPES: [code: string, dataType: number][] = [
  ['f4', DataType.FLOAT],
  ['f8', DataType.DOUBLE],
  ['f2', DataType.FLOAT16],
  ['i1', DataType.INT8],
  ['u1', DataType.UINT8],
  ['i2', DataType.INT16],
  ['u2', DataType.UINT16],
  ['i4', DataType.INT32],
  ['u4', DataType.UINT32],
  ['i8', DataType.INT64],
  ['u8', DataType.UINT64],
  ['b1', DataType.BOOL],
];

/** Parse .npy bytes into a tensor named `name` (the data is copied). */
export function decodeNpy(bytes: Uint8Array, name?: string, label = 'npy'): Tensor {
  const fail = (why: string) => new VcompileError(`${label}: ${why}`);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw fail('not a .npy file (no \\x93NUMPY magic)');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerStart: number;
  let headerLength: number;
  if (major === 1) {
    headerLength = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw fail('truncated header');
    headerLength = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw fail(`unsupported .npy format version ${major}.${bytes[7]}`);
  }
  if (headerStart + headerLength > bytes.length) throw fail('truncated header');
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(headerStart, headerStart + headerLength));
  const { dataType, dims, fortran } = parseHeader(header, fail);
  if (fortran && dims.filter((d) => d > 1).length > 1)
    throw fail('Fortran-ordered arrays are not supported (save with numpy.ascontiguousarray)');
  const size = dims.reduce((a, b) => a * b, 1);
  const length = (size * elementBits(dataType)!) / 8;
  const dataStart = headerStart + headerLength;
  if (bytes.length - dataStart < length)
    throw fail(`${bytes.length - dataStart} data bytes for ${size} ${dataTypeName(dataType)} elements (${length} expected)`);
  // a copy (new Uint8Array, not slice(), which on a Buffer is a view into a shared pool)
  return Tensor.fromRaw(name, dataType, dims, new Uint8Array(bytes.subarray(dataStart, dataStart + length)));
}

function parseHeader(header: string, fail: (why: string) => VcompileError): { dataType: number; dims: number[]; fortran: boolean } {
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shape === undefined) throw fail(`unreadable header ${JSON.stringify(header.trim())}`);
  const order = descr[0];
  const code = descr.slice(1);
  const entry = NPY_TYPES.find(([c]) => c === code);
  if (!entry || !'<|='.includes(order)) {
    const why = order === '>' ? 'big-endian data is not supported' : 'only numeric and bool arrays are supported';
    throw fail(`dtype '${descr}': ${why}`);
  }
  const dims = shape
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const n = Number(s.replace(/L$/, ''));
      if (!Number.isSafeInteger(n) || n < 0) throw fail(`bad shape (${shape})`);
      return n;
    });
  return { dataType: entry[1], dims, fortran: fortran === 'True' };
}

/** Serialize a numeric tensor as a version 1.0 .npy file, as numpy.save writes it. */
export function encodeNpy(tensor: Tensor): Uint8Array {
  const entry = NPY_TYPES.find(([, t]) => t === tensor.dataType);
  if (!entry) throw new VcompileError(`tensor ${tensor.name ?? ''}: ${dataTypeName(tensor.dataType)} cannot be written as .npy`);
  const [code] = entry;
  const order = code === 'i1' || code === 'u1' || code === 'b1' ? '|' : '<';
  const shape = tensor.dims.length === 1 ? `(${tensor.dims[0]},)` : `(${tensor.dims.join(', ')})`;
  let header = `{'descr': '${order}${code}', 'fortran_order': False, 'shape': ${shape}, }`;
  // numpy pads the header with spaces so the data starts on a 64-byte boundary, and ends it with \n.
  const unpadded = 10 + header.length + 1;
  header = `${header + ' '.repeat((64 - (unpadded % 64)) % 64)}\n`;
  const data = tensor.bytes();
  const out = new Uint8Array(10 + header.length + data.length);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(data, 10 + header.length);
  return out;
}

export function readNpy(file: string, name?: string): Tensor {
  const bytes = readFileOrFail(file);
  return decodeNpy(bytes, name, file);
}

export function writeNpy(file: string, tensor: Tensor): void {
  try {
    fs.writeFileSync(file, encodeNpy(tensor));
  } catch (error) {
    if (error instanceof VcompileError) throw error;
    throw new VcompileError(`${file}: ${(error as Error).message}`);
  }
}
