// The inputs a check generates when the user brings no data. They must exercise the transformer, not just
// the input: every symbolic length is chosen so that the sequence inside the transformer (as the analysis
// sees it, e.g. width/8 for an OCR model) has at least MIN_INNER positions and is not a multiple of any
// compression ratio in play (so the padding of partial groups is exercised), within what the model's
// position tables allow. Batch 3 has padded rows (see src/runtime/feeds.ts).
import { analyzeTransformer } from '../analysis/index.js';
import { bindDims, type DimBinding, describeInputs, type InputSpec } from '../analysis/inputs.js';
import { sequenceLimit } from '../analysis/limits.js';
import type { SymDim } from '../analysis/symbolic.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';

export const MIN_INNER = 32;
export const DEFAULT_BATCHES = [1, 3] as const;
/** Ratios assumed when the rewritten model does not say which it uses. */
const DEFAULT_RATIOS = [2, 3, 4];

export interface Grid {
  batches: number[];
  seqs: number[];
  /** why the lengths are what they are, for the report */
  note: string;
}

/** The ratios a compiled model says it uses (`vcompile.plugins`, `vcompile.switchable`). */
export function ratiosInPlay(model: Model): number[] {
  const ratios = new Set<number>();
  const plugins = model.getMetadata('vcompile.plugins');
  if (plugins) for (const p of JSON.parse(plugins) as { ratio: number }[]) ratios.add(p.ratio);
  const switchable = model.getMetadata('vcompile.switchable');
  if (switchable) for (const r of (JSON.parse(switchable) as { ratios: number[] }).ratios) ratios.add(r);
  ratios.delete(1);
  return [...ratios].sort((a, b) => a - b);
}

/** The default grid for checking `rewritten` against `original` (see the header). */
export function defaultGrid(original: Model, rewritten: Model | undefined, dims: Readonly<Record<string, number>> = {}): Grid {
  const specs = describeInputs(original);
  const inPlay = rewritten ? ratiosInPlay(rewritten) : [];
  const ratios = inPlay.length ? inPlay : DEFAULT_RATIOS;
  const inner = innerLengthOf(original, specs, dims);
  const limit = sequenceLimit(original, { dims })?.max;
  const valid = (n: number | undefined) => n !== undefined && ratios.every((k) => n % k !== 0);
  const ceiling = limit ?? 4096;
  if (inner(1) === inner(ceiling)) {
    // the user bound the lengths (--dim): the grid's seq changes nothing
    return {
      batches: [...DEFAULT_BATCHES],
      seqs: [1],
      note: `lengths bound by dims (${inner(1) ?? '?'} positions inside the transformer)`,
    };
  }
  for (let seq = 1; seq <= ceiling; seq++) {
    const n = inner(seq);
    if (n !== undefined && n >= MIN_INNER && valid(n)) {
      return { batches: [...DEFAULT_BATCHES], seqs: [seq], note: describe(seq, n, ratios, inPlay.length > 0) };
    }
  }
  // the position table is too short for MIN_INNER positions: the longest valid length it allows
  for (let seq = ceiling; seq >= 1; seq--) {
    const n = inner(seq);
    if (valid(n)) {
      return {
        batches: [...DEFAULT_BATCHES],
        seqs: [seq],
        note: `${describe(seq, n!, ratios, inPlay.length > 0)}; fewer than ${MIN_INNER}: the model runs at most ${ceiling} (its position table)`,
      };
    }
  }
  throw new VcompileError(
    msg`cannot choose input lengths for the check: give them with ${option('seqs', undefined, 'seqs')} or ${option('dims', undefined, 'dims')}`,
  );
}

function describe(seq: number, inner: number, ratios: number[], fromModel: boolean): string {
  return `seq ${seq}: ${inner} positions inside the transformer, not a multiple of ${fromModel ? 'the ratios in play' : 'any of'} ${ratios.join(', ')}`;
}

/** The transformer's sequence length at an input length (the input length itself when there is no transformer). */
function innerLengthOf(model: Model, specs: InputSpec[], dims: Readonly<Record<string, number>>): (seq: number) => number | undefined {
  const analysis = analyzeTransformer(model);
  const first = analysis.error ? undefined : analysis.layers[0];
  const length: SymDim = first ? analysis.context.shapes.dim(first.input, 1) : undefined;
  return (seq) => {
    const binding: DimBinding = { batch: 1, seq, dims };
    if (!length) return seq;
    return length.evaluate(bindDims(specs, binding));
  };
}

/**
 * Refuses lengths beyond what the model's position tables allow, naming the table, the limit and the option
 * that set the length (`seqs`, whose command also binds dims by name, or the assembler's `speedupSeq`).
 */
export function checkLengths(
  model: Model,
  seqs: readonly number[],
  dims: Readonly<Record<string, number>> = {},
  lengthOption: 'seqs' | 'speedupSeq' = 'seqs',
): void {
  const limit = sequenceLimit(model, { dims });
  if (!limit) return;
  const long = seqs.find((s) => s > limit.max);
  if (long === undefined) return;
  const bind = lengthOption === 'seqs' ? msg`, or bind the length with ${option('dims', 'NAME=VALUE', 'dims')}` : [];
  throw new VcompileError(
    msg`seq ${long} is beyond what the model runs: ${limit.table} allows at most ${limit.max} positions (use ${option(lengthOption, limit.max)} or less${bind})`,
  );
}
