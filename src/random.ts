// A small seeded PRNG for reproducible model inputs. Math.random cannot be seeded, and feeds must be
// the same on every run so that a verification failure can be reproduced from the command line.

/** mulberry32: 32 bits of state, fast, and good enough for test inputs (not for cryptography). */
export class Rng {
  private state: number;
  private spareNormal: number | undefined;

  /** `stream` separates independent sequences under one seed (e.g. one per input name). */
  constructor(seed: number, stream = '') {
    this.state = (Math.trunc(seed) ^ hashString(stream)) >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, bound). */
  int(bound: number): number {
    return Math.floor(this.next() * bound);
  }

  /** Standard normal (Box-Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spareNormal !== undefined) {
      const spare = this.spareNormal;
      this.spareNormal = undefined;
      return spare;
    }
    const u = 1 - this.next(); // (0, 1]: log(0) would be -Infinity
    const v = this.next();
    const radius = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = radius * Math.sin(2 * Math.PI * v);
    return radius * Math.cos(2 * Math.PI * v);
  }
}

/** FNV-1a over UTF-16 code units: turns a stream name into 32 bits of seed. */
function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
