// ONNX's backend test models (Debian package libonnx-testdata): finding them, reading their reference
// inputs and outputs, and running a model on ONNX Runtime against those references with ONNX's tolerances.
// Shared by test/onnx-testdata.test.ts (the codec) and test/opset-upgrade.test.ts (the opset upgrade).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Model } from '../../src/ir/model.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { DataType, dataTypeName } from '../../src/ir/types.js';
import { readTensorFile } from '../../src/onnx/tensor-file.js';
import { isOrtDataType, openSession, run } from '../../src/runtime/session.js';

export const DATA_ROOT = '/usr/share/libonnx-testdata/data';
// ONNX's backend test defaults.
const RTOL = 1e-3;
const ATOL = 1e-7;

export function requireTestData(): void {
  if (!fs.existsSync(DATA_ROOT)) {
    throw new Error(`${DATA_ROOT} is missing: install ONNX's backend test models with \`apt-get install libonnx-testdata\``);
  }
}

export function findModelFiles(dir: string = DATA_ROOT): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...findModelFiles(full));
    else if (entry.name === 'model.onnx') found.push(full);
  }
  return found;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

// ------------------------------------------------------------------------------ reference data

export interface TestData {
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
export function nonTensorValue(model: Model): string | undefined {
  const graph = model.graph;
  const v = [...graph.inputs.filter((input) => !input.initializer), ...graph.outputs].find((value) => value.type?.kind !== 'tensor');
  return v && `${v.type?.kind ?? 'untyped'} value '${v.name}'`;
}

/** The reference inputs and outputs, or why ORT's JavaScript API cannot take them. */
export function readTestData(model: Model, dataDir: string): TestData | string {
  const graph = model.graph;
  const fed = graph.inputs.filter((v) => !v.initializer);
  const nonTensor = nonTensorValue(model);
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
export function mismatch(actual: Tensor | undefined, expected: Tensor, name: string): string | undefined {
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

/** Runs a model (bytes or IR) on the reference inputs: undefined when the outputs match, else what went wrong. */
export async function runAndCompare(model: Uint8Array | Model, data: TestData): Promise<string | undefined> {
  let session: Awaited<ReturnType<typeof openSession>>;
  try {
    session = await openSession(model, { threads: 1 });
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

// On a machine without the package the suites that need it are skipped with one line saying how to get it;
// `.ci/run` installs the package and sets VCOMPILE_REQUIRE_TESTDATA=1, which makes a missing package a failure.
export const TESTDATA_ROOT = DATA_ROOT;

let warned = false;

/** Whether the backend test models are here; when they are not and not required, says so once. */
export function testdataAvailable(): boolean {
  if (fs.existsSync(DATA_ROOT)) return true;
  if (process.env.VCOMPILE_REQUIRE_TESTDATA === '1') return true; // the suites then fail, naming the folder
  if (!warned) {
    warned = true;
    process.stderr.write(
      `skipping the ONNX backend test-model suites: ${DATA_ROOT} is missing (apt-get install libonnx-testdata; .ci/run installs it)\n`,
    );
  }
  return false;
}
