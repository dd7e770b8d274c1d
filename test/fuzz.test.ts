// Damaged model files: whatever the damage, decoding either yields a model that re-encodes and verifies
// without throwing, or fails with a one-line VcompileError — never a TypeError, RangeError or the like.
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VcompileError } from '../src/errors.js';
import { verifyModel } from '../src/ir/verify.js';
import { decodeModel, encodeModel } from '../src/onnx/file.js';
import { decodeTensor, encodeTensor } from '../src/onnx/tensor-file.js';
import { TESTDATA_ROOT, testdataAvailable } from './helpers/onnx-testdata.js';

const FIXTURES = path.join(import.meta.dirname, '..', 'fixtures');
const TESTDATA = TESTDATA_ROOT;

/** The smallest PyTorch fixtures: real transformer graphs with weights. */
const FIXTURE_MODELS = ['vit.onnx', 'bert_fused_qkv.onnx', 't5_encoder.onnx'];
/** Small ONNX test models with what the fixtures lack: subgraphs, sequences, strings, tensor attributes. */
const TESTDATA_MODELS = [
  'node/test_if',
  'node/test_loop11',
  'node/test_scan9_sum',
  'node/test_constant',
  'simple/test_sequence_model1',
  'node/test_strnormalizer_export_monday_casesensintive_lower',
  'pytorch-operator/test_operator_conv',
];
const TESTDATA_TENSORS = ['node/test_add/test_data_set_0/input_0.pb', 'node/test_cast_FLOAT_to_STRING/test_data_set_0/output_0.pb'];

function readTestdata(relative: string): Uint8Array {
  const file = path.join(TESTDATA, relative);
  if (!fs.existsSync(file))
    throw new Error(`${file} is missing: install ONNX's backend test models with \`apt-get install libonnx-testdata\``);
  return new Uint8Array(fs.readFileSync(file));
}

// What a damaged file may be told off with. Decoding runs without a folder, so external data is refused too.
const EXPECTED_ERROR =
  /^damaged: (not an ONNX model|not a TensorProto|not a usable TensorProto|.*out of range|tensor .* stores its data in an external file)/;

/**
 * Positions drawn anywhere, in the first 16 KiB or in the last 4 KiB: in a model with weights most bytes
 * are tensor data, where damage is harmless, while node lists and the graph's inputs and outputs lie
 * near either end.
 */
const position = fc.tuple(fc.constantFrom('anywhere', 'head', 'tail'), fc.nat()).map(([region, n]) => ({ region, n }));

function place(p: { region: string; n: number }, length: number): number {
  if (length === 0) return 0;
  if (p.region === 'head') return p.n % Math.min(length, 16384);
  if (p.region === 'tail') return length - 1 - (p.n % Math.min(length, 4096));
  return p.n % length;
}

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('truncate' as const), at: position }),
  fc.record({ kind: fc.constant('flip' as const), at: position, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: position, bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: position, count: fc.integer({ min: 1, max: 8 }) }),
);

type Drawn = {
  kind: 'truncate' | 'flip' | 'insert' | 'delete';
  at: { region: string; n: number };
  bit?: number;
  bytes?: Uint8Array;
  count?: number;
};

function damage(original: Uint8Array, mutations: Drawn[]): Uint8Array {
  let bytes = original;
  for (const m of mutations) {
    const at = place(m.at, bytes.length);
    if (m.kind === 'truncate') bytes = bytes.subarray(0, at);
    else if (m.kind === 'flip') {
      bytes = bytes.slice();
      if (bytes.length) bytes[at] ^= 1 << m.bit!;
    } else if (m.kind === 'insert') bytes = concat(bytes.subarray(0, at), m.bytes!, bytes.subarray(at));
    else bytes = concat(bytes.subarray(0, at), bytes.subarray(at + m.count!));
  }
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function expectCleanFailure(error: unknown): void {
  if (!(error instanceof VcompileError)) throw error; // the original error, with its stack, is the most useful report
  expect(error.message).not.toContain('\n');
  expect(error.message).toMatch(EXPECTED_ERROR);
}

/** Decode damaged bytes; a model that comes out must re-encode, verify, and survive a second round unchanged. */
function checkModelBytes(bytes: Uint8Array): void {
  let model: ReturnType<typeof decodeModel>;
  try {
    model = decodeModel(bytes, { label: 'damaged' });
  } catch (error) {
    expectCleanFailure(error);
    return;
  }
  const encoded = encodeModel(model);
  verifyModel(model);
  // Re-encoding normalizes (packing, field order, invalid UTF-8); once normalized, it must be a fixed point.
  expect(Buffer.compare(encodeModel(decodeModel(encoded)), encoded)).toBe(0);
}

function checkTensorBytes(bytes: Uint8Array): void {
  let tensor: ReturnType<typeof decodeTensor>;
  try {
    tensor = decodeTensor(bytes, 'damaged');
  } catch (error) {
    expectCleanFailure(error);
    return;
  }
  const encoded = encodeTensor(tensor);
  expect(Buffer.compare(encodeTensor(decodeTensor(encoded)), encoded)).toBe(0);
}

function varint(n: number): number[] {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 128)) out.push((n % 128) | 0x80);
  out.push(n);
  return out;
}

/**
 * A model whose graph holds one node whose graph attribute holds one node ... `depth` times: three
 * messages (graph, node, attribute) per level. Built back to front, as each length prefix needs the
 * length of everything inside it.
 */
function nestedSubgraphs(depth: number): Uint8Array {
  const levels: number[][] = [];
  let inner = 0; // bytes of the innermost, empty graph
  for (let i = 0; i < depth; i++) {
    const attribute = [0x0a, 1, 0x67, 0xa0, 0x01, 5, 0x32, ...varint(inner)]; // name 'g', type GRAPH, g
    const attributeLength = attribute.length + inner;
    const node = [0x2a, ...varint(attributeLength)]; // NodeProto.attribute
    const nodeLength = node.length + attributeLength;
    const graph = [0x0a, ...varint(nodeLength)]; // GraphProto.node
    levels.push([...graph, ...node, ...attribute]);
    inner = graph.length + nodeLength;
  }
  const out = [0x08, 8, 0x3a, ...varint(inner)]; // ir_version 8, ModelProto.graph
  for (let i = levels.length - 1; i >= 0; i--) for (const b of levels[i]) out.push(b);
  return new Uint8Array(out);
}

const damages = fc.array(mutation, { minLength: 1, maxLength: 4 });

describe('damaged files', { timeout: 60_000 }, () => {
  it.each(FIXTURE_MODELS)('fixture %s', (name) => {
    const original = new Uint8Array(fs.readFileSync(path.join(FIXTURES, name)));
    fc.assert(
      fc.property(damages, (mutations) => checkModelBytes(damage(original, mutations))),
      { numRuns: 500 },
    );
  });

  it.runIf(testdataAvailable()).each(TESTDATA_MODELS)('libonnx-testdata %s', (name) => {
    const original = readTestdata(path.join(name, 'model.onnx'));
    fc.assert(
      fc.property(damages, (mutations) => checkModelBytes(damage(original, mutations))),
      { numRuns: 300 },
    );
  });

  it.runIf(testdataAvailable()).each(TESTDATA_TENSORS)('tensor file %s', (name) => {
    const original = readTestdata(name);
    fc.assert(
      fc.property(damages, (mutations) => checkTensorBytes(damage(original, mutations))),
      { numRuns: 300 },
    );
  });

  it("subgraphs nested past protobuf's limit fail in one line instead of overflowing the stack", () => {
    const model = decodeModel(nestedSubgraphs(30), { label: 'damaged' });
    expect(encodeModel(model)).toBeInstanceOf(Uint8Array);
    expect(verifyModel(model)).toBeInstanceOf(Array);
    for (const depth of [40, 10_000]) {
      expect(() => decodeModel(nestedSubgraphs(depth), { label: 'damaged' })).toThrow(
        /^damaged: not an ONNX model .*nested more than 100 deep/,
      );
    }
  });

  it('random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), (bytes) => checkModelBytes(bytes)),
      { numRuns: 1000 },
    );
  });
});
