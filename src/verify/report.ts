// The verification report as people read it: a table per output, the task metrics, the layers, the verdict.
import { formatNumber, type OutputSummary, type VerifyReport } from './numeric.js';

/** The report as text: where the inputs came from, one row per output, task metrics, then the verdict. */
export function formatVerifyReport(r: VerifyReport): string {
  const lines = [
    `verify ${r.rewritten} against ${r.original} (${r.ep}, seed ${r.seed}; ${describeInputs(r)})${r.ratio !== undefined ? ` at vcompile_ratio ${r.ratio}` : ''}`,
  ];
  if (r.inputs?.kind === 'grid') lines.push(`inputs: generated, ${r.inputs.note}`);
  const classes = r.outputs.some((o) => o.top1Agreement !== null);
  const header = [
    'output',
    'max abs',
    'mean abs',
    'relative',
    'cosine',
    'cos/pos p5',
    ...(classes ? ['top-1', 'top-5', 'KL'] : []),
    'compared',
    'masked by',
    '',
  ];
  const rows = r.outputs.map((o) => [
    o.name,
    formatNumber(o.maxAbs),
    formatNumber(o.meanAbs),
    formatNumber(o.relative),
    o.cosine.toFixed(6),
    o.cosinePerPosition.p5.toFixed(4),
    ...(classes ? [share(o.top1Agreement), share(o.top5Agreement), o.kl === null ? '-' : formatNumber(o.kl)] : []),
    `${o.compared}${o.excluded ? ` (${o.excluded} padding)` : ''}`,
    o.maskedBy ?? '-',
    o.pass ? 'ok' : 'FAIL',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  for (const row of [header, ...rows]) {
    lines.push(
      row
        .map((cell, i) => cell.padEnd(widths[i]))
        .join('  ')
        .trimEnd(),
    );
  }
  for (const o of r.outputs) if (o.task) lines.push(taskLine(o));
  if (r.layers?.length) {
    lines.push('layer  relative  cosine (mean per position), residual stream leaving the layer');
    for (const l of r.layers) lines.push(`${String(l.index).padEnd(5)}  ${formatNumber(l.relative).padEnd(8)}  ${l.cosine.toFixed(6)}`);
  }
  for (const f of r.failures) lines.push(`FAIL ${f}`);
  const limits = gateText(r);
  if (!r.pass) lines.push(`FAILED${limits ? ` (${limits})` : ''}`);
  else
    lines.push(
      limits
        ? `PASS (${limits})`
        : 'report only (no gate given: --max-error, --min-cosine, --min-top1-agreement, --max-kl, --max-accuracy-drop)',
    );
  if (r.inputs?.kind === 'grid')
    lines.push('note: these inputs are generated; give real inputs (and labels) with --data to measure what the task loses');
  return lines.join('\n');
}

function describeInputs(r: VerifyReport): string {
  if (r.inputs?.kind === 'data') return `${r.inputs.samples} samples of ${r.inputs.source}, batches of ${r.inputs.batch}`;
  if (r.cases.length && r.cases[0].batch !== null)
    return `${r.cases.length} case${r.cases.length === 1 ? '' : 's'}: ${r.cases.map((c) => `b${c.batch}/s${c.seq}`).join(' ')}`;
  return 'given inputs';
}

function share(x: number | null): string {
  return x === null ? '-' : `${(x * 100).toFixed(2)}%`;
}

function taskLine(o: OutputSummary): string {
  const t = o.task!;
  const drop = (t.accuracy.original - t.accuracy.rewritten) * 100;
  return `task ${o.name} (labels): accuracy ${share(t.accuracy.original)} -> ${share(t.accuracy.rewritten)} (${drop >= 0 ? '-' : '+'}${Math.abs(drop).toFixed(2)} points), loss ${t.loss.original.toFixed(4)} -> ${t.loss.rewritten.toFixed(4)}`;
}

/** The gates given, as people read them. */
export function gateText(r: VerifyReport): string {
  const t = r.thresholds;
  return [
    t.maxError !== null ? `max abs error <= ${t.maxError}` : '',
    t.minCosine !== null ? `cosine >= ${t.minCosine}` : '',
    t.minTop1Agreement !== null ? `top-1 agreement >= ${t.minTop1Agreement}` : '',
    t.maxKl !== null ? `KL <= ${t.maxKl}` : '',
    t.maxAccuracyDrop !== null ? `accuracy drop <= ${t.maxAccuracyDrop} points` : '',
  ]
    .filter(Boolean)
    .join(', ');
}

/**
 * One line per output for the compile report: the figures, then `ok` when a gate was given and met,
 * `FAIL` when violated, `report only (no gate)` without one.
 */
export function describeVerifyBrief(r: VerifyReport): string {
  const gated = gateText(r) !== '';
  const cases =
    r.inputs?.kind === 'data'
      ? `${r.inputs.samples} samples of ${r.inputs.source}`
      : `${r.cases.length} case${r.cases.length === 1 ? '' : 's'}`;
  const at = r.ratio !== undefined ? ` at ratio ${r.ratio}` : '';
  return r.outputs
    .map((o) => {
      const figures = [`max abs error ${o.maxAbs.toExponential(2)}`, `cosine ${o.cosine.toFixed(6)}`];
      if (o.top1Agreement !== null) figures.push(`top-1 agreement ${share(o.top1Agreement)}`);
      if (o.task) figures.push(`accuracy ${share(o.task.accuracy.original)} -> ${share(o.task.accuracy.rewritten)}`);
      const verdict = !o.pass ? 'FAIL' : gated ? 'ok' : 'report only (no gate)';
      return `verify ${o.name}${at}: ${figures.join(', ')} over ${cases}${o.maskedBy ? ` (padding masked by ${o.maskedBy})` : ''}: ${verdict}`;
    })
    .join('\n');
}
