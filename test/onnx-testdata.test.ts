// ONNX's own backend test models (Debian package libonnx-testdata) through vcompile's codec: every model
// must decode, re-encode byte for byte, pass the IR verifier, and, where ONNX Runtime can run the
// original on its reference inputs, the re-encoded model must give the reference outputs too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Model } from '../src/ir/model.js';
import { verifyModel } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { encodeTensor, readTensorFile } from '../src/onnx/tensor-file.js';
import {
  DATA_ROOT,
  findModelFiles,
  nonTensorValue,
  readTestData,
  requireTestData,
  runAndCompare,
  sameBytes,
  testdataAvailable,
} from './helpers/onnx-testdata.js';

/** libonnx-testdata 1.12 (Debian bookworm) ships this many models. */
const EXPECTED_MODELS = 1072;
/** Models ORT runs correctly: 959 measured with onnxruntime-node 1.30, less a little slack for other ORT builds. */
const MIN_OK = 940;

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
  requireTestData();
  cases = findModelFiles(DATA_ROOT).map((file) => {
    const model = loadModel(file);
    const dir = path.dirname(file);
    return { dir, name: path.relative(DATA_ROOT, dir), original: fs.readFileSync(file), model, reencoded: encodeModel(model) };
  });
  return cases;
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
    for (const c of loadCases().filter((c) => !nonTensorValue(c.model))) {
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
      const data = readTestData(c.model, dataDir);
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
