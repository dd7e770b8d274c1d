// `vcompile bench` on the small fixtures: the JSON report against its documented schema, MACs that
// match the layer analysis, the SVG chart, and the statistics helpers.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { macsAt } from '../src/analysis/macs.js';
import { niceTicks } from '../src/bench/chart.js';
import { median, percentile } from '../src/bench/latency.js';
import { loadModel } from '../src/onnx/file.js';

const repo = path.resolve(import.meta.dirname, '..');
const fixture = (name: string) => path.join(repo, 'fixtures', name);

function vcompile(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(repo, 'bin/vcompile'), ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

type Check = 'number' | 'string' | 'boolean' | 'number|null' | ((value: unknown, where: string) => void);

/** Assert that `value` has exactly the keys of `shape`, each of the given type. */
function conforms(value: unknown, shape: Record<string, Check>, where: string): void {
  expect(typeof value, where).toBe('object');
  const object = value as Record<string, unknown>;
  expect(Object.keys(object).sort(), where).toEqual(Object.keys(shape).sort());
  for (const [key, check] of Object.entries(shape)) {
    const v = object[key];
    if (typeof check === 'function') check(v, `${where}.${key}`);
    else if (check === 'number|null') expect(v === null || typeof v === 'number', `${where}.${key}`).toBe(true);
    else expect(typeof v, `${where}.${key}`).toBe(check);
  }
}

const arrayOf = (check: (item: unknown, where: string) => void) => (value: unknown, where: string) => {
  expect(Array.isArray(value), where).toBe(true);
  (value as unknown[]).forEach((item, i) => check(item, `${where}[${i}]`));
};
const numbers = arrayOf((v, where) => expect(typeof v, where).toBe('number'));
const strings = arrayOf((v, where) => expect(typeof v, where).toBe('string'));
const numberRecord = (value: unknown, where: string) => {
  for (const v of Object.values(value as object)) expect(typeof v, where).toBe('number');
};

describe('vcompile bench', () => {
  it('reports every model at every point in the documented JSON schema, and draws the chart', () => {
    const chart = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-bench-')), 'latency.svg');
    const models = [fixture('bert_opset14.onnx'), fixture('bert_fused_qkv.onnx')];
    const r = vcompile(
      'bench',
      ...models,
      '--batch',
      '2',
      '--seq',
      '8,16',
      '--warmup',
      '1',
      '--runs',
      '3',
      '--threads',
      '1',
      '--json',
      '--chart',
      chart,
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    conforms(
      report,
      {
        models: arrayOf((m, where) =>
          conforms(
            m,
            { file: 'string', label: 'string', ratio: 'number|null', ep: 'string', loadSeconds: 'number', memoryMiB: 'number|null' },
            where,
          ),
        ),
        ep: 'string',
        threads: 'number|null',
        spinning: 'boolean',
        warmup: 'number',
        runs: 'number',
        seed: 'number',
        memoryNote: 'string',
        points: arrayOf((p, where) =>
          conforms(
            p,
            {
              batch: 'number',
              seq: 'number',
              dims: numberRecord,
              results: arrayOf((x, w) =>
                conforms(
                  x,
                  {
                    model: 'number',
                    medianMs: 'number',
                    p90Ms: 'number',
                    meanMs: 'number',
                    minMs: 'number',
                    throughput: 'number',
                    speedup: 'number',
                    macs: 'number|null',
                    idealSpeedup: 'number|null',
                    samplesMs: numbers,
                  },
                  w,
                ),
              ),
            },
            where,
          ),
        ),
        notes: strings,
      },
      'report',
    );
    expect(report.models.map((m: { file: string }) => m.file)).toEqual(models);
    expect(report).toMatchObject({ ep: 'cpu', threads: 1, spinning: false, warmup: 1, runs: 3 });
    expect(report.points.map((p: { batch: number; seq: number }) => [p.batch, p.seq])).toEqual([
      [2, 8],
      [2, 16],
    ]);
    for (const point of report.points) {
      const [a, b] = point.results;
      expect(a).toMatchObject({ model: 0, speedup: 1, idealSpeedup: 1 });
      expect(a.samplesMs).toHaveLength(3);
      expect(a.p90Ms).toBeGreaterThanOrEqual(a.medianMs);
      expect(a.throughput).toBeCloseTo(point.batch / (a.medianMs / 1000), 6);
      expect(b.speedup).toBeCloseTo(a.medianMs / b.medianMs, 6);
      expect(b.idealSpeedup).toBeCloseTo(a.macs / b.macs, 9);
    }
    const svg = fs.readFileSync(chart, 'utf8');
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg.match(/<polyline /g)).toHaveLength(2);
    expect(svg).toContain('bert_fused_qkv.onnx');
  });

  it('counts MACs of the whole graph at concrete shapes', () => {
    // bert_opset14: 3 layers, hidden 64, FFN 256, 4 heads of 16; per token and layer 4*64*64 (Q, K, V,
    // output) + 2*64*256 (FFN) MACs, plus 2 * seq * 64 for the scores and the context.
    const model = loadModel(fixture('bert_opset14.onnx'));
    const at = (batch: number, seq: number) =>
      macsAt(
        model,
        new Map([
          ['input_ids', [batch, seq]],
          ['attention_mask', [batch, seq]],
        ]),
      );
    const expected = (batch: number, seq: number) => 3 * batch * seq * (4 * 64 * 64 + 2 * 64 * 256 + 2 * seq * 64);
    expect(at(2, 37)).toEqual({ macs: expected(2, 37), unknown: [] });
    expect(at(1, 128).macs).toBe(expected(1, 128));
    // the model's own symbolic input types are back in place afterwards
    expect(model.graph.inputs[0].type).toMatchObject({ shape: [{ param: 'batch' }, { param: 'seq' }] });
  });

  it('bad flags are one-line errors with exit code 2', () => {
    const r = vcompile('bench', fixture('vit.onnx'), '--seq', '8,x');
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("vcompile: --seq: 'x' is not a positive integer\n");
    expect(vcompile('bench', fixture('vit.onnx'), '--runs', '0').stderr).toBe('vcompile: --runs must be an integer >= 1, got 0\n');
  });
});

describe('statistics and chart helpers', () => {
  it('median, nearest-rank p90, round ticks', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9)).toBe(9);
    expect(percentile([7], 0.9)).toBe(7);
    expect(niceTicks(2166)).toEqual([0, 500, 1000, 1500, 2000, 2500]);
    expect(niceTicks(0.8)).toEqual([0, 0.2, 0.4, 0.6, 0.8]);
  });
});
