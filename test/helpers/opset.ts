// Opset upgrade tests: build a model at an old opset, upgrade it, check the IR, and run the two on ONNX
// Runtime with the same feeds.
import { expect } from 'vitest';
import { irVersionFor, type OpsetUpgradeReport, upgradeOpset } from '../../passes/opset/index.js';
import { inferShapes } from '../../src/analysis/shapes.js';
import { ModelBuilder } from '../../src/ir/builder.js';
import type { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/ir/types.js';
import { assertValid } from '../../src/ir/verify.js';
import { encodeModel } from '../../src/onnx/file.js';
import { openSession, run } from '../../src/runtime/session.js';

/** A one-graph model at `opset` (with that opset's IR version), built by `build`; untyped outputs get their element type. */
export function modelAt(opset: number, build: (b: ModelBuilder) => void): Model {
  const b = new ModelBuilder(opset, 'g');
  // IR 4 at least: before it, initializers had to be listed as graph inputs too.
  b.model.irVersion = Math.max(4, irVersionFor(opset));
  build(b);
  const shapes = inferShapes(b.model.graph);
  for (const v of b.model.graph.outputs) v.type ??= { kind: 'tensor', elemType: shapes.get(v).dtype ?? DataType.FLOAT };
  return b.model;
}

export async function runModel(model: Model | Uint8Array, feeds: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  const session = await openSession(model instanceof Uint8Array ? model : encodeModel(model), { threads: 1 });
  try {
    return await run(session, feeds);
  } finally {
    await session.release();
  }
}

/** Largest absolute difference between two runs' outputs (same names, dims and types required). */
export function maxDifference(a: Record<string, Tensor>, b: Record<string, Tensor>): number {
  expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
  let max = 0;
  for (const [name, ta] of Object.entries(a)) {
    const tb = b[name];
    expect(tb.dims, name).toEqual(ta.dims);
    expect(tb.dataType, name).toBe(ta.dataType);
    const x = ta.toFloat32();
    const y = tb.toFloat32();
    for (let i = 0; i < x.length; i++) {
      if (Number.isNaN(x[i]) && Number.isNaN(y[i])) continue;
      if (x[i] === y[i]) continue;
      max = Math.max(max, Math.abs(x[i] - y[i]));
    }
  }
  return max;
}

export interface Upgraded {
  report: OpsetUpgradeReport;
  before: Record<string, Tensor>;
  after: Record<string, Tensor>;
}

/**
 * Run `model` on ORT, upgrade it in place to `target`, check the IR, run it again; the outputs must agree
 * within `tolerance` (0: exactly).
 */
export async function upgradeAndCompare(model: Model, target: number, feeds: Record<string, Tensor>, tolerance = 0): Promise<Upgraded> {
  const original = encodeModel(model);
  const before = await runModel(original, feeds);
  const report = upgradeOpset(model, target);
  assertValid(model, 'opset upgrade');
  expect(model.opsetVersion('')).toBe(target);
  const after = await runModel(model, feeds);
  expect(maxDifference(before, after)).toBeLessThanOrEqual(tolerance);
  return { report, before, after };
}

/** A float tensor of `dims` with deterministic, varied values (negative and positive). */
export function floats(name: string, dims: number[], seed = 1): Tensor {
  const n = dims.reduce((a, c) => a * c, 1);
  const data = Float32Array.from({ length: n }, (_, i) => Math.round(((Math.sin((i + 1) * 12.9898 * seed) * 43758.5453) % 1) * 800) / 100);
  return Tensor.fromArray(name, DataType.FLOAT, dims, data);
}

/** The op types of a graph's nodes, in order. */
export function ops(model: Model): string[] {
  return model.graph.nodes.map((n) => n.opType);
}
