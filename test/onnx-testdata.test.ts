// ONNX's own backend test models (Debian package libonnx-testdata) through vcompile's codec: every model
// must decode, re-encode byte for byte, pass the IR verifier, and, where ONNX Runtime can run the
// original on its reference inputs, the re-encoded model must give the reference outputs too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Model } from '../src/ir/model.js';
import type { Tensor } from '../src/ir/tensor.js';
import { DataType, dataTypeName } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { encodeTensor, readTensorFile } from '../src/onnx/tensor-file.js';
import { isOrtDataType, openSession, run } from '../src/runtime/session.js';
import { TESTDATA_ROOT, testdataAvailable } from './helpers/onnx-testdata.js';

const DATA_ROOT = TESTDATA_ROOT;
/** libonnx-testdata 1.12 (Debian bookworm) ships this many models. */
const EXPECTED_MODELS = 1072;
/** Models ORT runs correctly: 959 measured with onnxruntime-node 1.30, less a little slack for other ORT builds. */
const MIN_OK = 940;
// ONNX's backend test defaults.
const RTOL = 1e-3;
const ATOL = 1e-7;

interface Case {
  dir: string;
  name: string;
  original: Uint8Array;
  model: Model;
  reencoded: Uint8Array;
}

let cases: Case[] | undefined;

/** Every model, decoded and re-encoded once for all the tests below. */
function loadCases(): Case[] {
  if (cases) return cases;
  if (!fs.existsSync(DATA_ROOT)) {
    throw new Error(`${DATA_ROOT} is missing: install ONNX's backend test models with \`apt-get install libonnx-testdata\``);
  }
  cases = findModelFiles(DATA_ROOT).map((file) => {
    const model = loadModel(file);
    const dir = path.dirname(file);
    return { dir, name: path.relative(DATA_ROOT, dir), original: fs.readFileSync(file), model, reencoded: encodeModel(model) };
  });
  return cases;
}

function findModelFiles(dir: string): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...findModelFiles(full));
    else if (entry.name === 'model.onnx') found.push(full);
  }
  return found;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

// ------------------------------------------------------------------------------ reference data

interface TestData {
  feeds: Record<string, Tensor>;
  expected: { name: string; tensor: Tensor }[];
}

/** Files named like input_0.pb .. input_N.pb, in numeric order. */
function numberedFiles(dir: string, prefix: string): string[] {
  const pattern = new RegExp(`^${prefix}_(\\d+)\\.pb$`);
  return fs
    .readdirSync(dir)
    .filter((f) => pattern.test(f))
    .sort((a, b) => Number(pattern.exec(a)![1]) - Number(pattern.exec(b)![1]))
    .map((f) => path.join(dir, f));
}

/** A graph input or output that is not a tensor (its test data files hold SequenceProto or OptionalProto). */
function nonTensorValue(c: Case): string | undefined {
  const graph = c.model.graph;
  const v = [...graph.inputs.filter((input) => !input.initializer), ...graph.outputs].find((value) => value.type?.kind !== 'tensor');
  return v && `${v.type?.kind ?? 'untyped'} value '${v.name}'`;
}

/** The reference inputs and outputs, or why ORT's JavaScript API cannot take them. */
function readTestData(c: Case, dataDir: string): TestData | string {
  const graph = c.model.graph;
  const fed = graph.inputs.filter((v) => !v.initializer);
  const nonTensor = nonTensorValue(c);
  if (nonTensor) return nonTensor;
  const feeds: Record<string, Tensor> = {};
  numberedFiles(dataDir, 'input').forEach((file, i) => {
    const tensor = readTensorFile(file);
    const name = fed.some((v) => v.name === tensor.name) ? tensor.name! : fed[i].name;
    feeds[name] = tensor;
  });
  const expected = numberedFiles(dataDir, 'output').map((file, i) => {
    const tensor = readTensorFile(file);
    return { name: graph.outputs.some((v) => v.name === tensor.name) ? tensor.name! : graph.outputs[i].name, tensor };
  });
  const odd = [...Object.values(feeds), ...expected.map((e) => e.tensor)].find((t) => !isOrtDataType(t.dataType));
  if (odd) return `${dataTypeName(odd.dataType)} tensor '${odd.name ?? ''}'`;
  return { feeds, expected };
}

// ------------------------------------------------------------------------------ comparison

function floatsOf(t: Tensor): Float64Array | Float32Array {
  if (t.dataType !== DataType.DOUBLE) return t.toFloat32();
  const bytes = new Uint8Array(t.bytes()); // an aligned copy
  return new Float64Array(bytes.buffer);
}

function closeEnough(actual: number, expected: number): boolean {
  if (actual === expected || (Number.isNaN(actual) && Number.isNaN(expected))) return true;
  if (!Number.isFinite(actual) || !Number.isFinite(expected)) return false;
  return Math.abs(actual - expected) <= ATOL + RTOL * Math.abs(expected);
}

/** How `actual` differs from the reference, or undefined when it matches as ONNX's backend tests require. */
function mismatch(actual: Tensor | undefined, expected: Tensor, name: string): string | undefined {
  if (!actual) return `no output '${name}'`;
  if (actual.dataType !== expected.dataType) {
    return `'${name}' is ${dataTypeName(actual.dataType)}, reference is ${dataTypeName(expected.dataType)}`;
  }
  if (actual.dims.join() !== expected.dims.join()) return `'${name}' has shape [${actual.dims}], reference [${expected.dims}]`;
  if (expected.dataType === DataType.STRING) {
    const a = actual.storage.kind === 'strings' ? actual.storage.values : [];
    const e = expected.storage.kind === 'strings' ? expected.storage.values : [];
    return a.length === e.length && a.every((s, i) => sameBytes(s, e[i])) ? undefined : `'${name}' strings differ`;
  }
  if ([DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16].includes(expected.dataType as 1)) {
    const a = floatsOf(actual);
    const e = floatsOf(expected);
    const i = e.findIndex((v, k) => !closeEnough(a[k], v));
    return i < 0 ? undefined : `'${name}'[${i}] is ${a[i]}, reference ${e[i]}`;
  }
  return sameBytes(actual.bytes(), expected.bytes()) ? undefined : `'${name}' values differ`;
}

/** Runs model bytes on the reference inputs: undefined when the outputs match, else what went wrong. */
async function runAndCompare(bytes: Uint8Array, data: TestData): Promise<string | undefined> {
  let session: Awaited<ReturnType<typeof openSession>>;
  try {
    session = await openSession(bytes, { threads: 1 });
  } catch (error) {
    return (error as Error).message;
  }
  try {
    const outputs = await run(session, data.feeds);
    for (const { name, tensor } of data.expected) {
      const problem = mismatch(outputs[name], tensor, name);
      if (problem) return problem;
    }
    return undefined;
  } catch (error) {
    return (error as Error).message;
  } finally {
    await session.release();
  }
}

// ------------------------------------------------------------------------------ tests

// Loading all models takes about 3 s and the ORT runs about 6 s on two cores; vitest's 5 s default is too tight.
describe.runIf(testdataAvailable())('libonnx-testdata', { timeout: 60_000 }, () => {
  it(`finds ONNX's backend test models (apt-get install libonnx-testdata)`, () => {
    expect(loadCases().length).toBe(EXPECTED_MODELS);
  });

  it('decodes and re-encodes every model byte for byte', () => {
    const differing = loadCases().filter((c) => !sameBytes(c.original, c.reencoded));
    if (differing.length) console.log(`re-encoded differently: ${differing.map((c) => c.name).join(', ')}`);
    expect(differing.map((c) => c.name)).toEqual([]);
  });

  it('finds no IR problem in any model', () => {
    const problems = loadCases().flatMap((c) => verifyModel(c.model).map((p) => `${c.name}: ${p.where}: ${p.message}`));
    expect(problems).toEqual([]);
  });

  it('reads and re-writes every reference tensor file byte for byte', () => {
    let files = 0;
    const differing: string[] = [];
    for (const c of loadCases().filter((c) => !nonTensorValue(c))) {
      for (const set of fs.readdirSync(c.dir).filter((d) => d.startsWith('test_data_set_'))) {
        for (const file of fs.readdirSync(path.join(c.dir, set)).filter((f) => f.endsWith('.pb'))) {
          const full = path.join(c.dir, set, file);
          files++;
          if (!sameBytes(encodeTensor(readTensorFile(full)), fs.readFileSync(full))) differing.push(path.relative(DATA_ROOT, full));
        }
      }
    }
    expect(differing).toEqual([]);
    expect(files).toBeGreaterThan(3000); // 3154 in libonnx-testdata 1.12
  });

  it('re-encoded models give the reference outputs wherever ONNX Runtime runs the original', { timeout: 120_000 }, async () => {
    const all = loadCases();
    let ok = 0;
    const unsupported: string[] = [];
    const failed: string[] = [];
    for (const c of all) {
      const dataDir = path.join(c.dir, 'test_data_set_0');
      if (!fs.existsSync(dataDir)) {
        unsupported.push(`${c.name}: no test_data_set_0`);
        continue;
      }
      const data = readTestData(c, dataDir);
      if (typeof data === 'string') {
        unsupported.push(`${c.name}: onnxruntime-node cannot take ${data}`);
        continue;
      }
      const originalProblem = await runAndCompare(c.original, data);
      if (originalProblem) {
        unsupported.push(`${c.name}: ${originalProblem}`);
        continue;
      }
      const problem = await runAndCompare(c.reencoded, data);
      if (problem) failed.push(`${c.name}: ${problem}`);
      else ok++;
    }
    const identical = all.filter((c) => sameBytes(c.original, c.reencoded)).length;
    console.log(
      `libonnx-testdata: ${ok} ok, ${unsupported.length} unsupported-by-ORT, ${failed.length} failed (of ${all.length}; ${identical} byte-identical)`,
    );
    if (process.env.VCOMPILE_TEST_VERBOSE) console.log(unsupported.join('\n'));
    expect(failed).toEqual([]);
    expect(ok).toBeGreaterThanOrEqual(MIN_OK);
  });
});
