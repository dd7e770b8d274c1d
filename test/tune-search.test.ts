// The tune's pure parts: budgets as users write them, the frontier's dominance, the multiple-choice
// knapsack against brute force, and how configurations are named.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Fidelity, lossOf, meets, nonDominated, parseBudget } from '../src/decide/frontier.js';
import { bestWithin, describeConfiguration, estimateShares, knapsackFrontier, type LayerProfile, pickFastest } from '../src/decide/tune.js';

const fidelity = (f: Partial<Fidelity>): Fidelity => ({
  output: 'logits',
  samples: 10,
  positions: 100,
  top1Agreement: 1,
  kl: 0,
  accuracy: null,
  cosine: 1,
  ...f,
});

describe('budgets', () => {
  it('reads the three forms, a percentage for agreement, and refuses the rest in one line', () => {
    expect(parseBudget('accuracy-drop<=0.5')).toEqual({ metric: 'accuracy-drop', bound: 0.5 });
    expect(parseBudget(' top1-agreement >= 99% ')).toEqual({ metric: 'top1-agreement', bound: 0.99 });
    expect(parseBudget('kl<=2e-2')).toEqual({ metric: 'kl', bound: 0.02 });
    for (const bad of ['accuracy<=1', 'kl>=0.1', 'top1-agreement>=1.5', 'kl<=-1', 'accuracy-drop<=5%', 'kl'])
      expect(() => parseBudget(bad)).toThrow(/^budget '.*': /);
  });

  it('checks each metric in its own direction', () => {
    const f = fidelity({ top1Agreement: 0.98, kl: 0.03, accuracy: { original: 0.8, rewritten: 0.796 } });
    expect(lossOf(f, 'accuracy-drop')).toBeCloseTo(0.4, 10);
    expect(meets(f, parseBudget('accuracy-drop<=0.5'))).toBe(true);
    expect(meets(f, parseBudget('accuracy-drop<=0.3'))).toBe(false);
    expect(meets(f, parseBudget('top1-agreement>=0.98'))).toBe(true);
    expect(meets(f, parseBudget('top1-agreement>=0.99'))).toBe(false);
    expect(meets(f, parseBudget('kl<=0.02'))).toBe(false);
    expect(() => lossOf(fidelity({}), 'accuracy-drop')).toThrow(/labels/);
  });
});

describe('frontier', () => {
  it('keeps exactly the points no other point beats on both axes', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ speedup: fc.integer({ min: 1, max: 6 }), loss: fc.integer({ min: 0, max: 6 }) }), { maxLength: 12 }),
        (points) => {
          const kept = new Set(nonDominated(points));
          points.forEach((p, i) => {
            const beaten = points.some((q) => q.speedup >= p.speedup && q.loss <= p.loss && (q.speedup > p.speedup || q.loss < p.loss));
            expect(kept.has(i)).toBe(!beaten);
          });
        },
      ),
    );
  });
});

describe('knapsack', () => {
  const profile = (layer: number, scope: LayerProfile['scope'], ratio: number, loss: number, macsSaved: number) =>
    ({ layer, scope, ratio, loss, macsSaved }) as LayerProfile;

  it('finds the most MACs saved within a loss, as brute force does', () => {
    const option = fc.record({ loss: fc.integer({ min: 0, max: 20 }), saving: fc.integer({ min: 1, max: 50 }) });
    fc.assert(
      fc.property(
        fc.array(fc.array(option, { maxLength: 3 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 0, max: 40 }),
        (table, limit) => {
          const layers = table.map((_, i) => i);
          const scopes = ['ffn', 'attention', 'layer'] as const;
          const profiles = table.flatMap((options, layer) => options.map((o, j) => profile(layer, scopes[j], 2, o.loss, o.saving)));
          let best = 0;
          const walk = (layer: number, loss: number, saving: number) => {
            if (loss > limit) return;
            if (layer === table.length) {
              best = Math.max(best, saving);
              return;
            }
            walk(layer + 1, loss, saving);
            for (const o of table[layer]) walk(layer + 1, loss + o.loss, saving + o.saving);
          };
          walk(0, 0, 0);
          const choice = bestWithin(knapsackFrontier(layers, profiles), limit);
          expect(choice?.saving ?? 0).toBe(best);
          if (choice) {
            const chosen = Object.entries(choice.configuration);
            const loss = chosen.reduce((sum, [layer, c]) => sum + table[Number(layer)][scopes.indexOf(c.scope)].loss, 0);
            expect(loss).toBe(choice.loss);
            expect(choice.loss).toBeLessThanOrEqual(limit);
          }
        },
      ),
    );
  });
});

describe('configurations', () => {
  it('are named uniformly or by runs of layers', () => {
    const layers = [0, 1, 2, 3];
    const all = Object.fromEntries(layers.map((l) => [l, { scope: 'ffn' as const, ratio: 4 }]));
    expect(describeConfiguration(all, layers)).toBe('ffn k=4 on every layer');
    expect(describeConfiguration({}, layers)).toBe('no layer compressed');
    expect(
      describeConfiguration({ 0: { scope: 'ffn', ratio: 4 }, 1: { scope: 'ffn', ratio: 4 }, 3: { scope: 'layer', ratio: 2 } }, layers),
    ).toBe('L0-1 ffn k=4, L3 layer k=2');
  });
});

describe('estimated profiles', () => {
  it('share a loss in proportion to the weights, equally when none is positive', () => {
    expect(estimateShares([1, 3])).toEqual([0.25, 0.75]);
    expect(estimateShares([0, 0, 0, 0])).toEqual([0.25, 0.25, 0.25, 0.25]);
    // a failed fit (NaN) or a negative estimate is charged nothing
    expect(estimateShares([Number.NaN, -1, 2])).toEqual([0, 0, 1]);
  });
});

describe('the fastest candidate', () => {
  const point = (predictedSpeedup: number, measuredSpeedup: number | null, measuredIqr: [number, number] | null) => ({
    predictedSpeedup,
    measuredSpeedup,
    measuredIqr,
  });

  it('is the fastest measured when the timings tell it apart', () => {
    const a = point(1.2, 1.5, [1.45, 1.55]);
    const b = point(1.4, 1.3, [1.25, 1.35]);
    expect(pickFastest([b, a])).toBe(a);
  });

  it('is the one predicted fastest among those the timings cannot tell from the fastest measured', () => {
    const noisy = point(1.16, 1.75, [1.04, 2.03]);
    const overlapping = point(1.22, 1.39, [1.25, 1.97]);
    const apart = point(1.5, 1.0, [0.95, 1.02]);
    expect(pickFastest([noisy, overlapping, apart])).toBe(overlapping);
  });

  it('is the predicted fastest when nothing was timed', () => {
    const a = point(1.2, null, null);
    const b = point(1.4, null, null);
    expect(pickFastest([a, b])).toBe(b);
  });
});
