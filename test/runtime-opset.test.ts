// MAX_ORT_OPSET is the newest default-domain opset onnxruntime-node runs: when ONNX Runtime is upgraded,
// this test says whether the constant (and `vcompile plugin init --opset`'s limit) should move.
import { describe, expect, it } from 'vitest';
import { ModelBuilder } from '../src/ir/builder.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { encodeModel } from '../src/onnx/file.js';
import { MAX_ORT_OPSET, openSession } from '../src/runtime/session.js';

function reluAt(opset: number): Uint8Array {
  const b = new ModelBuilder(opset);
  const x = b.input('x', tensorType(DataType.FLOAT, [2]));
  b.output(b.op.Relu(x), 'y', tensorType(DataType.FLOAT, [2]));
  return encodeModel(b.model);
}

describe('MAX_ORT_OPSET', () => {
  it('onnxruntime-node loads a model at MAX_ORT_OPSET and refuses one a version newer', async () => {
    const session = await openSession(reluAt(MAX_ORT_OPSET));
    await session.release();
    await expect(openSession(reluAt(MAX_ORT_OPSET + 1))).rejects.toThrow(
      `Current official support for domain ai.onnx is till opset ${MAX_ORT_OPSET}`,
    );
  });
});
