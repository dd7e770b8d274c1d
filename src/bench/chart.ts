// Latency versus sequence length as a standalone SVG: one line per model (and batch size), median
// latency at each measured length with a whisker up to the p90. Plain SVG text, no plotting library.
import * as path from 'node:path';
import type { BenchReport } from './latency.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
const WIDTH = 760;
const HEIGHT = 440;
const MARGIN = { left: 72, right: 230, top: 48, bottom: 56 };

interface Series {
  label: string;
  color: string;
  points: { seq: number; median: number; p90: number }[];
}

export function latencyChart(report: BenchReport, title?: string): string {
  const batches = [...new Set(report.points.map((p) => p.batch))];
  const series: Series[] = [];
  report.models.forEach((m, model) => {
    for (const batch of batches) {
      const points = report.points
        .filter((p) => p.batch === batch)
        .map((p) => ({ seq: p.seq, median: p.results[model].medianMs, p90: p.results[model].p90Ms }))
        .sort((a, b) => a.seq - b.seq);
      const label = `${path.basename(m.label)}${batches.length > 1 ? ` (batch ${batch})` : ''}`;
      series.push({ label, color: COLORS[series.length % COLORS.length], points });
    }
  });
  const seqs = [...new Set(report.points.map((p) => p.seq))].sort((a, b) => a - b);
  const xMin = seqs[0];
  const xMax = seqs.length > 1 ? seqs[seqs.length - 1] : seqs[0] + 1;
  const yTicks = niceTicks(Math.max(...series.flatMap((s) => s.points.map((p) => p.p90))));
  const yMax = yTicks[yTicks.length - 1];
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (seq: number) => MARGIN.left + (seqs.length > 1 ? ((seq - xMin) / (xMax - xMin)) * plotW : plotW / 2);
  const y = (ms: number) => MARGIN.top + plotH - (ms / yMax) * plotH;
  const heading =
    title ?? `Median latency vs sequence length (${report.ep}${batches.length === 1 ? `, batch ${batches[0]}` : ''}; whiskers: p90)`;

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="24" text-anchor="middle" font-size="14">${escapeXml(heading)}</text>`,
  ];
  for (const t of yTicks) {
    parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${f(y(t))}" y2="${f(y(t))}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${MARGIN.left - 6}" y="${f(y(t) + 4)}" text-anchor="end">${t}</text>`);
  }
  for (const s of seqs) {
    parts.push(`<line x1="${f(x(s))}" x2="${f(x(s))}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH + 5}" stroke="#333"/>`);
    parts.push(`<text x="${f(x(s))}" y="${MARGIN.top + plotH + 18}" text-anchor="middle">${s}</text>`);
  }
  parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH}" stroke="#333"/>`);
  parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left}" y1="${MARGIN.top}" y2="${MARGIN.top + plotH}" stroke="#333"/>`);
  parts.push(`<text x="${MARGIN.left + plotW / 2}" y="${HEIGHT - 14}" text-anchor="middle">sequence length</text>`);
  parts.push(`<text transform="translate(18 ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle">latency (ms)</text>`);
  for (const s of series) {
    const line = s.points.map((p) => `${f(x(p.seq))},${f(y(p.median))}`).join(' ');
    parts.push(`<polyline points="${line}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
    for (const p of s.points) {
      parts.push(`<line x1="${f(x(p.seq))}" x2="${f(x(p.seq))}" y1="${f(y(p.median))}" y2="${f(y(p.p90))}" stroke="${s.color}"/>`);
      parts.push(
        `<circle cx="${f(x(p.seq))}" cy="${f(y(p.median))}" r="3.5" fill="${s.color}"><title>${escapeXml(`${s.label}, seq ${p.seq}: median ${p.median.toFixed(1)} ms, p90 ${p.p90.toFixed(1)} ms`)}</title></circle>`,
      );
    }
  }
  series.forEach((s, i) => {
    const ly = MARGIN.top + 10 + i * 20;
    const lx = MARGIN.left + plotW + 16;
    parts.push(`<line x1="${lx}" x2="${lx + 22}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`);
    parts.push(`<text x="${lx + 28}" y="${ly + 4}">${escapeXml(s.label)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** 0 and 4 to 6 round steps (1, 2 or 5 times a power of ten) up to at least `max`. */
export function niceTicks(max: number): number[] {
  const top = max > 0 ? max : 1;
  const rough = top / 5;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => top / s <= 6)!;
  const ticks: number[] = [];
  for (let t = 0; t < top + step / 2 || ticks.length < 2; t += step) ticks.push(Number(t.toPrecision(12)));
  if (ticks[ticks.length - 1] < top) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function f(n: number): string {
  return n.toFixed(1);
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
