// The order `vcompile bench` opens sessions in: in turns over the models and the control (A B A' A B A'
// ...), so that no model gets only the early sessions, which ran up to 2-3x slower than later ones on a
// loaded machine. openSession is wrapped to record what it opens.
import * as path from 'node:path';
import { describe, expect, it, vi } from 'vitest';

const opened: string[] = [];

vi.mock('../src/runtime/session.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../src/runtime/session.js')>();
  return {
    ...real,
    openSession: (model: Parameters<typeof real.openSession>[0], options: Parameters<typeof real.openSession>[1]) => {
      opened.push(typeof model === 'string' ? path.basename(model) : 'model');
      return real.openSession(model, options);
    },
  };
});

const fixture = (name: string) => path.resolve(import.meta.dirname, '../fixtures', name);

describe('bench sessions', () => {
  it('are opened in turns over the models and the control, one set per file', async () => {
    const { benchModels } = await import('../src/bench/latency.js');
    const report = await benchModels([fixture('bert_opset14.onnx'), fixture('bert_fused_qkv.onnx')], {
      batches: [1],
      seqs: [8],
      warmup: 0,
      runs: 2,
      sessions: 2,
      memory: false,
    });
    expect(opened).toEqual([
      'bert_opset14.onnx',
      'bert_fused_qkv.onnx',
      'bert_opset14.onnx',
      'bert_opset14.onnx',
      'bert_fused_qkv.onnx',
      'bert_opset14.onnx',
    ]);
    expect(report.points[0].control?.samplesMs).toHaveLength(2);
  });
});
