// The paired-timing primitive (src/bench/paired.ts) on a fake clock and fake calls: the order of every
// round, the per-round ratios and their median and quartiles, CPU time beside wall time, the control,
// and the findings that turn into the noise warning.
import { describe, expect, it } from 'vitest';
import {
  type Clock,
  controlFinding,
  median,
  pairedRatios,
  quantile,
  rotation,
  spread,
  spreadFinding,
  timePaired,
  unreliableBecause,
} from '../src/bench/paired.js';

/** A clock that stands still but for what the fake calls spend. */
function fakeClock(): Clock & { spend(wallMs: number, cpuMs: number): void } {
  let wall = 0;
  let cpu = 0;
  return {
    wallMs: () => wall,
    cpuMs: () => cpu,
    spend(w, c) {
      wall += w;
      cpu += c;
    },
  };
}

describe('paired rounds', () => {
  it('rotate the order every round, every entry after every other equally often, the control included', async () => {
    // Williams sequences: each row a rotation of the first; every ordered pair adjacent once per cycle
    expect([0, 1, 2, 3, 4].map((r) => rotation(4, r))).toEqual([
      [0, 1, 3, 2],
      [1, 2, 0, 3],
      [2, 3, 1, 0],
      [3, 0, 2, 1],
      [0, 1, 3, 2],
    ]);
    // an odd count mirrors every other cycle
    expect([0, 1, 2, 3, 4, 5].map((r) => rotation(3, r))).toEqual([
      [0, 1, 2],
      [1, 2, 0],
      [2, 0, 1],
      [2, 1, 0],
      [0, 2, 1],
      [1, 0, 2],
    ]);
    for (const n of [2, 3, 4, 5, 6, 7]) {
      const rows = Array.from({ length: n % 2 ? 2 * n : n }, (_, r) => rotation(n, r));
      const after = new Map<string, number>();
      for (const row of rows)
        for (let i = 1; i < n; i++) after.set(`${row[i - 1]}>${row[i]}`, (after.get(`${row[i - 1]}>${row[i]}`) ?? 0) + 1);
      expect({ n, pairs: after.size, counts: new Set(after.values()) }).toEqual({
        n,
        pairs: n * (n - 1),
        counts: new Set([n % 2 ? 2 : 1]),
      });
      for (const row of rows) expect([...row].sort((a, b) => a - b)).toEqual([...Array(n).keys()]);
    }
    const calls: number[] = [];
    const timing = await timePaired(
      3,
      async (entry) => {
        calls.push(entry);
      },
      { warmup: 1, rounds: 4, control: true, clock: fakeClock() },
    );
    // the control is entry 3 (the caller runs the first model on a session of its own)
    expect(timing.orders).toEqual([0, 1, 2, 3].map((r) => rotation(4, r)));
    expect(calls).toEqual([0, 1, 2, 3, ...timing.orders.flat()]);
    expect(timing.entries.map((e) => e.wallMs.length)).toEqual([4, 4, 4]);
    expect(timing.control?.wallMs).toHaveLength(4);
  });

  it('a speed-up is the median of per-round ratios, with their quartiles; CPU time is kept beside wall time', async () => {
    // Load comes and goes: round 1 is slow for A only, round 3 slow for both. Wall per round:
    const wall = [
      [10, 40, 10, 30, 10], // A
      [8, 8, 8, 24, 10], // B
    ];
    const cpu = [
      [10, 12, 10, 11, 10],
      [5, 6, 5, 6, 5],
    ];
    const clock = fakeClock();
    const rounds = [0, 0];
    const timing = await timePaired(
      2,
      async (entry) => {
        const round = rounds[entry]++;
        clock.spend(wall[entry][round], cpu[entry][round]);
      },
      { warmup: 0, rounds: 5, clock },
    );
    const [a, b] = timing.entries;
    expect(a.wallMs).toEqual(wall[0]);
    expect(b.wallMs).toEqual(wall[1]);
    expect(b.cpuMs).toEqual(cpu[1]);
    // per-round A/B: 1.25, 5, 1.25, 1.25, 1 -> median 1.25, quartiles 1.25 and 1.25
    expect(pairedRatios(wall[0], wall[1])).toEqual([1.25, 5, 1.25, 1.25, 1]);
    expect(b.speedup).toEqual({ median: 1.25, iqr: [1.25, 1.25] });
    // the ratio of the two medians would say 10 / 8 = 1.25 here too, but not on A = [10, 10, 10, 30, 30], B = [8, 24, 24, 24, 8]
    expect(median(pairedRatios([10, 10, 10, 30, 30], [8, 24, 24, 24, 8]))).toBe(1.25);
    expect(median([10, 10, 10, 30, 30]) / median([8, 24, 24, 24, 8])).toBeCloseTo(0.4167, 4);
    // CPU: 2, 2, 2, 1.833.., 2
    expect(b.cpuSpeedup.median).toBe(2);
    expect(b.cpuSpeedup.iqr).toEqual([2, 2]);
    expect(a.speedup).toEqual({ median: 1, iqr: [1, 1] });
    expect(timing.control).toBeNull();
  });

  it('quartiles interpolate linearly between order statistics', () => {
    expect(quantile([4, 1, 3, 2], 0.25)).toBe(1.75);
    expect(quantile([4, 1, 3, 2], 0.75)).toBe(3.25);
    expect(quantile([7], 0.25)).toBe(7);
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(spread([0.9, 1.0, 1.1, 1.2, 1.3])).toEqual({ median: 1.1, iqr: [1.0, 1.2] });
  });
});

describe('noise findings', () => {
  it('a control off by more than 3%, or scattering by more than 6%, says the machine is too noisy', () => {
    expect(controlFinding({ median: 1.01, iqr: [0.98, 1.03] })).toBeUndefined();
    expect(controlFinding({ median: 0.868, iqr: [0.8, 0.95] })).toBe('off by 13.2%');
    expect(controlFinding({ median: 1.0, iqr: [0.9, 1.02] })).toBe('its rounds scatter by up to 10.0%');
  });

  it('a reported difference of 3% or more whose IQR contains 1.00x is not resolved', () => {
    expect(spreadFinding({ median: 1.195, iqr: [1.1, 1.3] })).toBeUndefined();
    expect(spreadFinding({ median: 1.02, iqr: [0.9, 1.1] })).toBeUndefined();
    expect(spreadFinding({ median: 1.05, iqr: [0.99, 1.1] })).toBe('its IQR contains 1.00x');
    expect(spreadFinding({ median: 0.9, iqr: [0.85, 1.0] })).toBe('its IQR contains 1.00x');
  });

  it("the assembler's quick timing is unreliable with fewer than 3 rounds, an IQR containing 1, or one wider than 10%", () => {
    expect(unreliableBecause({ median: 1.2, iqr: [1.18, 1.22] }, 5)).toBeUndefined();
    expect(unreliableBecause({ median: 1.2, iqr: [1.2, 1.2] }, 1)).toBe('1 round gives no spread');
    expect(unreliableBecause({ median: 1.072, iqr: [0.97, 1.15] }, 5)).toBe('the IQR contains 1.00x');
    expect(unreliableBecause({ median: 1.2, iqr: [1.05, 1.3] }, 5)).toBe('the IQR is wider than 10% of the median');
  });
});
