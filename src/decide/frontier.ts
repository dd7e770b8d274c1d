// Budgets and frontiers of a tune: how a fidelity budget is read and checked, which evaluated points are
// not dominated, and the chart of measured speed-up against fidelity.
//
// Every metric is turned into a loss (lower is better) so that one comparison serves all three: the
// accuracy drop in points, 1 - top-1 agreement, and KL.
import { niceTicks } from '../bench/chart.js';
import { VcompileError } from '../errors.js';

export type BudgetMetric = 'accuracy-drop' | 'top1-agreement' | 'kl';

export interface Budget {
  metric: BudgetMetric;
  /** accuracy-drop: points (percent) at most; top1-agreement: a fraction at least; kl: at most */
  bound: number;
}

/** How close the rewritten model stays to the original on a split of the data (one class-scoring output). */
export interface Fidelity {
  /** the output measured: the first one whose last axis scores classes */
  output: string;
  samples: number;
  positions: number;
  top1Agreement: number;
  kl: number;
  /** with labels: the task accuracy of both models (fractions) */
  accuracy: { original: number; rewritten: number } | null;
  /** mean cosine per position of that output */
  cosine: number;
}

const FORMS: Record<BudgetMetric, '<=' | '>='> = { 'accuracy-drop': '<=', 'top1-agreement': '>=', kl: '<=' };

/** 'accuracy-drop<=0.5' (points), 'top1-agreement>=0.99' (or 99%), 'kl<=0.02'. */
export function parseBudget(text: string): Budget {
  const match = /^\s*([a-z0-9-]+)\s*(<=|>=)\s*([0-9.eE+-]+)(%?)\s*$/.exec(text);
  const metric = match?.[1] as BudgetMetric | undefined;
  if (!match || !metric || !(metric in FORMS)) {
    throw new VcompileError(`budget '${text}': expected accuracy-drop<=POINTS, top1-agreement>=FRACTION or kl<=VALUE`);
  }
  if (match[2] !== FORMS[metric]) throw new VcompileError(`budget '${text}': ${metric} takes ${FORMS[metric]}`);
  let bound = Number(match[3]);
  if (match[4] === '%') {
    if (metric !== 'top1-agreement') throw new VcompileError(`budget '${text}': only top1-agreement takes a percentage`);
    bound /= 100;
  }
  if (!Number.isFinite(bound) || bound < 0 || (metric === 'top1-agreement' && bound > 1)) {
    const range = metric === 'top1-agreement' ? 'from 0 to 1 (or 0% to 100%)' : 'a number >= 0';
    throw new VcompileError(`budget '${text}': the bound must be ${range}`);
  }
  return { metric, bound };
}

export function describeBudget(b: Budget): string {
  return `${b.metric}${FORMS[b.metric]}${b.bound}`;
}

/** The budget's metric as a loss: the accuracy drop in points, 1 - agreement, or KL. */
export function lossOf(f: Fidelity, metric: BudgetMetric): number {
  if (metric === 'kl') return f.kl;
  if (metric === 'top1-agreement') return 1 - f.top1Agreement;
  if (!f.accuracy) throw new VcompileError('an accuracy-drop budget needs labels in the data');
  return (f.accuracy.original - f.accuracy.rewritten) * 100;
}

/** The budget as a bound on lossOf. */
export function lossBound(b: Budget): number {
  return b.metric === 'top1-agreement' ? 1 - b.bound : b.bound;
}

export function meets(f: Fidelity, b: Budget): boolean {
  return lossOf(f, b.metric) <= lossBound(b) + 1e-12;
}

/** The metric's value as users read it (agreement as a fraction, the rest as losses). */
export function metricValue(f: Fidelity, metric: BudgetMetric): number {
  return metric === 'top1-agreement' ? f.top1Agreement : lossOf(f, metric);
}

export function formatMetric(value: number, metric: BudgetMetric): string {
  if (metric === 'top1-agreement') return `${(value * 100).toFixed(2)}%`;
  if (metric === 'accuracy-drop') return `${value.toFixed(2)} pts`;
  return value.toPrecision(3);
}

/** Indices of the points no other point beats on both speed-up (higher) and loss (lower). */
export function nonDominated(points: readonly { speedup: number; loss: number }[]): number[] {
  const keep: number[] = [];
  points.forEach((p, i) => {
    const dominated = points.some(
      (q, j) => j !== i && q.speedup >= p.speedup && q.loss <= p.loss && (q.speedup > p.speedup || q.loss < p.loss),
    );
    if (!dominated) keep.push(i);
  });
  return keep;
}

export interface ChartPoint {
  label: string;
  speedup: number;
  /** the metric's value (see metricValue) */
  value: number;
  measured: boolean;
  frontier: boolean;
  chosen: boolean;
}

/** An SVG of speed-up (y) against the budget's metric (x), the budget as a dashed line, the frontier joined. */
export function frontierChart(points: readonly ChartPoint[], budget: Budget, title: string): string {
  const [w, h, left, right, top, bottom] = [640, 400, 64, 24, 40, 48];
  const values = [...points.map((p) => p.value), budget.bound];
  let [xMin, xMax] = [Math.min(...values), Math.max(...values)];
  if (budget.metric !== 'top1-agreement') xMin = Math.min(0, xMin);
  if (xMax - xMin < 1e-9) xMax = xMin + 1;
  const pad = (xMax - xMin) * 0.05;
  [xMin, xMax] = [xMin - pad, xMax + pad];
  const yTicks = niceTicks(Math.max(1, ...points.map((p) => p.speedup)) * 1.05);
  const yMax = yTicks[yTicks.length - 1];
  const x = (v: number) => left + ((v - xMin) / (xMax - xMin)) * (w - left - right);
  const y = (s: number) => h - bottom - (s / yMax) * (h - top - bottom);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">`,
    `<text x="${w / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(title)}</text>`,
    `<line x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}" stroke="#000"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}" stroke="#000"/>`,
  ];
  for (const t of yTicks) {
    out.push(`<text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${Number(t.toPrecision(3))}x</text>`);
    out.push(`<line x1="${left}" y1="${y(t)}" x2="${w - right}" y2="${y(t)}" stroke="#eee"/>`);
  }
  for (let i = 0; i <= 4; i++) {
    const v = xMin + ((xMax - xMin) * i) / 4;
    out.push(`<text x="${x(v)}" y="${h - bottom + 16}" text-anchor="middle">${escapeXml(formatMetric(v, budget.metric))}</text>`);
  }
  out.push(`<text x="${(left + w - right) / 2}" y="${h - 8}" text-anchor="middle">${budget.metric} (held-out validation)</text>`);
  out.push(
    `<text x="14" y="${(top + h - bottom) / 2}" text-anchor="middle" transform="rotate(-90 14 ${(top + h - bottom) / 2})">speed-up</text>`,
  );
  const bx = x(budget.bound);
  out.push(`<line x1="${bx}" y1="${top}" x2="${bx}" y2="${h - bottom}" stroke="#c00" stroke-dasharray="4 3"/>`);
  out.push(`<text x="${bx + 4}" y="${top + 12}" fill="#c00">budget ${escapeXml(describeBudget(budget))}</text>`);
  const frontier = points.filter((p) => p.frontier).sort((a, b) => a.speedup - b.speedup);
  if (frontier.length > 1) {
    const path = frontier.map((p) => `${x(p.value).toFixed(1)},${y(p.speedup).toFixed(1)}`).join(' ');
    out.push(`<polyline points="${path}" fill="none" stroke="#36c" stroke-width="1.5"/>`);
  }
  for (const p of points) {
    const fill = p.measured ? (p.frontier ? '#36c' : '#999') : 'none';
    const stroke = p.frontier ? '#36c' : '#999';
    out.push(
      `<circle cx="${x(p.value).toFixed(1)}" cy="${y(p.speedup).toFixed(1)}" r="${p.chosen ? 6 : 4}" fill="${fill}" stroke="${stroke}"><title>${escapeXml(p.label)}</title></circle>`,
    );
    if (p.chosen) out.push(`<text x="${x(p.value) + 8}" y="${y(p.speedup) - 8}">chosen</text>`);
  }
  out.push(
    `<text x="${w - right}" y="${top - 4}" text-anchor="end" fill="#555">filled: measured speed-up; hollow: predicted (MACs); blue: frontier</text>`,
  );
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
