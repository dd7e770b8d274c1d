// IR tensors in and out of ONNX Runtime: every data type onnxruntime-node carries survives an Identity
// node bit for bit, and what it cannot carry is refused in one line.
import { describe, expect, it } from 'vitest';
import { VcompileError } from '../src/errors.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, dataTypeName, tensorType } from '../src/ir/types.js';
import { encodeModel } from '../src/onnx/file.js';
import { openSession, run } from '../src/runtime/session.js';

function identityModel(dataType: number, dims: number[]): Uint8Array {
  const b = new ModelBuilder(17);
  const x = b.input('x', tensorType(dataType, dims));
  b.output(b.op.Identity(x), 'y', tensorType(dataType, dims));
  return encodeModel(b.model);
}

const NUMERIC: [number, ArrayBufferView][] = [
  [DataType.FLOAT, new Float32Array([1.5, -0, NaN, Infinity])],
  [DataType.DOUBLE, new Float64Array([Math.PI, -1e300, 5e-324, NaN])],
  [DataType.FLOAT16, new Uint16Array([0x3c00, 0xc000, 0x7e00, 0x0001])],
  [DataType.INT8, new Int8Array([-128, 127, 0, -1])],
  [DataType.UINT8, new Uint8Array([0, 255, 7, 128])],
  [DataType.INT16, new Int16Array([-32768, 32767, 1, -2])],
  [DataType.UINT16, new Uint16Array([65535, 0, 3, 4])],
  [DataType.INT32, new Int32Array([-(2 ** 31), 2 ** 31 - 1, 5, 6])],
  [DataType.UINT32, new Uint32Array([2 ** 32 - 1, 0, 9, 10])],
  [DataType.INT64, new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n])],
  [DataType.UINT64, new BigUint64Array([2n ** 64n - 1n, 0n, 1n, 2n])],
  [DataType.BOOL, new Uint8Array([1, 0, 0, 1])],
];

describe('onnxruntime-node session', () => {
  it.each(NUMERIC.map(([dataType, values]) => [dataTypeName(dataType), dataType, values] as const))(
    '%s round trip',
    async (_, dataType, values) => {
      const session = await openSession(identityModel(dataType, [2, 2]), { threads: 1 });
      // Raw data taken at an odd offset of a larger buffer, as tensors read from a file often are.
      const source = new Uint8Array(values.byteLength + 1);
      source.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), 1);
      const outputs = await run(session, { x: Tensor.fromRaw('x', dataType, [2, 2], source.subarray(1)) });
      await session.release();
      expect(outputs.y.dataType).toBe(dataType);
      expect(outputs.y.dims).toEqual([2, 2]);
      expect(Buffer.from(outputs.y.bytes()).equals(Buffer.from(source.subarray(1)))).toBe(true);
    },
  );

  it('string round trip', async () => {
    const session = await openSession(identityModel(DataType.STRING, [3]), { threads: 1 });
    const encoder = new TextEncoder();
    const values = ['héllo', '', '日本'].map((s) => encoder.encode(s));
    const outputs = await run(session, { x: new Tensor('x', DataType.STRING, [3], { kind: 'strings', values }) });
    await session.release();
    expect(outputs.y.storage).toEqual({ kind: 'strings', values });
  });

  it('refuses what it cannot carry, in one line', async () => {
    const session = await openSession(identityModel(DataType.FLOAT, [1]), { threads: 1 });
    const bf16 = Tensor.fromArray('x', DataType.BFLOAT16, [1], new Uint16Array([0x3f80]));
    await expect(run(session, { x: bf16 })).rejects.toThrow(/tensor x: onnxruntime-node cannot take bfloat16 tensors/);
    await expect(run(session, { nope: Tensor.fromArray('nope', DataType.FLOAT, [1], new Float32Array([1])) })).rejects.toThrow(
      VcompileError,
    );
    await session.release();
    const error = await openSession(new Uint8Array([1, 2, 3])).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VcompileError);
    expect((error as Error).message).toMatch(/^onnxruntime could not load model: [^\n]+$/);
  });
});
