// How far a rewritten model's output is from the original's, accumulated batch by batch so that no output
// is held beyond the batch it came from. An output is read as positions x a last axis (a [batch, seq, C]
// output has batch x seq positions of C values; an output of rank 0 or 1 is one position); only real
// positions count (padding excluded by the caller's mask). With a = rewritten, b = original:
//   elements   max |a-b|, mean |a-b|, relative ||a-b|| / ||b||, cosine a.b / (||a|| ||b||)
//   positions  cosine of each position's vectors: mean and 5th percentile
//   classes    (outputs whose last axis scores classes) top-1 agreement: argmax equal; top-5 agreement:
//              the original's argmax among the rewritten model's 5 best; KL(original || rewritten) of the
//              softmax of each position (of the values themselves when they are already probabilities)
//   task       (with labels: class ids, -100 = ignore) accuracy (argmax == label) and cross-entropy
//              -log p(label), for both models, over labelled positions
// Positions where both sides are NaN, or the same infinity, count as equal; a non-finite value on one
// side only is counted (`nonFinite`) and leaves the statistics out for that element.

export interface ElementStats {
  /** elements compared (after masking) */
  compared: number;
  /** elements left out because the mask marks them as padding */
  excluded: number;
  maxAbs: number;
  meanAbs: number;
  relative: number;
  cosine: number;
  /** elements where exactly one side is NaN or infinite (or they are different infinities) */
  nonFinite: number;
}

export interface ClassStats {
  top1Agreement: number;
  top5Agreement: number;
  /** mean KL(original || rewritten) over real positions, in nats */
  kl: number;
}

export interface TaskStats {
  /** labelled positions */
  labelled: number;
  accuracy: { original: number; rewritten: number };
  loss: { original: number; rewritten: number };
}

/** Smallest probability taken in logs (a class the rewritten model gives probability 0). */
const TINY = 1e-30;

/** Element statistics, accumulated over batches. */
export class ElementAccumulator {
  private compared = 0;
  private excluded = 0;
  private nonFinite = 0;
  private maxAbs = 0;
  private sumAbs = 0;
  private diff2 = 0;
  private a2 = 0;
  private b2 = 0;
  private ab = 0;

  /** Add elements of b (reference) and a (candidate); `keep[i] === 0` leaves element i out. */
  add(b: ArrayLike<number>, a: ArrayLike<number>, keep?: Uint8Array): void {
    for (let i = 0; i < b.length; i++) {
      if (keep && !keep[i]) {
        this.excluded++;
        continue;
      }
      this.compared++;
      const x = a[i];
      const y = b[i];
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        if (!(Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y)))) this.nonFinite++;
        continue;
      }
      const d = Math.abs(x - y);
      if (d > this.maxAbs) this.maxAbs = d;
      this.sumAbs += d;
      this.diff2 += d * d;
      this.a2 += x * x;
      this.b2 += y * y;
      this.ab += x * y;
    }
  }

  /** Fold in another accumulator's elements (e.g. one batch's, already added there). */
  merge(other: ElementAccumulator): void {
    this.compared += other.compared;
    this.excluded += other.excluded;
    this.nonFinite += other.nonFinite;
    if (other.maxAbs > this.maxAbs) this.maxAbs = other.maxAbs;
    this.sumAbs += other.sumAbs;
    this.diff2 += other.diff2;
    this.a2 += other.a2;
    this.b2 += other.b2;
    this.ab += other.ab;
  }

  stats(): ElementStats {
    return {
      compared: this.compared,
      excluded: this.excluded,
      maxAbs: this.maxAbs,
      meanAbs: this.compared ? this.sumAbs / this.compared : 0,
      relative: this.b2 > 0 ? Math.sqrt(this.diff2 / this.b2) : this.diff2 > 0 ? Infinity : 0,
      cosine: cosineOf(this.ab, this.a2, this.b2),
      nonFinite: this.nonFinite,
    };
  }
}

function cosineOf(ab: number, a2: number, b2: number): number {
  return a2 > 0 && b2 > 0 ? ab / Math.sqrt(a2 * b2) : a2 === 0 && b2 === 0 ? 1 : 0;
}

/** The statistics of the header comment over the kept elements of b (reference) and a (candidate). */
export function compareValues(b: ArrayLike<number>, a: ArrayLike<number>, keep?: Uint8Array): ElementStats {
  const acc = new ElementAccumulator();
  acc.add(b, a, keep);
  return acc.stats();
}

/** What to compute on an output beyond element statistics. */
export interface OutputKind {
  /** its last axis scores classes */
  classes: boolean;
  /** its values are probabilities already (rows sum to 1), not logits */
  probabilities?: boolean;
}

/**
 * Per-position statistics (cosine per position; class and task metrics when the output scores classes),
 * accumulated over batches. Positions are rows of `width` values.
 */
export class PositionAccumulator {
  private readonly cosines: number[] = [];
  private agree1 = 0;
  private agree5 = 0;
  private klSum = 0;
  private klPositions = 0;
  private labelled = 0;
  private correct = { original: 0, rewritten: 0 };
  private nll = { original: 0, rewritten: 0 };
  private scratch = new Float64Array(0);

  constructor(readonly kind: OutputKind) {}

  /**
   * Add a batch: `b` (original) and `a` (rewritten) as rows of `width`; `real[p]` = 0 leaves row p out;
   * `labels[p]` is row p's class id (-100 = none).
   */
  add(b: ArrayLike<number>, a: ArrayLike<number>, width: number, real?: Uint8Array, labels?: ArrayLike<number>): void {
    const rows = width > 0 ? b.length / width : 0;
    if (this.scratch.length < width) this.scratch = new Float64Array(width);
    for (let p = 0; p < rows; p++) {
      if (real && !real[p]) continue;
      const off = p * width;
      this.cosines.push(rowCosine(b, a, off, width));
      if (!this.kind.classes) continue;
      this.addClasses(b, a, off, width, labels ? labels[p] : -100);
    }
  }

  private addClasses(b: ArrayLike<number>, a: ArrayLike<number>, off: number, width: number, label: number): void {
    const top1b = argmax(b, off, width);
    const top5a = topK(a, off, width, 5);
    if (top5a[0] === top1b) this.agree1++;
    if (top5a.includes(top1b)) this.agree5++;
    const kl = this.kind.probabilities ? klProbabilities(b, a, off, width) : klLogits(b, a, off, width, this.scratch);
    if (Number.isFinite(kl)) {
      this.klSum += kl;
      this.klPositions++;
    }
    if (label < 0) return;
    this.labelled++;
    if (top1b === label) this.correct.original++;
    if (top5a[0] === label) this.correct.rewritten++;
    this.nll.original += this.negativeLogLikelihood(b, off, width, label);
    this.nll.rewritten += this.negativeLogLikelihood(a, off, width, label);
  }

  private negativeLogLikelihood(x: ArrayLike<number>, off: number, width: number, label: number): number {
    if (this.kind.probabilities) return -Math.log(Math.max(x[off + label], TINY));
    return logSumExp(x, off, width) - x[off + label];
  }

  get positions(): number {
    return this.cosines.length;
  }

  cosinePerPosition(): { mean: number; p5: number } {
    if (this.cosines.length === 0) return { mean: 1, p5: 1 };
    const sorted = Float64Array.from(this.cosines).sort();
    const mean = sorted.reduce((s, x) => s + x, 0) / sorted.length;
    return { mean, p5: percentile(sorted, 0.05) };
  }

  classStats(): ClassStats | null {
    if (!this.kind.classes) return null;
    const n = this.cosines.length;
    return {
      top1Agreement: n ? this.agree1 / n : 1,
      top5Agreement: n ? this.agree5 / n : 1,
      kl: this.klPositions ? this.klSum / this.klPositions : 0,
    };
  }

  taskStats(): TaskStats | null {
    if (!this.kind.classes || this.labelled === 0) return null;
    const n = this.labelled;
    return {
      labelled: n,
      accuracy: { original: this.correct.original / n, rewritten: this.correct.rewritten / n },
      loss: { original: this.nll.original / n, rewritten: this.nll.rewritten / n },
    };
  }
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

function rowCosine(b: ArrayLike<number>, a: ArrayLike<number>, off: number, width: number): number {
  let ab = 0;
  let a2 = 0;
  let b2 = 0;
  for (let i = off; i < off + width; i++) {
    const x = a[i];
    const y = b[i];
    ab += x * y;
    a2 += x * x;
    b2 += y * y;
  }
  return cosineOf(ab, a2, b2);
}

export function argmax(x: ArrayLike<number>, off: number, width: number): number {
  let best = 0;
  for (let i = 1; i < width; i++) if (x[off + i] > x[off + best]) best = i;
  return best;
}

/** Indices of the k largest values, largest first (ties: lower index first). */
export function topK(x: ArrayLike<number>, off: number, width: number, k: number): number[] {
  const top: number[] = [];
  for (let i = 0; i < width; i++) {
    const v = x[off + i];
    if (top.length === k && v <= x[off + top[k - 1]]) continue;
    let at = top.length < k ? top.length : k - 1;
    while (at > 0 && v > x[off + top[at - 1]]) at--;
    top.splice(at, 0, i);
    if (top.length > k) top.pop();
  }
  return top;
}

export function logSumExp(x: ArrayLike<number>, off: number, width: number): number {
  let max = -Infinity;
  for (let i = off; i < off + width; i++) if (x[i] > max) max = x[i];
  if (!Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = off; i < off + width; i++) sum += Math.exp(x[i] - max);
  return max + Math.log(sum);
}

/** KL(softmax(b) || softmax(a)) of one row; `scratch` holds at least `width` numbers. */
function klLogits(b: ArrayLike<number>, a: ArrayLike<number>, off: number, width: number, scratch: Float64Array): number {
  let maxB = -Infinity;
  let maxA = -Infinity;
  for (let i = off; i < off + width; i++) {
    if (b[i] > maxB) maxB = b[i];
    if (a[i] > maxA) maxA = a[i];
  }
  let sumB = 0;
  let sumA = 0;
  for (let i = 0; i < width; i++) {
    const e = Math.exp(b[off + i] - maxB);
    scratch[i] = e;
    sumB += e;
    sumA += Math.exp(a[off + i] - maxA);
  }
  const lseB = maxB + Math.log(sumB);
  const lseA = maxA + Math.log(sumA);
  let kl = 0;
  for (let i = 0; i < width; i++) {
    const p = scratch[i] / sumB;
    if (p > 0) kl += p * (b[off + i] - lseB - (a[off + i] - lseA));
  }
  return Math.max(0, kl);
}

/** KL(b || a) of one row of probabilities. */
function klProbabilities(b: ArrayLike<number>, a: ArrayLike<number>, off: number, width: number): number {
  let kl = 0;
  for (let i = off; i < off + width; i++) {
    const p = b[i];
    if (p > 0) kl += p * (Math.log(p) - Math.log(Math.max(a[i], TINY)));
  }
  return Math.max(0, kl);
}

/** Whether every row of `x` (rows of `width`) is a probability distribution (values in [0, 1], sum 1). */
export function looksLikeProbabilities(x: ArrayLike<number>, width: number): boolean {
  if (width < 2 || x.length === 0) return false;
  for (let off = 0; off < x.length; off += width) {
    let sum = 0;
    for (let i = off; i < off + width; i++) {
      const v = x[i];
      if (!(v >= -1e-6 && v <= 1 + 1e-6)) return false;
      sum += v;
    }
    if (Math.abs(sum - 1) > 1e-3) return false;
  }
  return true;
}
