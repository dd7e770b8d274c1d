// Paired timing: several models timed in rounds, each round running every model once, in an order that
// rotates from round to round, so that load that comes and goes on a shared machine, and whatever the
// previous call left in the caches, hit every model alike. A model's speed-up is the median over rounds of
// the first model's time over its own time *in the same round* (not a ratio of two medians of unpaired
// samples), given with its interquartile range. Every call's process CPU time (user + system, every
// thread of the process, so ONNX Runtime's intra-op threads too) is kept beside its wall time: on a
// machine whose cores are shared it moves less than wall time. Optionally the first model runs a second
// time in every round as a control (on a session of its own: two sessions of one model can differ by
// 20% and more on a loaded machine, where one session timed twice would not): timed against itself it
// should give 1.00x, and how far it strays is the noise no reported difference can be trusted below.

/** Where the time comes from; a fake one in tests. */
export interface Clock {
  /** monotonic wall time, ms */
  wallMs(): number;
  /** CPU time (user + system) of the whole process so far, ms */
  cpuMs(): number;
}

export const processClock: Clock = {
  wallMs: () => performance.now(),
  cpuMs: () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  },
};

export interface PairedOptions {
  /** untimed calls of every entry before the first round, in the first round's order */
  warmup: number;
  /** timed rounds: every entry runs once per round */
  rounds: number;
  /** one more entry in every round, the control: `call(count)` runs the first model again */
  control?: boolean;
  clock?: Clock;
  /** called after every call, warm-up included */
  onCall?: () => void;
}

/** A median with the interquartile range around it. */
export interface Spread {
  median: number;
  /** [first quartile, third quartile] (linear interpolation between order statistics) */
  iqr: [number, number];
}

export interface EntryTiming {
  /** ms per round, in round order */
  wallMs: number[];
  cpuMs: number[];
  /** median over rounds of entry 0's wall time over this entry's, in the same round */
  speedup: Spread;
  /** the same with CPU times */
  cpuSpeedup: Spread;
}

export interface PairedTiming {
  entries: EntryTiming[];
  /** entry 0 timed a second time each round, against itself; null without `control` */
  control: EntryTiming | null;
  /** per round, the order the entries ran in; the control is index `entries.length` */
  orders: number[][];
}

/**
 * Time `count` entries in paired rounds; `call(i)` runs entry i once, `call(count)` the control. Round r
 * runs the entries (control included) in the order `rotation(entries, r)`; warm-up calls the control too.
 */
export async function timePaired(count: number, call: (entry: number) => Promise<void>, options: PairedOptions): Promise<PairedTiming> {
  if (count < 1) throw new Error('internal: timePaired needs at least one entry');
  const clock = options.clock ?? processClock;
  const slots = count + (options.control ? 1 : 0);
  for (let w = 0; w < options.warmup; w++) {
    for (let slot = 0; slot < slots; slot++) {
      await call(slot);
      options.onCall?.();
    }
  }
  const wall = Array.from({ length: slots }, () => [] as number[]);
  const cpu = Array.from({ length: slots }, () => [] as number[]);
  const orders: number[][] = [];
  for (let round = 0; round < options.rounds; round++) {
    const order = rotation(slots, round);
    orders.push(order);
    for (const slot of order) {
      const cpuStart = clock.cpuMs();
      const start = clock.wallMs();
      await call(slot);
      const end = clock.wallMs();
      wall[slot].push(end - start);
      cpu[slot].push(clock.cpuMs() - cpuStart);
      options.onCall?.();
    }
  }
  const timing = (slot: number): EntryTiming => ({
    wallMs: wall[slot],
    cpuMs: cpu[slot],
    speedup: spread(pairedRatios(wall[0], wall[slot])),
    cpuSpeedup: spread(pairedRatios(cpu[0], cpu[slot])),
  });
  return {
    entries: Array.from({ length: count }, (_, slot) => timing(slot)),
    control: options.control ? timing(count) : null,
    orders,
  };
}

/**
 * The order of round `round` over `n` entries: a rotation of a Williams sequence (0, 1, n-1, 2, n-2, ...),
 * mirrored every other cycle when n is odd. Every entry takes every position once per cycle, as with a
 * plain rotation, and, unlike a plain rotation (where entry i always runs right after entry i-1), every
 * entry also runs right after every other entry equally often, so what a call leaves behind (caches,
 * clock frequency) does not favour one model.
 */
export function rotation(n: number, round: number): number[] {
  const base: number[] = [];
  for (let lo = 0, hi = n - 1, i = 0; i < n; i++) base.push(i % 2 === 0 ? lo++ : hi--);
  // base: 0, n-1, 1, n-2, ...; the Williams sequence 0, 1, n-1, 2, n-2, ... is the same shape shifted
  const williams = base.map((b) => (n - b) % n);
  const cycle = Math.floor(round / n);
  const shifted = williams.map((w) => (w + round) % n);
  return n % 2 === 1 && cycle % 2 === 1 ? shifted.reverse() : shifted;
}

/** base[r] / other[r] for every round r. */
export function pairedRatios(base: readonly number[], other: readonly number[]): number[] {
  if (base.length !== other.length) throw new Error('internal: paired samples of different lengths');
  return base.map((b, r) => b / other[r]);
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** The q-quantile with linear interpolation between order statistics (R's type 7, NumPy's default). */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const at = (s.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return s[lo] + (s[hi] - s[lo]) * (at - lo);
}

/** Nearest-rank percentile: the smallest sample with at least `q` of the samples at or below it. */
export function percentile(values: readonly number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

export function spread(values: readonly number[]): Spread {
  return { median: median(values), iqr: [quantile(values, 0.25), quantile(values, 0.75)] };
}

/**
 * A difference from 1.00x smaller than this is not a difference worth reporting on a shared machine; a
 * control further than this from 1.00x says the rounds cannot resolve it.
 */
export const NOISE_TOLERANCE = 0.03;

/** `1.05x (IQR 0.98-1.10)` */
export function formatSpread(s: Spread, digits = 2): string {
  return `${s.median.toFixed(digits)}x (IQR ${s.iqr[0].toFixed(digits)}-${s.iqr[1].toFixed(digits)})`;
}

/**
 * Why a control (a model timed against itself) says the machine was too noisy, or undefined: its median
 * is more than NOISE_TOLERANCE from 1, or its IQR reaches further than twice that.
 */
export function controlFinding(control: Spread): string | undefined {
  const { median: m, iqr } = control;
  if (Math.abs(m - 1) > NOISE_TOLERANCE) return `off by ${percent(m - 1)}`;
  const reach = Math.max(1 - iqr[0], iqr[1] - 1);
  if (reach > 2 * NOISE_TOLERANCE) return `its rounds scatter by up to ${percent(reach)}`;
  return undefined;
}

/**
 * Why a model's speed-up is not resolved, or undefined: it reports a difference of at least
 * NOISE_TOLERANCE, but its IQR contains 1, so at least a quarter of the rounds saw no difference or the
 * opposite one.
 */
export function spreadFinding(speedup: Spread): string | undefined {
  const { median: m, iqr } = speedup;
  if (Math.abs(m - 1) < NOISE_TOLERANCE) return undefined;
  if (iqr[0] <= 1 && iqr[1] >= 1) return 'its IQR contains 1.00x';
  return undefined;
}

/**
 * Whether a quick measurement can be read at all (the assembler's timing): not when its IQR contains 1
 * (the sign of the difference is not settled), nor when the IQR is wider than a tenth of the median.
 */
export function unreliableBecause(speedup: Spread, rounds: number): string | undefined {
  if (rounds < 3) return rounds === 1 ? '1 round gives no spread' : `${rounds} rounds give no spread`;
  const { median: m, iqr } = speedup;
  if (iqr[0] <= 1 && iqr[1] >= 1) return 'the IQR contains 1.00x';
  if (iqr[1] - iqr[0] > 0.1 * m) return 'the IQR is wider than 10% of the median';
  return undefined;
}

function percent(x: number): string {
  return `${(Math.abs(x) * 100).toFixed(1)}%`;
}
