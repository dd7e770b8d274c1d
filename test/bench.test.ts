// `vcompile bench` on the small fixtures: the JSON report against its documented schema, speed-ups as
// medians of per-round ratios, the noise warning (on a fake clock), memory measured in a process of its
// own, MACs that match the layer analysis, the SVG chart, and the statistics helpers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { macsAt } from '../src/analysis/macs.js';
import { niceTicks } from '../src/bench/chart.js';
import { benchModels, benchWarning, formatBenchReport, median, percentile } from '../src/bench/latency.js';
import { pairedRatios, rotation } from '../src/bench/paired.js';
import { loadModel } from '../src/onnx/file.js';
import { vcompile } from './helpers/cli.js';
import { asCommandLineAsync } from './helpers/cli-message.js';

const repo = path.resolve(import.meta.dirname, '..');
const fixture = (name: string) => path.join(repo, 'fixtures', name);

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
const quartiles = (value: unknown, where: string) => {
  numbers(value, where);
  expect(value, where).toHaveLength(2);
};
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
    // timings on a shared machine may be too noisy: then one warning line, and nothing else
    expect(r.stderr).toMatch(
      /^(vcompile: warning: timing too noisy for the differences reported: .*; rerun with more rounds or sessions per model, or on a quieter machine\n)?$/,
    );
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    const spreadShape = { speedup: 'number', speedupIqr: quartiles, cpuSpeedup: 'number', cpuSpeedupIqr: quartiles } as const;
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
        control: 'boolean',
        sessions: 'number',
        seed: 'number',
        memoryNote: 'string',
        warnings: strings,
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
                    cpuMedianMs: 'number',
                    throughput: 'number',
                    ...spreadShape,
                    macs: 'number|null',
                    idealSpeedup: 'number|null',
                    samplesMs: numbers,
                    cpuSamplesMs: numbers,
                  },
                  w,
                ),
              ),
              control: (c, w) => conforms(c, { ...spreadShape, medianMs: 'number', samplesMs: numbers, cpuSamplesMs: numbers }, w),
            },
            where,
          ),
        ),
        notes: strings,
      },
      'report',
    );
    expect(report.models.map((m: { file: string }) => m.file)).toEqual(models);
    expect(report).toMatchObject({ ep: 'cpu', threads: 1, spinning: false, warmup: 1, runs: 3, control: true });
    expect(report.warnings.length > 0).toBe(r.stderr !== '');
    for (const m of report.models) expect(m.memoryMiB).toBeGreaterThan(0);
    expect(report.points.map((p: { batch: number; seq: number }) => [p.batch, p.seq])).toEqual([
      [2, 8],
      [2, 16],
    ]);
    for (const point of report.points) {
      const [a, b] = point.results;
      expect(a).toMatchObject({ model: 0, speedup: 1, speedupIqr: [1, 1], idealSpeedup: 1 });
      expect(a.samplesMs).toHaveLength(3);
      expect(a.cpuSamplesMs).toHaveLength(3);
      expect(point.control.samplesMs).toHaveLength(3);
      expect(a.p90Ms).toBeGreaterThanOrEqual(a.medianMs);
      expect(a.throughput).toBeCloseTo(point.batch / (a.medianMs / 1000), 6);
      // the median of the per-round ratios, not the ratio of the medians
      expect(b.speedup).toBeCloseTo(median(pairedRatios(a.samplesMs, b.samplesMs)), 9);
      expect(b.cpuSpeedup).toBeCloseTo(median(pairedRatios(a.cpuSamplesMs, b.cpuSamplesMs)), 9);
      expect(point.control.speedup).toBeCloseTo(median(pairedRatios(a.samplesMs, point.control.samplesMs)), 9);
      expect(b.idealSpeedup).toBeCloseTo(a.macs / b.macs, 9);
    }
    const svg = fs.readFileSync(chart, 'utf8');
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg.match(/<polyline /g)).toHaveLength(2);
    expect(svg).toContain('bert_fused_qkv.onnx');
  });

  it('warns when the control or a spread says the machine is too noisy (fake clock)', async () => {
    // The wall clock is read before and after every timed call; the read after adds the call's scripted
    // time. The slot a call is in follows from the order of its round (rotation(slots, round)).
    // A (slot 0) takes 10 ms, B (slot 1) 8 ms, and A's control (slot 2) 20 ms every other round.
    let wall = 0;
    let reads = 0;
    const scripted = (slots: number, time: (slot: number, round: number) => number) => () => {
      if (reads++ % 2 === 1) {
        const call = (reads - 2) / 2;
        const round = Math.floor(call / slots);
        wall += time(rotation(slots, round)[call % slots], round);
      }
      return wall;
    };
    const plain = fixture('bert_opset14.onnx');
    const report = await benchModels([plain, fixture('bert_fused_qkv.onnx')], {
      batches: [1],
      seqs: [8],
      warmup: 0,
      runs: 4,
      memory: false,
      clock: {
        wallMs: scripted(3, (slot, round) => (slot === 1 ? 8 : slot === 2 && round % 2 === 1 ? 20 : 10)),
        cpuMs: () => wall,
      },
    });
    const [point] = report.points;
    expect(point.results.map((r) => r.samplesMs)).toEqual([
      [10, 10, 10, 10],
      [8, 8, 8, 8],
    ]);
    expect(point.results[1]).toMatchObject({ speedup: 1.25, speedupIqr: [1.25, 1.25] });
    expect(point.control).toMatchObject({ speedup: 0.75, speedupIqr: [0.5, 1], samplesMs: [10, 20, 10, 20] });
    expect(report.warnings).toEqual(['batch 1, seq 8: the first model against itself gave 0.75x (IQR 0.50-1.00), off by 25.0%']);
    expect(benchWarning(report)).toBe(
      'timing too noisy for the differences reported: batch 1, seq 8: the first model against itself gave 0.75x (IQR 0.50-1.00), off by 25.0%; rerun with more rounds or sessions per model, or on a quieter machine',
    );
    const text = formatBenchReport(report);
    expect(text).toContain(
      "each round runs every model once (and A again on a session of its own, as A', its control), in an order that rotates each round",
    );
    expect(text).toContain("\n    1    8  A'          15.0    20.0                    0.75x  0.50-1.00         0.75x");
    expect(report.memoryNote).toBe('memory: not measured');

    // without the control; B's per-round ratios are 1.25, 0.8, 1.25, 1, 1.25: a 1.25x whose IQR reaches 1.00x
    reads = 0;
    const noControl = await benchModels([plain, plain], {
      batches: [1],
      seqs: [8],
      warmup: 0,
      runs: 5,
      control: false,
      memory: false,
      clock: { wallMs: scripted(2, (slot, round) => (slot === 0 ? 10 : [8, 12.5, 8, 10, 8][round])), cpuMs: () => 0 },
    });
    expect(noControl.control).toBe(false);
    expect(noControl.points[0].control).toBeNull();
    expect(noControl.points[0].results[1]).toMatchObject({ speedup: 1.25, speedupIqr: [1, 1.25] });
    expect(noControl.warnings).toEqual([`batch 1, seq 8: ${plain} at 1.25x (IQR 1.00-1.25): its IQR contains 1.00x`]);
  });

  it("measures each model's memory in a process of its own: the same figure whatever the order", async () => {
    const small = fixture('vit.onnx');
    const large = fixture('bert_opset14.onnx');
    const options = { batches: [4], seqs: [64], warmup: 0, runs: 1, control: false };
    const first = await benchModels([small, large], options);
    const second = await benchModels([large, small], options);
    const mib = (r: typeof first, file: string) => r.models.find((m) => m.file === file)!.memoryMiB!;
    for (const file of [small, large]) {
      const [a, b] = [mib(first, file), mib(second, file)];
      expect({ file, a, b, close: Math.abs(a - b) <= Math.max(1, 0.2 * Math.max(a, b)) }).toMatchObject({ close: true });
    }
    expect(first.memoryNote).toMatch(/^memory: in a fresh process for each model/);
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

  it('--no-control times the first model once per round', () => {
    const r = vcompile('bench', fixture('bert_opset14.onnx'), '--seq', '8', '--runs', '2', '--warmup', '0', '--no-control', '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.control).toBe(false);
    expect(report.points[0].control).toBeNull();
  });

  it('--sessions N opens every model N times and uses them in turn', async () => {
    const progress: [number, number][] = [];
    const report = await benchModels([fixture('bert_opset14.onnx'), fixture('bert_fused_qkv.onnx')], {
      batches: [1],
      seqs: [8],
      warmup: 1,
      runs: 3,
      sessions: 2,
      memory: false,
      onProgress: (done, total) => progress.push([done, total]),
    });
    expect(report).toMatchObject({ sessions: 2, control: true });
    expect(report.points[0].results.map((r) => r.samplesMs.length)).toEqual([3, 3]);
    // 3 entries (2 models, the control) x 2 sessions opened, then 3 x (1 warm-up call per session + 3 rounds)
    expect(progress.at(-1)).toEqual([3 * 2 + 3 * (2 + 3), 3 * 2 + 3 * (2 + 3)]);
    expect(formatBenchReport(report)).toContain('; 2 sessions per model, used in turn');
    await expect(
      asCommandLineAsync(() => benchModels([fixture('bert_opset14.onnx')], { batches: [1], seqs: [8], warmup: 0, runs: 1, sessions: 0 })),
    ).rejects.toThrow('--sessions 0 must be an integer >= 1');
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
