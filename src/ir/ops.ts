// Ops whose ONNX form changed between opsets (attributes that became inputs), written in the form the
// target opset expects. Passes and plugin generators call these instead of spelling the version logic.
import type { GraphBuilder } from './builder.js';
import type { Value } from './graph.js';

/** The oldest default-domain opset vcompile writes new subgraphs for (dynamic Pad and Slice need 11). */
export const MIN_OPSET = 11;

export class VersionedOps {
  constructor(
    readonly b: GraphBuilder,
    readonly opset: number,
  ) {
    if (opset < MIN_OPSET) throw new Error(`opset ${opset} is older than ${MIN_OPSET}, the oldest vcompile writes new nodes for`);
  }

  unsqueeze(x: Value, axes: number[]): Value {
    return this.opset >= 13 ? this.b.op.Unsqueeze(x, this.b.int64s('axes', axes)) : this.b.op.Unsqueeze(x, { axes });
  }

  /** ReduceMean / ReduceMax / ReduceSum over `axes` (axes became an input in 13 for Sum, 18 for the rest). */
  reduce(op: 'ReduceMean' | 'ReduceMax' | 'ReduceMin' | 'ReduceSum', x: Value, axes: number[], keepdims: boolean): Value {
    const axesAsInput = op === 'ReduceSum' ? this.opset >= 13 : this.opset >= 18;
    const keep = keepdims ? 1 : 0;
    return axesAsInput ? this.b.op[op](x, this.b.int64s('axes', axes), { keepdims: keep }) : this.b.op[op](x, { axes, keepdims: keep });
  }

  /** x[..., start:end] along `axis`, bounds as int64 [1] values. */
  slice(x: Value, start: Value, end: Value, axis: number): Value {
    return this.b.op.Slice(x, start, end, this.b.int64s('axes', [axis]));
  }

  /** Pad with a constant; `pads` is an int64 [2·rank] value (all begins, then all ends). */
  padConstant(x: Value, pads: Value, fill: Value): Value {
    return this.b.op.Pad(x, pads, fill, { mode: 'constant' });
  }

  softmaxLastAxis(x: Value, rank: number): Value {
    // Before opset 13 Softmax flattens to 2-D around `axis`; on the last axis that is the same computation.
    return this.b.op.Softmax(x, { axis: this.opset >= 13 ? -1 : rank - 1 });
  }
}
