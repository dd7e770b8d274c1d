// ONNX's backend test models (libonnx-testdata 1.12, opsets 1-17) upgraded to opset 17 and to 21: every
// model below the target is converted or refused with a reason; every converted one passes the IR
// verifier; and wherever ONNX Runtime runs the original and matches the reference outputs, the converted
// model must match them too ("failed" must stay empty). Old models ORT cannot run at all (opset < 7
// kernels) often run after the upgrade: those are counted as well.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { upgradeOpset } from '../passes/opset/index.js';
import { VcompileError } from '../src/errors.js';
import { verifyModel } from '../src/ir/verify.js';
import { decodeModel, encodeModel } from '../src/onnx/file.js';
import {
  DATA_ROOT,
  findModelFiles,
  readTestData,
  requireTestData,
  runAndCompare,
  type TestData,
  testdataAvailable,
} from './helpers/onnx-testdata.js';

interface Case {
  name: string;
  bytes: Uint8Array;
  opset: number;
  /** reference data, or why ORT's JavaScript API cannot take it */
  data: TestData | string;
  /** why the original does not reproduce the reference on ORT (undefined: it does) */
  originalProblem?: string;
}

/** What libonnx-testdata 1.12 and onnxruntime-node 1.30 gave (see the report below each run). */
const EXPECTED = {
  17: {
    refused: ['node/test_resize_downsample_sizes_nearest_tf_half_pixel_for_nn', 'node/test_scan_sum'],
    minEqual: 890,
    minNewlyRunning: 30,
  },
  21: {
    refused: ['node/test_resize_downsample_sizes_nearest_tf_half_pixel_for_nn', 'node/test_scan_sum'],
    minEqual: 940,
    minNewlyRunning: 30,
  },
} as const;

const cases: Case[] = [];

/** Ops whose outputs are random: a model with one is never compared (a lucky draw could match the reference once). */
const RANDOM_OPS = new Set(['Bernoulli', 'RandomUniform', 'RandomUniformLike', 'RandomNormal', 'RandomNormalLike', 'Multinomial']);

describe.runIf(testdataAvailable())('opset upgrade of libonnx-testdata', { timeout: 120_000 }, () => {
  beforeAll(async () => {
    requireTestData();
    for (const file of findModelFiles(DATA_ROOT)) {
      const bytes = fs.readFileSync(file);
      const model = decodeModel(bytes);
      const opset = model.opsetVersion('');
      if (opset === undefined || opset >= 21) continue;
      const dataDir = path.join(path.dirname(file), 'test_data_set_0');
      const random = [...model.allGraphs()].some((g) => g.nodes.some((n) => RANDOM_OPS.has(n.opType)));
      const data = random ? 'random outputs' : fs.existsSync(dataDir) ? readTestData(model, dataDir) : 'no test_data_set_0';
      const originalProblem = typeof data === 'string' ? data : await runAndCompare(bytes, data);
      cases.push({ name: path.relative(DATA_ROOT, path.dirname(file)), bytes, opset, data, originalProblem });
    }
  }, 120_000);

  for (const target of [17, 21] as const) {
    it(`converts every model below opset ${target}: equal outputs, or refused with a reason; none fails`, async () => {
      const equal: string[] = [];
      const newlyRunning: string[] = [];
      const refused: string[] = [];
      const reasons: string[] = [];
      const invalid: string[] = [];
      const failed: string[] = [];
      const unrunnable: string[] = [];
      for (const c of cases.filter((k) => k.opset < target)) {
        const model = decodeModel(c.bytes);
        try {
          upgradeOpset(model, target);
        } catch (error) {
          if (!(error instanceof VcompileError)) throw error;
          refused.push(c.name);
          reasons.push(`${c.name}: ${error.message}`);
          continue;
        }
        const problems = verifyModel(model);
        if (problems.length) invalid.push(`${c.name}: ${problems[0].where}: ${problems[0].message}`);
        if (typeof c.data === 'string') {
          unrunnable.push(c.name);
          continue;
        }
        const problem = await runAndCompare(encodeModel(model), c.data);
        if (!c.originalProblem) {
          if (problem) failed.push(`${c.name} (opset ${c.opset}): ${problem}`);
          else equal.push(c.name);
        } else if (!problem) newlyRunning.push(c.name);
        else unrunnable.push(c.name);
      }
      const below = cases.filter((k) => k.opset < target).length;
      console.log(
        `opset ${target}: ${below} models below it: ${equal.length} converted and equal, ${newlyRunning.length} converted and equal where ORT ` +
          `cannot run the original, ${refused.length} refused, ${failed.length} failed, ${unrunnable.length} converted but not comparable on ORT ` +
          `(original fails there too, random or non-tensor outputs)\n  ${reasons.join('\n  ')}`,
      );
      expect(failed).toEqual([]);
      expect(invalid).toEqual([]);
      expect(refused).toEqual(EXPECTED[target].refused);
      expect(equal.length).toBeGreaterThanOrEqual(EXPECTED[target].minEqual);
      expect(newlyRunning.length).toBeGreaterThanOrEqual(EXPECTED[target].minNewlyRunning);
    });
  }
});
