// The opset upgrade pass, adapter family by adapter family: each test builds a node in its old form, checks
// the new form, and (where ONNX Runtime runs the old form) that both give the same outputs. Then the
// refusals, word for word, and what the pass promises: all-or-nothing, subgraphs and functions, custom
// domains left alone, the IR version, identity of what it does not change.
import { describe, expect, it } from 'vitest';
import { MAX_ORT_OPSET, opsetTargetFor, opsetUpgradePass, summarizeUpgrade, upgradeOpset } from '../passes/opset/index.js';
import { runPasses } from '../passes/pipeline.js';
import { float } from '../src/ir/builder.js';
import { AttributeType, Graph, Node, Value } from '../src/ir/graph.js';
import { ModelFunction } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { floats, maxDifference, modelAt, ops, runModel, upgradeAndCompare } from './helpers/opset.js';

const f32 = (dims: (number | string)[]) => tensorType(DataType.FLOAT, dims);
const ints = (node: Node, index: number) => node.inputs[index]?.constTensor()?.toNumbers();
const nodeOf = (model: ReturnType<typeof modelAt>, op: string) => model.graph.nodes.find((n) => n.opType === op)!;

describe('attributes that became inputs', () => {
  it('Pad (2 -> 11): pads and value become inputs, the value in the data type', async () => {
    const m = modelAt(7, (b) => b.output(b.op.Pad(b.input('x', f32([2, 3])), { pads: [0, 1, 1, 0], value: float(1.5) }), 'y', f32([3, 4])));
    const { report } = await upgradeAndCompare(m, 11, { x: floats('x', [2, 3]) });
    const pad = nodeOf(m, 'Pad');
    expect(pad.attr('pads')).toBeUndefined();
    expect(ints(pad, 1)).toEqual([0, 1, 1, 0]);
    expect(pad.inputs[2]?.constTensor()?.toNumbers()).toEqual([1.5]);
    expect(report.converted).toEqual({ Pad: 1 });
  });

  it('Slice (1 -> 10 -> 13): starts, ends and axes become inputs', async () => {
    const m = modelAt(7, (b) => b.output(b.op.Slice(b.input('x', f32([4, 5])), { starts: [1, -3], ends: [3, 1000], axes: [0, 1] }), 'y'));
    await upgradeAndCompare(m, 13, { x: floats('x', [4, 5]) });
    const slice = nodeOf(m, 'Slice');
    expect(slice.attributes).toEqual([]);
    expect([1, 2, 3].map((i) => ints(slice, i))).toEqual([
      [1, -3],
      [3, 1000],
      [0, 1],
    ]);
  });

  it('Clip (6 -> 11): min and max become inputs; a missing bound stays +-FLT_MAX, which clamps infinities as before', async () => {
    const m = modelAt(7, (b) => b.output(b.op.Clip(b.input('x', f32([4])), { min: float(-1) }), 'y'));
    const x = Tensor.fromArray('x', DataType.FLOAT, [4], Float32Array.from([-5, 0.5, Infinity, -Infinity]));
    const { after } = await upgradeAndCompare(m, 13, { x });
    expect(Array.from(after.y.toFloat32())).toEqual([-1, 0.5, 3.4028234663852886e38, -1]);
    const clip = nodeOf(m, 'Clip');
    expect(clip.inputs.map((v) => v?.constTensor()?.toNumbers())).toEqual([undefined, [-1], [3.4028234663852886e38]]);
  });

  it('Squeeze and Unsqueeze (11 -> 13): axes become an int64 input; a Squeeze without axes stays without', async () => {
    const m = modelAt(11, (b) => {
      const x = b.input('x', f32([2, 1, 3]));
      const y = b.op.Unsqueeze(b.op.Squeeze(x, { axes: [1] }), { axes: [0, -1] });
      b.output(b.op.Squeeze(y), 'y');
    });
    await upgradeAndCompare(m, 13, { x: floats('x', [2, 1, 3]) });
    const [squeeze, unsqueeze, squeezeAll] = m.graph.nodes;
    expect([ints(squeeze, 1), ints(unsqueeze, 1), squeezeAll.inputs.length]).toEqual([[1], [0, -1], 1]);
  });

  it('ReduceSum (11 -> 13) and ReduceMean (13 -> 18): axes become an input; no axes still reduces everything', async () => {
    const m = modelAt(11, (b) => {
      const x = b.input('x', f32([2, 3, 4]));
      b.output(b.op.ReduceSum(x, { axes: [1], keepdims: 0 }), 'sum');
      b.output(b.op.ReduceMean(x, { axes: [-1] }), 'mean');
      b.output(b.op.ReduceMax(x, { keepdims: 0 }), 'max');
    });
    const { report } = await upgradeAndCompare(m, 18, { x: floats('x', [2, 3, 4]) }, 1e-6);
    expect(m.graph.nodes.map((n) => [n.opType, ints(n, 1)])).toEqual([
      ['ReduceSum', [1]],
      ['ReduceMean', [-1]],
      ['ReduceMax', undefined],
    ]);
    expect(report.converted).toEqual({ ReduceSum: 1, ReduceMean: 1 });
    expect(report.unchanged).toBe(1);
  });

  it('Split (11 -> 13 -> 18): sizes become an input; without sizes, num_outputs says how many parts', async () => {
    const m = modelAt(11, (b) => {
      const x = b.input('x', f32([6, 2]));
      const [p, q] = b.multi('Split', [x], { axis: 0, split: [2, 4] }, 2);
      const [r, s, t] = b.multi('Split', [x], { axis: 0 }, 3);
      [p, q, r, s, t].forEach((v, i) => b.output(v, `o${i}`));
    });
    await upgradeAndCompare(m, 18, { x: floats('x', [6, 2]) });
    const [sized, even] = m.graph.nodes;
    expect([ints(sized, 1), sized.attr('num_outputs'), even.inputs.length, even.attrInt('num_outputs')]).toEqual([[2, 4], undefined, 1, 3]);
  });

  it('TopK (1 -> 10): k becomes the int64 [1] input K', async () => {
    const m = modelAt(9, (b) => {
      const [values, indices] = b.multi('TopK', [b.input('x', f32([3, 5]))], { k: 2, axis: 1 }, 2);
      b.output(values, 'values');
      b.output(indices, 'indices', tensorType(DataType.INT64, [3, 2]));
    });
    await upgradeAndCompare(m, 11, { x: floats('x', [3, 5]) });
    expect(ints(nodeOf(m, 'TopK'), 1)).toEqual([2]);
  });

  it('Reshape (1 -> 5): the shape attribute becomes an input', () => {
    const m = modelAt(4, (b) => b.output(b.op.Reshape(b.input('x', f32([2, 3])), { shape: [3, 2], consumed_inputs: [0] }), 'y'));
    upgradeOpset(m, 7);
    assertValid(m);
    const reshape = nodeOf(m, 'Reshape');
    expect([reshape.attributes, ints(reshape, 1)]).toEqual([[], [3, 2]]);
  });

  it('Dropout (7 -> 12): ratio becomes an input; up to 11 a mask that is read is cast back from bool', async () => {
    const build = (b: Parameters<Parameters<typeof modelAt>[1]>[0], readMask: boolean) => {
      const [y, mask] = b.multi('Dropout', [b.input('x', f32([2, 3]))], { ratio: float(0.25) }, 2);
      b.output(y, 'y');
      if (readMask) b.output(b.op.Mul(mask, y), 'masked', f32([2, 3]));
    };
    const plain = modelAt(7, (b) => build(b, false));
    await upgradeAndCompare(plain, 12, { x: floats('x', [2, 3]) });
    expect(nodeOf(plain, 'Dropout').inputs[1]?.constTensor()?.toNumbers()).toEqual([0.25]);
    const masked = modelAt(7, (b) => build(b, true));
    await upgradeAndCompare(masked, 11, { x: floats('x', [2, 3]) });
    expect(ops(masked)).toEqual(['Dropout', 'Cast', 'Mul']);
    expect(nodeOf(masked, 'Cast').attrInt('to')).toBe(DataType.FLOAT);
    expect(() => upgradeOpset(masked, 12)).toThrow(
      `node Dropout (Dropout): cannot upgrade from opset 11 to 12: its mask is read, and in inference the mask is all false before opset 12 (ONNX Runtime) and all true from 12`,
    );
  });
});

describe('changes of meaning', () => {
  it('Softmax (11 -> 13) on an inner axis: Flatten, Softmax along axis 1, Reshape to the input shape', async () => {
    const m = modelAt(11, (b) => b.output(b.op.Softmax(b.input('x', f32([2, 3, 4])), { axis: 1 }), 'y'));
    const softmax = m.graph.nodes[0];
    const { report } = await upgradeAndCompare(m, 13, { x: floats('x', [2, 3, 4]) }, 1e-6);
    expect(ops(m)).toEqual(['Flatten', 'Shape', 'Softmax', 'Reshape']);
    expect(m.graph.nodes[2]).toBe(softmax);
    expect([m.graph.nodes[0].attrInt('axis'), softmax.attrInt('axis')]).toEqual([1, 1]);
    expect(m.graph.nodes[3].outputs[0]?.name).toBe('y');
    expect([report.converted, report.addedNodes]).toEqual([{ Softmax: 1 }, 3]);
  });

  it('Softmax, LogSoftmax, Hardmax on the last axis keep their single node; the default axis 1 is written out', async () => {
    const m = modelAt(9, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.op.Softmax(x), 'a');
      b.output(b.op.LogSoftmax(x, { axis: 1 }), 'b');
      b.output(b.op.Hardmax(x, { axis: 1 }), 'c');
    });
    const { report } = await upgradeAndCompare(m, 13, { x: floats('x', [2, 3]) }, 1e-6);
    expect(m.graph.nodes.map((n) => [n.opType, n.attrInt('axis')])).toEqual([
      ['Softmax', 1],
      ['LogSoftmax', 1],
      ['Hardmax', 1],
    ]);
    expect(report.converted).toEqual({ Softmax: 1 });
  });

  it('Softmax of unknown rank takes the general form', async () => {
    const m = modelAt(12, (b) => b.output(b.op.LogSoftmax(b.input('x', { kind: 'tensor', elemType: DataType.FLOAT }), { axis: -2 }), 'y'));
    await upgradeAndCompare(m, 13, { x: floats('x', [2, 3, 2]) }, 1e-6);
    expect(ops(m)).toEqual(['Flatten', 'Shape', 'LogSoftmax', 'Reshape']);
  });

  it('Upsample (9 -> 10 -> 11) becomes Resize with asymmetric coordinates (nearest rounds down)', async () => {
    const m = modelAt(9, (b) => {
      const x = b.input('x', f32([1, 1, 2, 3]));
      const scales = b.input('scales', f32([4]));
      b.output(b.op.Upsample(x, scales, { mode: 'nearest' }), 'near');
      b.output(b.op.Upsample(x, b.floats('s', [4], [1, 1, 1.7, 2.5]), { mode: 'linear' }), 'lin');
    });
    const scales = Tensor.fromArray('scales', DataType.FLOAT, [4], Float32Array.from([1, 1, 2.5, 1.5]));
    await upgradeAndCompare(m, 13, { x: floats('x', [1, 1, 2, 3]), scales }, 1e-6);
    expect(m.graph.nodes.map((n) => [n.opType, n.attrString('coordinate_transformation_mode'), n.attrString('nearest_mode', '-')])).toEqual(
      [
        ['Resize', 'asymmetric', 'floor'],
        ['Resize', 'asymmetric', '-'],
      ],
    );
  });

  it('Upsample (7 -> 9): the scales attribute becomes an input', async () => {
    const m = modelAt(7, (b) => b.output(b.op.Upsample(b.input('x', f32([1, 1, 2, 2])), { scales: float([1, 1, 2, 3]) }), 'y'));
    await upgradeAndCompare(m, 9, { x: floats('x', [1, 1, 2, 2]) });
    expect(nodeOf(m, 'Upsample').inputs[1]?.constTensor()?.toNumbers()).toEqual([1, 1, 2, 3]);
  });

  it('Resize (10 -> 11) that shrinks with nearest rounds up: nearest_mode ceil', async () => {
    const m = modelAt(10, (b) => b.output(b.op.Resize(b.input('x', f32([1, 1, 5, 7])), b.floats('s', [4], [1, 1, 0.6, 0.4])), 'y'));
    await upgradeAndCompare(m, 11, { x: floats('x', [1, 1, 5, 7]) });
    expect(nodeOf(m, 'Resize').attrString('nearest_mode')).toBe('ceil');
  });

  it('BatchNormalization (7 -> 9) per activation (spatial=0) becomes its formula; the node becomes the final Add', async () => {
    const m = modelAt(7, (b) => {
      const stat = (name: string, seed: number) =>
        b.floats(
          name,
          [3, 2],
          Array.from({ length: 6 }, (_, i) => 0.5 + ((i * seed) % 5) / 4),
        );
      b.output(
        b.op.BatchNormalization(b.input('x', f32([2, 3, 2])), stat('s', 1), stat('b', 2), stat('m', 3), stat('v', 4), {
          spatial: 0,
          epsilon: float(1e-3),
        }),
        'y',
      );
    });
    const bn = m.graph.nodes[0];
    await upgradeAndCompare(m, 15, { x: floats('x', [2, 3, 2]) }, 1e-5);
    expect(ops(m)).toEqual(['Add', 'Sqrt', 'Div', 'Sub', 'Mul', 'Add']);
    expect(m.graph.nodes[5]).toBe(bn);
  });

  it('BatchNormalization (1 -> 15) in inference keeps its one node; consumed_inputs, is_test and spatial go', async () => {
    const m = modelAt(5, (b) => {
      const c = (name: string, v: number[]) => b.floats(name, [2], v);
      b.output(
        b.op.BatchNormalization(b.input('x', f32([1, 2, 3])), c('s', [1, 2]), c('b', [0, 1]), c('m', [0.5, -1]), c('v', [1, 4]), {
          is_test: 1,
          spatial: 1,
          consumed_inputs: [0, 0, 0, 1, 1],
        }),
        'y',
      );
    });
    upgradeOpset(m, 15);
    assertValid(m);
    expect(m.graph.nodes.map((n) => [n.opType, n.attributes.map((a) => a.name)])).toEqual([['BatchNormalization', []]]);
    const after = await runModel(m, { x: floats('x', [1, 2, 3]) });
    const x = floats('x', [1, 2, 3]).toFloat32();
    const expected = Array.from(x, (v, i) => (i < 3 ? (v - 0.5) / Math.sqrt(1 + 1e-5) : (2 * (v + 1)) / Math.sqrt(4 + 1e-5) + 1));
    Array.from(after.y.toFloat32()).forEach((v, i) => expect(v).toBeCloseTo(expected[i], 5));
  });

  it('BatchNormalization (9 -> 14) with training outputs: training_mode=1, the saved statistics go', () => {
    const m = modelAt(9, (b) => {
      const c = (name: string) => b.floats(name, [2], [1, 1]);
      const outs = b.multi('BatchNormalization', [b.input('x', f32([2, 2])), c('s'), c('b'), c('m'), c('v')], {}, 5);
      b.output(outs[0], 'y');
      b.output(outs[1], 'running_mean');
      b.graph.valueInfos.push(...outs.slice(1));
    });
    const saved = nodeOf(m, 'BatchNormalization').outputs.slice(3);
    upgradeOpset(m, 14);
    assertValid(m);
    const bn = nodeOf(m, 'BatchNormalization');
    expect([bn.outputs.length, bn.attrInt('training_mode')]).toEqual([3, 1]);
    expect([m.graph.valueInfos.length, saved.map((v) => v?.producer)]).toEqual([2, [null, null]]);
  });

  it('Scatter (9 -> 11) becomes ScatterElements', async () => {
    const m = modelAt(9, (b) => {
      const indices = b.initializer('i', Tensor.fromArray('i', DataType.INT64, [1, 2], BigInt64Array.from([1n, 3n])));
      b.output(b.op.Scatter(b.input('x', f32([1, 5])), indices, b.floats('u', [1, 2], [9, 8]), { axis: 1 }), 'y');
    });
    await upgradeAndCompare(m, 13, { x: floats('x', [1, 5]) });
    expect(ops(m)).toEqual(['ScatterElements']);
  });

  it('RoiAlign (10 -> 16) keeps output_half_pixel, which was the old behaviour', async () => {
    const m = modelAt(10, (b) => {
      const rois = b.floats('rois', [1, 4], [0.3, 0.2, 2.7, 3.1]);
      const batch = b.initializer('bi', Tensor.fromArray('bi', DataType.INT64, [1], BigInt64Array.from([0n])));
      b.output(b.op.RoiAlign(b.input('x', f32([1, 1, 4, 4])), rois, batch, { output_height: 2, output_width: 2, sampling_ratio: 2 }), 'y');
    });
    await upgradeAndCompare(m, 16, { x: floats('x', [1, 1, 4, 4]) }, 1e-6);
    expect(nodeOf(m, 'RoiAlign').attrString('coordinate_transformation_mode')).toBe('output_half_pixel');
  });

  it('GridSample (16 -> 20) renames bilinear and bicubic', () => {
    const m = modelAt(16, (b) => {
      const x = b.input('x', f32([1, 1, 3, 3]));
      const grid = b.input('grid', f32([1, 2, 2, 2]));
      b.output(b.op.GridSample(x, grid, { mode: 'bicubic' }), 'y');
    });
    upgradeOpset(m, 20);
    expect(nodeOf(m, 'GridSample').attrString('mode')).toBe('cubic');
  });

  it('GroupNormalization (18 -> 21): per-group scale and bias are repeated per channel', () => {
    const m = modelAt(18, (b) => {
      b.output(
        b.op.GroupNormalization(b.input('x', f32([1, 4, 2])), b.floats('s', [2], [2, 3]), b.floats('b', [2], [0, 1]), { num_groups: 2 }),
        'y',
      );
    });
    upgradeOpset(m, 21);
    assertValid(m);
    const gn = nodeOf(m, 'GroupNormalization');
    expect([1, 2].map((i) => gn.inputs[i]?.constTensor()?.toNumbers())).toEqual([
      [2, 2, 3, 3],
      [0, 0, 1, 1],
    ]);
  });

  it('DFT (17 -> 20): axis becomes the int64 scalar input 2', () => {
    const m = modelAt(17, (b) => b.output(b.op.DFT(b.input('x', f32([1, 8, 1])), { axis: 1 }), 'y'));
    upgradeOpset(m, 20);
    const dft = nodeOf(m, 'DFT');
    expect([dft.inputs[1], dft.inputs[2]?.constTensor()?.dims, ints(dft, 2)]).toEqual([null, [], [1]]);
  });
});

describe('steps that change nothing', () => {
  it('ConvTranspose (1 -> 11) with SAME_UPPER and odd padding, and LRN (1 -> 13): ONNX Runtime computes both versions alike', async () => {
    const m = modelAt(10, (b) => {
      const w = b.floats('w', [1, 1, 3, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
      const y = b.op.ConvTranspose(b.input('x', f32([1, 1, 2, 2])), w, { auto_pad: 'SAME_UPPER', strides: [2, 2] });
      b.output(b.op.LRN(y, { size: 3, alpha: float(1e-2), beta: float(0.75), bias: float(1) }), 'y');
    });
    const [convTranspose, lrn] = m.graph.nodes;
    const attributes = [convTranspose.attributes, lrn.attributes];
    const { report } = await upgradeAndCompare(m, 13, { x: floats('x', [1, 1, 2, 2]) });
    expect([report.converted, report.unchanged, m.graph.nodes, [convTranspose.attributes, lrn.attributes]]).toEqual([
      {},
      2,
      [convTranspose, lrn],
      attributes,
    ]);
  });
});

describe('the first opsets (ONNX Runtime runs none of these originals; the converted model is checked by hand)', () => {
  it('Add (6 -> 7) with legacy broadcast along axis 1: the constant operand gets trailing 1s', async () => {
    const m = modelAt(6, (b) =>
      b.output(b.op.Add(b.input('x', f32([2, 3, 2])), b.floats('c', [3], [10, 20, 30]), { broadcast: 1, axis: 1 }), 'y'),
    );
    upgradeOpset(m, 7);
    assertValid(m);
    expect([nodeOf(m, 'Add').attributes, nodeOf(m, 'Add').inputs[1]?.constTensor()?.dims]).toEqual([[], [3, 1]]);
    const x = floats('x', [2, 3, 2]);
    const y = (await runModel(m, { x })).y.toFloat32();
    Array.from(x.toFloat32()).forEach((v, i) => expect(y[i]).toBe(Math.fround(v + [10, 20, 30][Math.floor(i / 2) % 3])));
  });

  it('Mul (6 -> 7) broadcasting a computed operand along axis 0 inserts an Unsqueeze', () => {
    const m = modelAt(6, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.op.Mul(x, b.op.Relu(b.input('s', f32([2]))), { broadcast: 1, axis: 0 }), 'y');
    });
    upgradeOpset(m, 13);
    assertValid(m);
    expect(ops(m)).toEqual(['Relu', 'Unsqueeze', 'Mul']);
    expect(ints(nodeOf(m, 'Unsqueeze'), 1)).toEqual([1]);
  });

  it('PRelu (6 -> 7): a per-channel slope is reshaped to broadcast over the spatial axes', async () => {
    const m = modelAt(6, (b) => b.output(b.op.PRelu(b.input('x', f32([1, 3, 2])), b.floats('slope', [3], [0.1, 0.2, 0.3])), 'y'));
    upgradeOpset(m, 9);
    expect(nodeOf(m, 'PRelu').inputs[1]?.constTensor()?.dims).toEqual([3, 1]);
    const x = floats('x', [1, 3, 2]);
    const y = (await runModel(m, { x })).y.toFloat32();
    Array.from(x.toFloat32()).forEach((v, i) =>
      expect(y[i]).toBe(v >= 0 ? v : Math.fround(v * Math.fround([0.1, 0.2, 0.3][Math.floor(i / 2)]))),
    );
  });

  it('Cast (1 -> 6) names its type by number; Concat (1 -> 4) writes its old default axis 1; Selu (1 -> 6) keeps its old defaults', () => {
    const m = modelAt(1, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.op.Cast(b.op.Concat(x, x), { to: 'INT32' }), 'y');
      b.output(b.op.Selu(x, { consumed_inputs: [0] }), 'z');
    });
    upgradeOpset(m, 7);
    assertValid(m);
    expect(m.graph.nodes.map((n) => [n.opType, n.attributes.map((a) => [a.name, a.i ?? a.f])])).toEqual([
      ['Concat', [['axis', 1n]]],
      ['Cast', [['to', BigInt(DataType.INT32)]]],
      [
        'Selu',
        [
          ['alpha', 1.6732],
          ['gamma', 1.0507],
        ],
      ],
    ]);
  });

  it('Tile (1 -> 6): tiles along one axis become repeats for every axis; Pad (1 -> 2) renames paddings', () => {
    const m = modelAt(1, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.op.Tile(x, b.floats('t', [1], [3]), b.floats('a', [1], [1])), 'y');
      b.output(b.op.Pad(x, { paddings: [1, 1, 0, 0] }), 'z');
    });
    upgradeOpset(m, 7);
    assertValid(m);
    const tile = nodeOf(m, 'Tile');
    expect([tile.inputs.length, ints(tile, 1), nodeOf(m, 'Pad').attrInts('pads')]).toEqual([2, [1, 3], [1, 1, 0, 0]]);
  });

  it('Split (1 -> 2) takes constant sizes from its second input; LpPool (1 -> 2) gets an integer p; Upsample (1 -> 7) gets scales', () => {
    const m = modelAt(1, (b) => {
      const x = b.input('x', f32([1, 1, 4, 4]));
      const [p, q] = b.multi('Split', [x, b.floats('sizes', [2], [1, 3])], { axis: 2 }, 2);
      b.output(p, 'p');
      b.output(q, 'q');
      b.output(b.op.LpPool(x, { p: float(2), kernel_shape: [2, 2] }), 'pooled');
      b.output(b.op.Upsample(x, { height_scale: float(2), width_scale: float(3), mode: 'bilinear' }), 'up');
    });
    upgradeOpset(m, 7);
    assertValid(m);
    const [split, pool, upsample] = m.graph.nodes;
    expect([
      split.inputs.length,
      split.attrInts('split'),
      pool.attr('p')?.i,
      upsample.attr('scales')?.floats,
      upsample.attrString('mode'),
    ]).toEqual([1, [1, 3], 2n, [1, 1, 2, 3], 'linear']);
  });
});

describe('refusals', () => {
  const softmax17 = () => modelAt(17, (b) => b.output(b.op.Softmax(b.input('x', f32([2]))), 'y'));

  it('a downgrade, an opset ONNX Runtime does not run, and a number that is no opset', () => {
    expect(() => upgradeOpset(softmax17(), 13)).toThrow(`target opset 13 is older than the model's opset 17: opsets can only be raised`);
    expect(() => upgradeOpset(softmax17(), 27)).toThrow(
      `target opset 27 is newer than ONNX Runtime runs; the newest it runs is ${MAX_ORT_OPSET}`,
    );
    expect(() => upgradeOpset(softmax17(), 16.5)).toThrow('target opset 16.5 is not an ONNX opset');
    expect(MAX_ORT_OPSET).toBe(26);
  });

  it('a node that cannot be converted names itself, its op and the step', () => {
    const upsample = modelAt(9, (b) =>
      b.output(b.op.Upsample(b.input('x', f32([1, 1, 2, 2])), b.floats('s', [4], [1, 1, 2, 2]), { mode: 'foo' }), 'y'),
    );
    upsample.graph.nodes[0].name = '/x/Upsample';
    expect(() => upgradeOpset(upsample, 17)).toThrow(
      `node /x/Upsample (Upsample): cannot upgrade from opset 9 to 10: mode 'foo' has no Resize equivalent`,
    );

    const scan = modelAt(8, (b) => {
      const body = new Graph('body');
      b.output(b.node('Scan', [null, b.input('x', f32([1, 2, 3]))], { body, num_scan_inputs: 1 }).outputs[0]!, 'y');
    });
    expect(() => upgradeOpset(scan, 9)).toThrow(
      `node Scan (Scan): cannot upgrade from opset 8 to 9: Scan-8 scans a batch of sequences (batch axis, sequence_lens) and Scan-9 has no batch axis`,
    );

    const resize = modelAt(10, (b) => b.output(b.op.Resize(b.input('x', f32([1, 1, 4, 4])), b.input('s', f32([4]))), 'y'));
    expect(() => upgradeOpset(resize, 11)).toThrow(
      `node Resize (Resize): cannot upgrade from opset 10 to 11: nearest resizing rounds down when enlarging and up when shrinking; the scales are not constant, so no single nearest_mode says which`,
    );
    const mixed = modelAt(10, (b) => b.output(b.op.Resize(b.input('x', f32([1, 1, 4, 4])), b.floats('s', [4], [1, 1, 2, 0.5])), 'y'));
    expect(() => upgradeOpset(mixed, 11)).toThrow(
      `node Resize (Resize): cannot upgrade from opset 10 to 11: scales [1, 1, 2, 0.5] enlarge some axes and shrink others, which no single nearest_mode rounds as before`,
    );

    const tf = modelAt(11, (b) => {
      const roi = b.floats('roi', [0], []);
      b.output(
        b.op.Resize(b.input('x', f32([1, 1, 4, 4])), roi, b.floats('s', [4], [1, 1, 0.5, 0.5]), {
          coordinate_transformation_mode: 'tf_half_pixel_for_nn',
        }),
        'y',
      );
    });
    expect(() => upgradeOpset(tf, 13)).toThrow(
      `node Resize (Resize): cannot upgrade from opset 12 to 13: coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed and has no equivalent`,
    );

    const broadcast = modelAt(6, (b) =>
      b.output(
        b.op.Add(b.input('x', { kind: 'tensor', elemType: DataType.FLOAT }), b.input('c', f32([3])), { broadcast: 1, axis: 1 }),
        'y',
      ),
    );
    expect(() => upgradeOpset(broadcast, 7)).toThrow(
      `node Add (Add): cannot upgrade from opset 6 to 7: broadcasting along axis 1 needs the ranks of both inputs, and they are unknown`,
    );

    const experimental = modelAt(7, (b) => b.output(b.op.ImageScaler(b.input('x', f32([1, 3, 2, 2]))), 'y'));
    expect(() => upgradeOpset(experimental, 17)).toThrow(
      `node ImageScaler (ImageScaler): ImageScaler is not an operator of the default ONNX domain (experimental and custom ops need their own domain)`,
    );
  });

  it('is all-or-nothing: when the last node is refused, the nodes before it are not converted either', () => {
    const m = modelAt(9, (b) => {
      const x = b.input('x', f32([1, 1, 2, 2]));
      const y = b.op.Slice(b.op.Clip(x, { min: float(0) }), { starts: [0], ends: [1], axes: [0] });
      b.output(b.op.Upsample(y, b.floats('s', [4], [1, 1, 2, 2]), { mode: 'cubic' }), 'y');
    });
    const before = encodeModel(m);
    expect(() => upgradeOpset(m, 17)).toThrow(
      `node Upsample (Upsample): cannot upgrade from opset 9 to 10: mode 'cubic' has no Resize equivalent`,
    );
    expect(Buffer.from(encodeModel(m)).equals(Buffer.from(before))).toBe(true);
  });

  it('an attribute given by the enclosing function cannot become an input', () => {
    const m = modelAt(11, (b) => b.output(b.node('Shrink', [b.input('x', f32([2]))], {}, 1, 'local').outputs[0]!, 'y'));
    const body = new Graph('Shrink');
    const x = body.addInput(new Value('X'));
    const squeeze = body.appendNode(
      new Node('Unsqueeze', [x], [new Value('Y')], [{ name: 'axes', type: AttributeType.INTS, refAttrName: 'where' }]),
    );
    body.outputs.push(squeeze.outputs[0]!);
    const fn = new ModelFunction('local', 'Shrink', body);
    fn.opsetImports = [{ domain: '', version: 11 }];
    fn.attributeNames = ['where'];
    m.functions.push(fn);
    m.opsetImports.push({ domain: 'local', version: 1 });
    expect(() => upgradeOpset(m, 13)).toThrow(
      `node #0 of graph 'Shrink' (Unsqueeze): cannot upgrade from opset 12 to 13: attribute 'axes' refers to function attribute 'where'; its value must be known to become an input`,
    );
  });
});

describe('what the pass keeps', () => {
  it('custom domains are left alone and listed with their version', () => {
    const m = modelAt(11, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.node('FastGelu', [b.op.Unsqueeze(x, { axes: [0] })], {}, 1, 'com.microsoft').outputs[0]!, 'y');
    });
    m.opsetImports.push({ domain: 'com.microsoft', version: 1 });
    const gelu = nodeOf(m, 'FastGelu');
    const attributes = gelu.attributes;
    const report = upgradeOpset(m, 17);
    expect(report.customDomains).toEqual([{ domain: 'com.microsoft', version: 1, nodes: 1 }]);
    expect([gelu.domain, gelu.attributes, m.opsetVersion('com.microsoft')]).toEqual(['com.microsoft', attributes, 1]);
    expect(summarizeUpgrade(report)).toBe(
      'opset 11 -> 17: 1 node converted (Unsqueeze 1), 0 unchanged, 1 constants added, IR version 6 -> 8, left alone: 1 com.microsoft node',
    );
  });

  it('converts inside If branches, with the constants in the branch', async () => {
    const m = modelAt(11, (b) => {
      const x = b.input('x', f32([2, 3]));
      const branch = (name: string, axis: number) => {
        const g = new Graph(name);
        const y = new Node(
          'Unsqueeze',
          [x],
          [new Value(`${name}_y`, { kind: 'tensor', elemType: DataType.FLOAT })],
          [{ name: 'axes', type: AttributeType.INTS, ints: [BigInt(axis)] }],
        );
        g.appendNode(y);
        g.outputs.push(y.outputs[0]!);
        return g;
      };
      const cond = b.input('cond', tensorType(DataType.BOOL, []));
      b.output(b.op.If(cond, { then_branch: branch('then', 0), else_branch: branch('else', 2) }), 'y');
    });
    const feeds = (c: boolean) => ({
      x: floats('x', [2, 3]),
      cond: Tensor.fromArray('cond', DataType.BOOL, [], Uint8Array.from([c ? 1 : 0])),
    });
    const before = [await runModel(m, feeds(true)), await runModel(m, feeds(false))];
    const report = upgradeOpset(m, 13);
    assertValid(m);
    expect(report.converted).toEqual({ Unsqueeze: 2 });
    const branches = nodeOf(m, 'If').subgraphs();
    expect(branches.map((g) => g.initializers.map((v) => v.initializer!.toNumbers()))).toEqual([[[0]], [[2]]]);
    expect(maxDifference(before[0], await runModel(m, feeds(true)))).toBe(0);
    expect(maxDifference(before[1], await runModel(m, feeds(false)))).toBe(0);
  });

  it('converts model-local functions at their own opset, with Constant nodes (functions hold no initializers)', async () => {
    const m = modelAt(11, (b) => b.output(b.node('SumRows', [b.input('x', f32([2, 3]))], {}, 1, 'local').outputs[0]!, 'y'));
    const body = new Graph('SumRows');
    const fx = body.addInput(new Value('X'));
    body.outputs.push(
      body.appendNode(new Node('ReduceSum', [fx], [new Value('Y')], [{ name: 'axes', type: AttributeType.INTS, ints: [1n] }])).outputs[0]!,
    );
    const fn = new ModelFunction('local', 'SumRows', body);
    fn.opsetImports = [{ domain: '', version: 11 }];
    m.functions.push(fn);
    m.opsetImports.push({ domain: 'local', version: 1 });
    const { report } = await upgradeAndCompare(m, 13, { x: floats('x', [2, 3]) }, 1e-6);
    expect(report.functions).toEqual([{ name: 'SumRows', domain: 'local', from: 11, to: 13 }]);
    expect([fn.opsetImports, body.nodes.map((n) => n.opType), body.initializers]).toEqual([
      [{ domain: '', version: 13 }],
      ['Constant', 'ReduceSum'],
      [],
    ]);
    expect(report.customDomains).toEqual([{ domain: 'local', version: 1, nodes: 1 }]);
  });

  it('raises the IR version as far as the target opset needs, never lowers it', () => {
    const ir = (from: number, target: number, irVersion?: number) => {
      const m = softmaxAt(from);
      if (irVersion !== undefined) m.irVersion = irVersion;
      upgradeOpset(m, target);
      return m.irVersion;
    };
    expect([ir(9, 13), ir(9, 17), ir(9, 19), ir(9, 21), ir(9, 23), ir(9, 26), ir(9, 13, 10)]).toEqual([7, 8, 9, 10, 11, 13, 10]);
  });

  it('unchanged nodes stay the same objects; converted ones keep their node, name and output values', () => {
    const m = modelAt(9, (b) => {
      const x = b.input('x', f32([2, 3]));
      b.output(b.op.Relu(b.op.Unsqueeze(x, { axes: [0] })), 'y');
    });
    const [unsqueeze, relu] = m.graph.nodes;
    const [out, name] = [unsqueeze.outputs[0], unsqueeze.name];
    upgradeOpset(m, 17);
    expect(m.graph.nodes).toEqual([unsqueeze, relu]);
    expect([unsqueeze.outputs[0], unsqueeze.name, relu.inputs[0]]).toEqual([out, name, out]);
    expect(unsqueeze.inputs[1]?.name).toBe(`${name}/axes`);
  });

  it('as a pass: modified only when the opset rises; atLeast leaves newer models alone', () => {
    const run = (model: ReturnType<typeof softmaxAt>, target: number, atLeast?: boolean) =>
      runPasses(model, [opsetUpgradePass({ target, atLeast })], { verify: true }).passes[0];
    const up = run(softmaxAt(12), 17);
    expect([up.modified, up.summary]).toEqual([true, 'opset 12 -> 17: 0 nodes converted, 1 unchanged, IR version 7 -> 8']);
    expect(run(softmaxAt(17), 17)).toMatchObject({ modified: false, summary: 'opset 17: already at the target; nothing to do' });
    expect(run(softmaxAt(18), 17, true)).toMatchObject({ modified: false, summary: 'opset 18: already at a newer opset; nothing to do' });
    expect(() => run(softmaxAt(18), 17)).toThrow(`target opset 17 is older than the model's opset 18: opsets can only be raised`);
  });
});

describe('for the passes that need a newer opset', () => {
  it('opsetTargetFor says how far to upgrade, or that the model is new enough', () => {
    expect([
      opsetTargetFor(softmaxAt(9), 11),
      opsetTargetFor(softmaxAt(9), 11, 14),
      opsetTargetFor(softmaxAt(14), 11),
      opsetTargetFor(softmaxAt(11), 11),
    ]).toEqual([11, 14, undefined, undefined]);
  });

  it("a default domain imported as 'ai.onnx' is upgraded in place", () => {
    const m = softmaxAt(12);
    m.opsetImports = [{ domain: 'ai.onnx', version: 12 }];
    expect(upgradeOpset(m, 13).from).toBe(12);
    expect(m.opsetImports).toEqual([{ domain: 'ai.onnx', version: 13 }]);
  });
});

function softmaxAt(opset: number) {
  return modelAt(opset, (b) => b.output(b.op.Softmax(b.input('x', f32([2, 3])), { axis: -1 }), 'y'));
}
