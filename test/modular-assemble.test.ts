// Assembling to a target speed-up: the plan search against brute force on small random cases, and the
// assembler on the PyTorch-made modules of fixtures/modules (MACs checked with the bench's own counter,
// ties broken by a cosine measured here independently).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { extractModule } from '../passes/modular/extract.js';
import { fewestLayers, mostSaved, type Option, reaches } from '../passes/modular/search.js';
import { macsAt } from '../src/analysis/macs.js';
import { modularPass } from '../src/compile/passes.js';
import { assemble } from '../src/decide/assemble.js';
import type { Model } from '../src/ir/model.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { bindDims, describeInputs, generateFeeds, shapeOf } from '../src/runtime/feeds.js';
import { openSession, run } from '../src/runtime/session.js';
import { compareValues } from '../src/verify/numeric.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-assemble-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

const BASE = 'fixtures/modules/bert4.onnx';
const TRAINED = 'fixtures/modules/trained';
const AT = { batch: 1, seq: 16 };

/** Every subset of non-overlapping options, by brute force. */
function allPlans(options: Option[]): Option[][] {
  const plans: Option[][] = [];
  for (let mask = 0; mask < 1 << options.length; mask++) {
    const chosen = options.filter((_, i) => mask & (1 << i)).sort((a, b) => a.start - b.start);
    if (chosen.every((o, i) => i === 0 || o.start > chosen[i - 1].end)) plans.push(chosen);
  }
  return plans;
}

const layersOf = (plan: Option[]) => plan.reduce((n, o) => n + o.end - o.start + 1, 0);
const savedBy = (plan: Option[]) => plan.reduce((n, o) => n + o.saving, 0);
const key = (plan: Option[]) =>
  plan
    .map((o) => o.id)
    .sort((a, b) => a - b)
    .join(',');

describe('plan search', () => {
  const cases = fc.integer({ min: 1, max: 8 }).chain((layerCount) =>
    fc.record({
      layerCount: fc.constant(layerCount),
      total: fc.integer({ min: 100, max: 10_000 }),
      target: fc.double({ min: 1.01, max: 4, noNaN: true }),
      options: fc.array(
        fc.record({
          start: fc.integer({ min: 0, max: layerCount - 1 }),
          length: fc.integer({ min: 1, max: layerCount }),
          saving: fc.integer({ min: -500, max: 5_000 }),
        }),
        { maxLength: 9 },
      ),
    }),
  );

  it('finds every plan reaching the target with the fewest layers, as brute force does', () => {
    fc.assert(
      fc.property(cases, ({ layerCount, total, target, options }) => {
        const list: Option[] = options.map((o, id) => ({
          id,
          start: o.start,
          end: Math.min(layerCount - 1, o.start + o.length - 1),
          saving: o.saving,
        }));
        const reaching = allPlans(list).filter((p) => reaches(total, savedBy(p), target));
        const found = fewestLayers(list, layerCount, total, target, 1_000);
        if (reaching.length === 0) {
          expect(found).toBeUndefined();
          return;
        }
        const fewest = Math.min(...reaching.map(layersOf));
        expect(found?.layers).toBe(fewest);
        expect(found!.truncated).toBe(false);
        expect(found!.plans.map(key).sort()).toEqual(
          reaching
            .filter((p) => layersOf(p) === fewest)
            .map(key)
            .sort(),
        );
      }),
      { numRuns: 400, seed: 1122 },
    );
  });

  it('finds the most MACs any plan saves', () => {
    fc.assert(
      fc.property(cases, ({ layerCount, options }) => {
        const list: Option[] = options.map((o, id) => ({
          id,
          start: o.start,
          end: Math.min(layerCount - 1, o.start + o.length - 1),
          saving: o.saving,
        }));
        const best = mostSaved(list, layerCount);
        expect(best.saved).toBe(Math.max(...allPlans(list).map(savedBy)));
        expect(savedBy(best.plan)).toBe(best.saved);
      }),
      { numRuns: 300, seed: 2211 },
    );
  });

  it('stops listing tied plans at the cap and says so', () => {
    const list: Option[] = Array.from({ length: 6 }, (_, id) => ({ id, start: id, end: id, saving: 10 }));
    const found = fewestLayers(list, 6, 100, 100 / 80, 4)!;
    expect(found.layers).toBe(2);
    expect(found.plans).toHaveLength(4);
    expect(found.truncated).toBe(true);
  });
});

function macsOfModel(model: Model): number {
  const specs = describeInputs(model);
  const values = bindDims(specs, AT);
  const count = macsAt(model, new Map(specs.map((s) => [s.name, shapeOf(s, values)])));
  expect(count.macs).not.toBeNull();
  return count.macs!;
}

function compiled(modules: { start: number; end: number; source: string }[]): Model {
  const model = loadModel(BASE);
  modularPass({ modules }).run(model);
  assertValid(model, 'modules');
  return model;
}

async function cosineAgainstBase(model: Model, seeds: number): Promise<number> {
  const base = await openSession(BASE, { threads: 1 });
  const mine = await openSession(encodeModel(model), { threads: 1 });
  try {
    let worst = 1;
    for (let seed = 0; seed < seeds; seed++) {
      const feeds = generateFeeds(describeInputs(model), { batch: 1, seq: AT.seq }, seed);
      const [a, b] = [await run(base, feeds), await run(mine, feeds)];
      worst = Math.min(worst, compareValues(a.last_hidden_state.toFloat32(), b.last_hidden_state.toFloat32()).cosine);
    }
    return worst;
  } finally {
    await base.release();
    await mine.release();
  }
}

describe('assembling the PyTorch-made modules', () => {
  const span2 = { start: 1, end: 2, source: path.join(TRAINED, 'layer_span2_L1-2.onnx') };
  const span3 = { start: 1, end: 3, source: path.join(TRAINED, 'layer_span3_L1-3.onnx') };
  const before = macsOfModel(loadModel(BASE));
  const speedup2 = before / macsOfModel(compiled([span2]));
  const speedup3 = before / macsOfModel(compiled([span3]));

  it('the two modules give different speed-ups (what the cases below rely on)', () => {
    expect(speedup2).toBeGreaterThan(1.2);
    expect(speedup3).toBeGreaterThan(speedup2 + 0.2);
  });

  it('picks the module replacing fewer layers when it reaches the target, the other when only it does', async () => {
    for (const [target, expected, speedup] of [
      [speedup2 - 0.01, span2, speedup2],
      [speedup2 + 0.01, span3, speedup3],
    ] as const) {
      const result = await assemble(BASE, { modulesDir: TRAINED, target, ...AT, seeds: 1, timingRuns: 1 });
      assertValid(result.model, 'assemble');
      expect(result.chosen.candidates.map((c) => [c.start, c.end, c.file])).toEqual([[expected.start, expected.end, expected.source]]);
      expect(result.macsBefore).toBe(before);
      expect(result.macsMeasured).toBe(macsOfModel(result.model));
      expect(result.chosen.macsAfter).toBe(result.macsMeasured);
      expect(result.chosen.speedup).toBeCloseTo(speedup, 10);
      // one paired round: a median of one ratio, and no spread to trust it by
      expect(result.timing).toMatchObject({ runs: 1, unreliable: '1 round gives no spread' });
      expect(result.timing!.speedupIqr).toEqual([result.timing!.speedup, result.timing!.speedup]);
      expect(result.chosen.cosine).toBeCloseTo(await cosineAgainstBase(result.model, 1), 6);
    }
    // where the start layer comes from: metadata for one, the file name for the other
    const result = await assemble(BASE, { modulesDir: TRAINED, target: 1.01, ...AT, seeds: 1, timingRuns: 0 });
    expect(Object.fromEntries(result.candidates.map((c) => [path.basename(c.file), c.startFrom]))).toEqual({
      'layer_span2_L1-2.onnx': 'metadata',
      'layer_span3_L1-3.onnx': 'file name',
    });
  });

  it('says when the target cannot be reached, with the best reachable speed-up', async () => {
    await expect(assemble(BASE, { modulesDir: TRAINED, target: 5, ...AT, timingRuns: 0 })).rejects.toThrow(
      `target speed-up 5x cannot be reached with the 2 modules in ${TRAINED}: the best reachable MACs speed-up at batch 1, seq 16 is ${speedup3.toFixed(3)}x (layers 1-3 <- layer_span3_L1-3.onnx)`,
    );
  });

  it('breaks a tie on the number of layers by the output cosine', async () => {
    // three modules for two layers each with the same MACs: the trained one, and layer 1 or layer 2 of the
    // model itself standing for layers 1-2 (LayerDrop-like); which is closest is measured, not assumed
    const dir = path.join(TMP, 'tied');
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(span2.source, path.join(dir, 'trained_L1-2.onnx'));
    for (const layer of [1, 2]) {
      const { module } = extractModule(loadModel(BASE), layer, layer);
      module.setMetadata('vcompile.span', '2');
      module.setMetadata('vcompile.start', '1');
      saveModel(module, path.join(dir, `layer${layer}_only.onnx`));
    }
    const result = await assemble(BASE, { modulesDir: dir, target: speedup2 - 0.01, ...AT, seeds: 2, timingRuns: 0 });
    expect(result.tied).toHaveLength(3);
    const measured = await Promise.all(
      result.tied.map((t) => cosineAgainstBase(compiled(t.candidates.map((c) => ({ start: c.start, end: c.end, source: c.file }))), 2)),
    );
    result.tied.forEach((t, i) => expect(t.cosine).toBeCloseTo(measured[i], 6));
    const best = measured.indexOf(Math.max(...measured));
    expect(result.chosen.candidates[0].file).toBe(result.tied[best].candidates[0].file);
    expect(new Set(measured).size).toBe(3);
  });
});
