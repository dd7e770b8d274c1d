// Choosing where modules go to reach a MACs speed-up: each option replaces a fixed run of layers and
// saves a known number of MACs (the layers' MACs minus the module's). A plan is a set of options whose
// spans do not overlap; it reaches a target R when total / (total - saved) >= R. Wanted: the plans that
// reach R with the fewest original layers replaced (all of them, for the caller to break the tie).
//   f[i][k]: most MACs saved by options inside layers [0, i) replacing k layers in all (dynamic programming)
//   g[i][k]: the same inside layers [i, n): bounds the depth-first enumeration of the tied plans.

export interface Option {
  /** index of the option in the caller's list */
  id: number;
  start: number;
  end: number;
  /** MACs saved: the replaced layers' MACs minus the module's (may be negative) */
  saving: number;
}

export interface Search {
  /** original layers replaced by each plan */
  layers: number;
  /** the plans reaching the target with that many layers, options in layer order */
  plans: Option[][];
  /** more plans tie than `maxPlans`: the list stops there */
  truncated: boolean;
}

/** Relative slack when comparing speed-ups, so that a plan exactly at the target reaches it. */
const SLACK = 1e-12;

export function speedup(total: number, saved: number): number {
  const remaining = total - saved;
  return remaining > 0 ? total / remaining : Infinity;
}

export function reaches(total: number, saved: number, target: number): boolean {
  return speedup(total, saved) >= target * (1 - SLACK);
}

const length = (o: Option) => o.end - o.start + 1;

/** Layers `[0, layerCount)`; options outside are ignored by the tables (callers check ranges). */
function tables(options: readonly Option[], layerCount: number): { prefix: number[][]; suffix: number[][] } {
  const n = layerCount;
  const empty = () => Array.from({ length: n + 1 }, () => new Array<number>(n + 1).fill(-Infinity));
  const prefix = empty();
  const suffix = empty();
  prefix[0][0] = 0;
  suffix[n][0] = 0;
  for (let i = 1; i <= n; i++) {
    prefix[i] = [...prefix[i - 1]];
    for (const o of options) {
      if (o.end !== i - 1) continue;
      for (let k = length(o); k <= n; k++) prefix[i][k] = Math.max(prefix[i][k], prefix[o.start][k - length(o)] + o.saving);
    }
  }
  for (let i = n - 1; i >= 0; i--) {
    suffix[i] = [...suffix[i + 1]];
    for (const o of options) {
      if (o.start !== i || o.end >= n) continue;
      for (let k = length(o); k <= n; k++) suffix[i][k] = Math.max(suffix[i][k], suffix[o.end + 1][k - length(o)] + o.saving);
    }
  }
  return { prefix, suffix };
}

/** The plans reaching `target` with the fewest layers replaced, or undefined when none reaches it. */
export function fewestLayers(
  options: readonly Option[],
  layerCount: number,
  total: number,
  target: number,
  maxPlans = 32,
): Search | undefined {
  const usable = options.filter((o) => o.start >= 0 && o.end < layerCount && o.start <= o.end);
  const { prefix, suffix } = tables(usable, layerCount);
  const best = prefix[layerCount].findIndex((saved) => saved > -Infinity && reaches(total, saved, target));
  if (best < 0) return undefined;
  const sorted = [...usable].sort((a, b) => a.start - b.start || a.end - b.end || a.id - b.id);
  const plans: Option[][] = [];
  let truncated = false;
  const chosen: Option[] = [];
  const visit = (from: number, used: number, saved: number) => {
    if (truncated) return;
    if (used === best) {
      if (reaches(total, saved, target)) {
        if (plans.length === maxPlans) truncated = true;
        else plans.push([...chosen]);
      }
      return;
    }
    for (const o of sorted) {
      if (o.start < from || used + length(o) > best) continue;
      const rest = suffix[o.end + 1][best - used - length(o)];
      if (!(rest > -Infinity) || !reaches(total, saved + o.saving + rest, target)) continue;
      chosen.push(o);
      visit(o.end + 1, used + length(o), saved + o.saving);
      chosen.pop();
    }
  };
  visit(0, 0, 0);
  return { layers: best, plans, truncated };
}

/** The plan saving the most MACs (the best speed-up the options can give), fewest layers on a tie. */
export function mostSaved(options: readonly Option[], layerCount: number): { saved: number; plan: Option[] } {
  const usable = options.filter((o) => o.start >= 0 && o.end < layerCount && o.start <= o.end);
  // best[i]: most saved inside [0, i), with the plan and its layer count
  const best: { saved: number; layers: number; plan: Option[] }[] = [{ saved: 0, layers: 0, plan: [] }];
  for (let i = 1; i <= layerCount; i++) {
    let top = best[i - 1];
    for (const o of usable) {
      if (o.end !== i - 1) continue;
      const before = best[o.start];
      const candidate = { saved: before.saved + o.saving, layers: before.layers + length(o), plan: [...before.plan, o] };
      if (candidate.saved > top.saved || (candidate.saved === top.saved && candidate.layers < top.layers)) top = candidate;
    }
    best.push(top);
  }
  const last = best[layerCount];
  return { saved: last.saved, plan: last.plan };
}
