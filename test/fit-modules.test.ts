// Modules fitted from data in closed form. The engine recovers a linear map (and the projection it folds
// into) exactly on a linear problem; a span whose second layer is the identity gives back its first layer;
// folding the output map into the projection computes what applying it separately computes; on a
// nonlinear span the fitted module beats the training-free ones on data the fit never saw; spans are
// fitted in sequence; fits are deterministic; bad input is refused with nothing written.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { captureModule } from '../passes/modular/capture.js';
import { addContextMaps, CONTEXT_PARTS } from '../passes/modular/context.js';
import { extractModule } from '../passes/modular/extract.js';
import { downBias, downWeight, fitSite, setDownProjection } from '../passes/modular/fitted.js';
import { attentionBias, constantDerived, describeSpan } from '../passes/modular/span.js';
import { biasKeepRule, findPaddingMask } from '../passes/plugin/keep.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { describeInputs } from '../src/analysis/inputs.js';
import { makeContext } from '../src/analysis/patterns.js';
import { loadModule } from '../src/compile/load.js';
import { fitModules, type ModuleFitOptions } from '../src/decide/fit-modules.js';
import { appendModuleStatistics, foldMap, ModuleEquations, moduleShiftsOf, solveMap, solveRefit } from '../src/decide/module-statistics.js';
import { GraphBuilder, ModelBuilder } from '../src/ir/builder.js';
import type { Value } from '../src/ir/graph.js';
import type { Model } from '../src/ir/model.js';
import { NameAuthority } from '../src/ir/names.js';
import { Tensor } from '../src/ir/tensor.js';
import { toposort } from '../src/ir/transforms.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { type DataBatch, openData } from '../src/runtime/data.js';
import { openSession, run } from '../src/runtime/session.js';
import { verifyModels } from '../src/verify/numeric.js';
import { vcompile } from './helpers/cli.js';
import { FitScratch, type WeightEdit } from './helpers/fit-scratch.js';
import { buildTransformer, type TransformerConfig } from './helpers/transformer-gen.js';

const repo = path.resolve(import.meta.dirname, '..');
const scratch = new FitScratch('vcompile-module-fit-', {
  layers: 4,
  hidden: 16,
  heads: 2,
  ffnInner: 32,
  norm: 'pre',
  activation: 'gelu',
  bias: true,
  mask: true,
  causal: false,
  vocab: 50,
  seed: 3,
});
const { dir, base } = scratch;

/** A generated transformer (weights edited by name with `edit`), written; returns its path. */
const model = (name: string, config: Partial<TransformerConfig>, edit?: WeightEdit) => scratch.model(name, config, edit);
const data = (name: string, samples: number, seed = 1, vocab?: number, length?: number) => scratch.data(name, samples, seed, vocab, length);

async function fitOn(file: string, dataFile: string, options: ModuleFitOptions) {
  return fitModules(file, fs.readFileSync(file), openData(dataFile, describeInputs(loadModel(file))), options);
}

/** `file` with `modules` (key L{S}-{E} -> module, or --module values) spliced in, written; returns its path. */
const compiled = (file: string, modules: Map<string, Model> | string[], name: string) => scratch.withModules(file, modules, name);

describe('the fit engine', () => {
  it('recovers a linear map, and the projection it folds into, exactly on a linear problem', async () => {
    const [f, d] = [12, 6];
    const rng = new Rng(7, 'linear');
    const random = (n: number, scale = 1, offset = 0) => Float32Array.from({ length: n }, () => offset + scale * (rng.next() * 2 - 1));
    const w = random(f * d, 0.5);
    const bias = random(d, 0.5);
    const t = random(d * d);
    const t0 = random(d, 2);
    // a capture-like model: a -> inc = a W + b -> target = inc T + t0, every position real
    const b = new ModelBuilder(17, 'linear');
    const a = b.input('a', tensorType(DataType.FLOAT, ['batch', 'seq', f]));
    const inc = b.op.Add(b.op.MatMul(a, b.floats('w', [f, d], w)), b.floats('b', [d], bias));
    const target = b.op.Add(b.op.MatMul(inc, b.floats('t', [d, d], t)), b.floats('t0', [d], t0));
    const keep = b.op.ConstantOfShape(b.op.Slice(b.op.Shape(a), b.int64s('s', [0]), b.int64s('e', [2])), {
      value: Tensor.fromArray('one', DataType.FLOAT, [1], new Float32Array([1])),
    });
    const y = b.output(b.op.Identity(target), 'y', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
    appendModuleStatistics(b.model, { a, inc, target, y, keep }, f, d);
    assertValid(b.model, 'statistics');
    const session = await openSession(b.model);
    const batch = (seed: number) => ({ a: Tensor.fromArray('a', DataType.FLOAT, [3, 10, f], random(3 * 10 * f, 1, 3 + seed)) });
    const zero = { vcompile_fit_shift_a: vec(new Float32Array(f)), vcompile_fit_shift_inc: vec(new Float32Array(d)) };
    const shifts = moduleShiftsOf(await run(session, { ...batch(0), ...zero }));
    expect(Math.abs(shifts.a[0] - 3)).toBeLessThan(0.5); // the features sit far from 0: the shifts matter
    const feeds = { vcompile_fit_shift_a: vec(shifts.a), vcompile_fit_shift_inc: vec(shifts.inc) };
    const stats = { fit: new ModuleEquations(f, d), held: new ModuleEquations(f, d) };
    for (const seed of [0, 1]) stats.fit.add(await run(session, { ...batch(seed), ...feeds }));
    stats.held.add(await run(session, { ...batch(2), ...feeds }));
    await session.release();
    expect(stats.fit.count).toBe(60);

    const map = await solveMap(stats, shifts.inc, { weight: w, bias }, undefined);
    const close = (actual: ArrayLike<number>, expected: ArrayLike<number>) =>
      Math.max(...Array.from(expected, (e, i) => Math.abs(actual[i] - e))) / Math.max(...Array.from(expected, Math.abs));
    expect(close(map.map.t, t)).toBeLessThan(1e-4);
    expect(close(map.map.t0, t0)).toBeLessThan(1e-4);
    expect(map.unexplained).toBeLessThan(1e-8);
    const folded = await foldMap({ weight: w, bias }, Float64Array.from(t), Float64Array.from(t0));
    expect(close(map.weight, folded.weight)).toBeLessThan(1e-4);
    expect(close(map.bias, folded.bias)).toBeLessThan(1e-4);
    // the refit solves for the folded projection directly
    const refit = await solveRefit(stats, shifts.a);
    expect(close(refit.weight, folded.weight)).toBeLessThan(1e-3);
    expect(close(refit.bias, folded.bias)).toBeLessThan(1e-3);
    expect(refit.unexplained).toBeLessThan(1e-8);
  });

  it('folds the output map into the down projection: the same outputs as applying it separately', async () => {
    // layer 0's FFN output weight stored transposed ([d, f] behind a Transpose), to read it as the model does
    const m = buildTransformer({ ...base, layers: 2 });
    const weight = m.graph.initializers.find((v) => v.name === 'layer0.ffn.output.weight')!;
    const matmul = weight.uses()[0].node;
    const [f, d] = weight.initializer!.dims;
    const values = weight.initializer!.toFloat32();
    const transposed = new Float32Array(f * d);
    for (let i = 0; i < f; i++) for (let j = 0; j < d; j++) transposed[j * f + i] = values[i * d + j];
    const b = new GraphBuilder(m.graph, NameAuthority.forModel(m));
    matmul.setInput(1, b.op.Transpose(b.floats('stored_transposed', [d, f], transposed), { perm: [1, 0] }));
    toposort(m.graph);
    const analysis = analyzeTransformer(m);
    const site = fitSite(analysis, 0, 'test');
    expect(site.down.weight.transposed).toBe(true);
    expect(Array.from(downWeight(site))).toEqual(Array.from(values));

    const rng = new Rng(3, 'map');
    const t = Float64Array.from({ length: d * d }, () => rng.next() * 2 - 1);
    const t0 = Float64Array.from({ length: d }, () => rng.next() - 0.5);
    // folded: W T and b T + t0 written into the projection
    const fold = extractModule(m, 0, 0, analysis);
    const projection = await foldMap({ weight: downWeight(site), bias: downBias(site) }, t, t0);
    setDownProjection(fold.module, fold.values, site, projection.weight, projection.bias);
    assertValid(fold.module, 'folded');
    // separate: inc T + t0 as a MatMul and an Add after the block's output
    const apart = extractModule(m, 0, 0, analysis);
    const inc = apart.values.get(site.ffn.ffn!.output)!;
    const uses = inc.uses();
    const ab = new GraphBuilder(apart.module.graph, NameAuthority.forModel(apart.module));
    const mapped = ab.op.Add(ab.op.MatMul(inc, ab.floats('t', [d, d], t)), ab.floats('t0', [d], t0));
    for (const use of uses) use.node.setInput(use.index, mapped);
    toposort(apart.module.graph);
    assertValid(apart.module, 'apart');
    expect(apart.module.graph.nodes.filter((n) => n.opType === 'MatMul').length).toBe(
      fold.module.graph.nodes.filter((n) => n.opType === 'MatMul').length + 1,
    );

    const hidden = Tensor.fromArray(
      'hidden',
      DataType.FLOAT,
      [2, 5, d],
      Float32Array.from({ length: 2 * 5 * d }, () => rng.next() * 4 - 2),
    );
    const bias = Tensor.fromArray('attention_bias', DataType.FLOAT, [2, 1, 1, 5], new Float32Array(10));
    const outputs: Float32Array[] = [];
    for (const module of [fold.module, apart.module]) {
      const session = await openSession(module);
      outputs.push((await run(session, { hidden, attention_bias: bias })).hidden_out.toFloat32());
      await session.release();
    }
    const worst = Math.max(...outputs[0].map((v, i) => Math.abs(v - outputs[1][i])));
    expect(worst).toBeLessThan(1e-4);
  });
});

describe('context maps', () => {
  it('add [h(t-1) ; h(t+1) ; mean(h)] C over real positions to the layer, as a float64 reference computes it', async () => {
    const file = model('context', { norm: 'pre', seed: 21 });
    const original = loadModel(file);
    const analysis = analyzeTransformer(original);
    const layer = analysis.layers[0];
    const bias = attentionBias(describeSpan(analysis, 0, 0, constantDerived(original.graph), 'test'), analysis, 'test')!;
    const mask = findPaddingMask(layer.selfAttention, layer.input, analysis.context)!;
    expect(biasKeepRule(bias, mask, analysis.context)).toEqual({ rule: 'zero' });
    // the stream entering layer 0 and its attention bias, for a padded batch
    const batch = openData(data('context-data', 5, 4), describeInputs(original)).batches(5)[0];
    expect(batch.real).toBeDefined();
    const session = await openSession(file, { extraOutputs: [layer.input.name, bias.name] });
    const entering = await run(session, batch.feeds).finally(() => session.release());
    const feeds = { hidden: entering[layer.input.name], attention_bias: entering[bias.name] };
    const d = 16;
    const rng = new Rng(7, 'context maps');
    const maps = Float32Array.from({ length: CONTEXT_PARTS * d * d }, () => rng.next() - 0.5);
    // layer 0 as a module, with h (the feed-forward residual input) as a second output; with and without maps
    const runLayer = async (withMaps: boolean) => {
      const m = loadModel(file);
      const a = analyzeTransformer(m);
      const { module, values } = extractModule(m, 0, 0, a);
      const site = fitSite(a, 0, 'test');
      if (withMaps) addContextMaps(module, values, site, maps, 'zero');
      assertValid(module, 'context maps');
      const [analyzed] = analyzeTransformer(module).layers;
      module.graph.outputs.push(values.get(site.ffn.streamIn)!);
      const s = await openSession(module);
      try {
        const out = await run(s, feeds);
        return { outputs: module.graph.outputs.map((v) => out[v.name].toFloat32()), analyzed };
      } finally {
        await s.release();
      }
    };
    const {
      outputs: [plain, h],
      analyzed: before,
    } = await runLayer(false);
    const {
      outputs: [withMaps, sameH],
      analyzed: after,
    } = await runLayer(true);
    expect(sameH).toEqual(h);
    // still one layer to the analysis: the maps are a side term of its feed-forward sublayer, counted in its weights
    expect(before.sublayers[1].side).toBeUndefined();
    expect(after.sublayers[1].side?.add.opType).toBe('Add');
    expect(after.ffn.output).toBe(after.sublayers[1].side?.add.inputs.find((v) => v !== after.sublayers[1].side?.value));
    expect(after.paramCount - before.paramCount).toBe(CONTEXT_PARTS * d * d);
    const [rows, seq] = feeds.hidden.dims;
    const real = (r: number, t: number) => t >= 0 && t < seq && batch.real![r * seq + t] === 1;
    let worst = 0;
    let largest = 0;
    for (let r = 0; r < rows; r++) {
      const mean = new Float64Array(d);
      let count = 0;
      for (let t = 0; t < seq; t++)
        if (real(r, t)) {
          count++;
          for (let i = 0; i < d; i++) mean[i] += h[(r * seq + t) * d + i];
        }
      for (let t = 0; t < seq; t++) {
        const c = new Float64Array(CONTEXT_PARTS * d);
        for (let i = 0; i < d; i++) {
          if (real(r, t - 1)) c[i] = h[(r * seq + t - 1) * d + i];
          if (real(r, t + 1)) c[d + i] = h[(r * seq + t + 1) * d + i];
          c[2 * d + i] = mean[i] / count;
        }
        for (let j = 0; j < d; j++) {
          let expected = 0;
          for (let i = 0; i < CONTEXT_PARTS * d; i++) expected += c[i] * maps[i * d + j];
          const at = (r * seq + t) * d + j;
          worst = Math.max(worst, Math.abs(withMaps[at] - plain[at] - expected));
          largest = Math.max(largest, Math.abs(expected));
        }
      }
    }
    expect(largest).toBeGreaterThan(0.1);
    expect(worst).toBeLessThan(1e-5 * Math.max(1, largest));
  });
});

describe('real positions off an attention bias', () => {
  /** biasKeepRule for `bias(mask)`, mask an int64 [batch, seq] input (1 at real positions) */
  const ruleOf = (bias: (b: ModelBuilder, mask: Value) => Value) => {
    const b = new ModelBuilder(17);
    const mask = b.input('attention_mask', tensorType(DataType.INT64, ['batch', 'seq']));
    const value = bias(b, mask);
    b.output(value, 'bias');
    const ctx = makeContext(b.model);
    return biasKeepRule(value, { input: mask, realWhen: 'nonzero', elemType: DataType.INT64 }, ctx);
  };
  const perKey = (b: ModelBuilder, v: Value) => b.op.Unsqueeze(v, b.int64s('axes', [1, 2]));
  const float = (b: ModelBuilder, v: Value) => b.op.Cast(v, { to: DataType.FLOAT });

  it('as its zeros (an additive 0 / -10000 bias), its non-zeros (the mask itself), or the values above -10000', () => {
    const additive = (b: ModelBuilder, m: Value) => b.op.Mul(b.op.Sub(b.scalar('one', 1), float(b, perKey(b, m))), b.scalar('big', -10000));
    expect(ruleOf(additive)).toEqual({ rule: 'zero' });
    expect(ruleOf((b, m) => float(b, perKey(b, m)))).toEqual({ rule: 'nonzero' });
    expect(ruleOf((b, m) => b.op.Cast(perKey(b, m), { to: DataType.BOOL }))).toEqual({ rule: 'nonzero' });
    expect(ruleOf((b, m) => b.op.Add(additive(b, m), b.scalar('offset', -0.5)))).toEqual({ rule: 'above' });
  });

  it('not from a bias with one value per query and key, nor one that masks no key', () => {
    const square = ruleOf((b, m) => b.op.Mul(perKey(b, m), b.op.Unsqueeze(m, b.int64s('axes', [1, 3]))));
    expect(square).toEqual({ why: 'it has shape [6, 1, 6, 6] for a [6, 6] mask, not one value per key ([batch, 1, ..., 1, seq])' });
    expect(ruleOf((b, m) => b.op.Add(b.op.Mul(float(b, perKey(b, m)), b.scalar('zero', 0)), b.scalar('three', 3)))).toEqual({
      why: "the keys it masks are not the padding mask's",
    });
  });
});

describe('fitted modules', () => {
  const calibration = data('calibration', 60);
  const heldOut = data('held-out', 20, 2);

  it('give back the first layer when the second is the identity (zero output projections)', async () => {
    const identity = model('identity', { layers: 3 }, (values, name) => {
      if (/^layer1\.(attention|ffn)\.output\./.test(name)) values.fill(0);
    });
    const result = await fitOn(identity, calibration, { spans: [{ start: 0, end: 1 }] });
    const [fit] = result.spans;
    // every candidate computes what layer 0 computes: the map recovers T = I, the refit W and b
    expect(fit.heldOut.init).toBeLessThan(1e-10);
    expect(fit.heldOut.map).toBeLessThan(1e-8);
    expect(fit.heldOut.refit).toBeLessThan(1e-8);
    expect(fit.heldOut.context).toBeLessThan(1e-8);
    expect(fit.target.map).toBeLessThan(1e-8);
    expect(fit.target.refit).toBeLessThan(1e-8);
    expect(fit.heldOut.identity).toBeGreaterThan(0.01);
    const spliced = compiled(identity, result.modules, 'identity-fitted');
    const r = await verifyModels(identity, spliced, { data: openData(heldOut, describeInputs(loadModel(identity))) });
    expect(r.outputs[0].maxAbs).toBeLessThan(1e-4);
  });

  for (const norm of ['pre', 'post'] as const) {
    it(`on a nonlinear ${norm}-LN span beat keep-first, average and dropping it, on data the fit never saw`, async () => {
      const file = model(`nonlinear-${norm}`, { norm, seed: 11 });
      const result = await fitOn(file, calibration, { spans: [{ start: 0, end: 1 }] });
      const [fit] = result.spans;
      expect(fit.placement).toBe(norm);
      expect(fit.chosen).not.toBe('init');
      expect(fit.heldOut[fit.chosen]).toBeLessThan(0.5 * fit.heldOut.init);
      expect(fit.heldOut.init).toBeLessThan(fit.heldOut.identity);
      const specs = describeInputs(loadModel(file));
      const relative = async (out: string) => (await verifyModels(file, out, { data: openData(heldOut, specs) })).outputs[0].relative;
      const fitted = await relative(compiled(file, result.modules, `fitted-${norm}`));
      for (const kind of ['keep-first', 'average']) {
        expect(fitted).toBeLessThan(await relative(compiled(file, [`0-1=builtin:${kind}`], `${kind}-${norm}`)));
      }
    });
  }

  it('fit a later span on the stream the earlier fitted modules produce', async () => {
    const file = path.join(dir, 'nonlinear-post.onnx');
    const seen: { batch: DataBatch; stream: Tensor }[] = [];
    const result = await fitOn(file, calibration, {
      spans: [
        { start: 2, end: 3 },
        { start: 0, end: 1 },
      ],
      onStream: (start, batch, stream) => start === 2 && seen.push({ batch, stream }),
    });
    expect(result.spans.map((s) => `${s.start}-${s.end}`)).toEqual(['0-1', '2-3']);
    const first = compiled(file, new Map([['L0-1', result.modules.get('L0-1')!]]), 'first-only');
    const entering = analyzeTransformer(loadModel(file)).layers[2].input.name;
    const atLayer2 = async (f: string, feeds: Record<string, Tensor>) => {
      const session = await openSession(f, { extraOutputs: [entering] });
      try {
        return (await run(session, feeds))[entering].toFloat32();
      } finally {
        await session.release();
      }
    };
    const { batch, stream } = seen[0];
    const fitted = stream.toFloat32();
    const farthest = (a: Float32Array) => Math.max(...a.map((v, i) => Math.abs(v - fitted[i])));
    expect(farthest(await atLayer2(first, batch.feeds))).toBeLessThan(1e-4);
    expect(farthest(await atLayer2(file, batch.feeds))).toBeGreaterThan(1e-2);
    const alone = await fitOn(file, calibration, { spans: [{ start: 2, end: 3 }] });
    expect(encodeModel(result.modules.get('L2-3')!)).not.toEqual(encodeModel(alone.modules.get('L2-3')!));
  });

  it('leave the context maps out of causal layers, saying why', async () => {
    const file = model('causal', { causal: true, norm: 'pre', seed: 13 });
    const result = await fitOn(file, calibration, { spans: [{ start: 0, end: 1 }] });
    expect(result.spans[0].context).toEqual({ skipped: 'causal self-attention: the maps would read the next position' });
    expect(result.spans[0].heldOut.context).toBeUndefined();
    expect(result.spans[0].chosen).not.toBe('context');
  });

  it('are deterministic, pass the module contract and record their provenance', async () => {
    const file = path.join(dir, 'nonlinear-pre.onnx');
    const options: ModuleFitOptions = { spans: [{ start: 1, end: 3 }], init: 'average', rank: 4, context: false };
    const a = await fitOn(file, calibration, options);
    const b = await fitOn(file, calibration, options);
    const module = a.modules.get('L1-3')!;
    expect(Buffer.from(encodeModel(module)).equals(Buffer.from(encodeModel(b.modules.get('L1-3')!)))).toBe(true);
    const saved = path.join(dir, 'provenance-L1-3.onnx');
    saveModel(module, saved);
    expect(loadModule(saved)).toMatchObject({ span: 3, start: 1, hidden: 16 });
    const fit = JSON.parse(module.getMetadata('vcompile.fit')!);
    expect(fit).toMatchObject({ model: a.modelSha256, data: a.dataSha256, start: 1, end: 3, init: 'average', rank: 4, samples: 48 });
    expect(Object.keys(fit.heldOut).sort()).toEqual(['identity', 'init', 'map', 'refit']);
    // one layer's worth of nodes: the fit adds no MatMul
    const layer = extractModule(loadModel(file), 1, 1).module;
    const count = (m: Model) => m.graph.nodes.filter((n) => n.opType === 'MatMul').length;
    expect(count(module)).toBe(count(layer));
    // with context maps (the default): deterministic too, two more MatMuls (the neighbours' [d, 2d], the mean's [d, d])
    const withContext: ModuleFitOptions = { spans: [{ start: 0, end: 1 }] };
    const c = await fitOn(file, calibration, withContext);
    const d = await fitOn(file, calibration, withContext);
    const contextModule = c.modules.get('L0-1')!;
    expect(Buffer.from(encodeModel(contextModule)).equals(Buffer.from(encodeModel(d.modules.get('L0-1')!)))).toBe(true);
    expect(c.spans[0]).toMatchObject({
      chosen: 'context',
      context: { keep: 'zero', macs: { perPosition: 2 * 16 * 16, perSequence: 16 * 16 } },
    });
    expect(count(contextModule)).toBe(count(layer) + 2);
  });

  it('capture a post-LN target that maps back through the norm', () => {
    const m = loadModel(path.join(dir, 'nonlinear-post.onnx'));
    const captured = captureModule(m, 1, 'keep-first');
    assertValid(m, 'capture');
    expect(m.graph.outputs.map((v) => v.name)).toEqual([
      'vcompile_capture_a',
      'vcompile_capture_inc',
      'vcompile_capture_target',
      'vcompile_capture_y',
      'vcompile_capture_keep',
    ]);
    expect(captured.target.producer?.opType).toBe('Identity');
  });
});

describe('vcompile module fit', () => {
  const calibration = data('cli', 40);
  const file = model('cli-model', { norm: 'post', seed: 9 });

  it('writes one module for one span, and a folder for several; both compile', () => {
    const one = path.join(dir, 'one.onnx');
    const r = vcompile('module', 'fit', file, '--layers', '1-2', '--data', calibration, '-o', one);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^layers +drop +keep-first +map +refit +context +chosen +lambda map +lambda refit +tokens +seconds$/m);
    expect(r.stdout).toMatch(/^1-2 +\d\.\d{4} +\d\.\d{4} +\d\.\d{4} +\d\.\d{4} +\d\.\d{4} +context /m);
    expect(r.stdout).toMatch(/^layers 1-2: context maps add 512 MACs per position and 256 per sequence to the module's layer$/m);
    const compiledOne = path.join(dir, 'one-compiled.onnx');
    expect(vcompile(file, '--module', `1-2=${one}`, '-o', compiledOne, '--no-verify').code).toBe(0);
    // the module's layer is still a layer: plugins around its blocks, not around the whole layer (the maps read the mask)
    expect(vcompile(compiledOne, '--plugin', '1=builtin:mean:2:ffn', '-o', path.join(dir, 'one-ffn.onnx'), '--no-verify').code).toBe(0);
    const layerScope = vcompile(compiledOne, '--plugin', '1=builtin:mean:2:layer', '-o', path.join(dir, 'one-layer.onnx'));
    expect(layerScope.code).toBe(2);
    expect(layerScope.stderr).toMatch(
      /^vcompile: layer 1 \(layer scope\): the block reads .* which follows the sequence length; it cannot run on the compressed sequence\n$/,
    );
    // --no-context: no context column value, and the module is one layer's nodes
    const plain = path.join(dir, 'one-plain.onnx');
    const p = vcompile('module', 'fit', file, '--layers', '1-2', '--data', calibration, '--no-context', '-o', plain, '--json');
    expect(p.code).toBe(0);
    const span = JSON.parse(p.stdout).spans[0];
    expect(span.context).toEqual({ skipped: 'not asked for' });
    expect(Object.keys(span.heldOut).sort()).toEqual(['identity', 'init', 'map', 'refit']);

    const out = path.join(dir, 'modules');
    const s = vcompile('module', 'fit', file, '--layers', '0-1,2-3', '--init', 'average', '--data', calibration, '-o', out, '--json');
    expect(s.code).toBe(0);
    expect(fs.readdirSync(out).sort()).toEqual(['L0-1.onnx', 'L2-3.onnx', 'fit.json']);
    const summary = JSON.parse(fs.readFileSync(path.join(out, 'fit.json'), 'utf8'));
    expect(summary.init).toBe('average');
    expect(summary.spans.map((x: { start: number }) => x.start)).toEqual([0, 2]);
    expect(Object.keys(summary.spans[0]).sort()).toEqual([
      'addedBias',
      'chosen',
      'context',
      'end',
      'heldOut',
      'heldOutTokens',
      'init',
      'lambda',
      'placement',
      'rank',
      'samples',
      'seconds',
      'start',
      'target',
      'tokens',
    ]);
    expect(JSON.parse(s.stdout).modules).toHaveLength(3);
    const c = vcompile(
      file,
      '--module',
      `0-1=${path.join(out, 'L0-1.onnx')}`,
      '--module',
      `2-3=${path.join(out, 'L2-3.onnx')}`,
      '-o',
      path.join(dir, 'two.onnx'),
    );
    expect(c.code).toBe(0);
  });

  it('in a compile: --module S-E=builtin:fit, then fitted plugins on the layers that remain, checked on unseen samples', () => {
    const out = path.join(dir, 'fit-compile.onnx');
    const r = vcompile(
      file,
      '--module',
      '0-1=builtin:fit',
      '--plugin',
      'builtin:fit:2',
      '--data',
      calibration,
      '--rank',
      '4',
      '-o',
      out,
      '--json',
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.moduleFit).toMatchObject({ samples: 32, init: 'keep-first' });
    expect(report.moduleFit.spans.map((s: { start: number }) => s.start)).toEqual([0]);
    expect(report.moduleFit.spans[0].context).toMatchObject({ keep: 'zero' });
    // the plugins go on the original layers 2 and 3, fitted on the stream the fitted module produces
    expect(report.fit[0].layers.map((l: { layer: number }) => l.layer)).toEqual([1, 2]);
    expect(report.passes.find((p: { name: string }) => p.name === 'modules').report.layerMap).toEqual([null, 2, 3]);
    expect(report.verify.inputs).toMatchObject({ kind: 'data', samples: 8 });
  });

  it('--target-speedup --fit-modules: fits the spans the placements use and ranks them on data', () => {
    const out = path.join(dir, 'assembled.onnx');
    const r = vcompile(file, '--target-speedup', '1.5', '--fit-modules', '--data', calibration, '--speedup-seq', '16', '-o', out, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.layersReplaced).toBe(3);
    expect(report.fidelity.metric).toBe('cosine on 8 held-out samples');
    expect(report.tiedPlans.map((p: { plan: string }) => p.plan)).toEqual(['layers 0-2 <- fitted L0-2', 'layers 1-3 <- fitted L1-3']);
    const best = Math.max(...report.tiedPlans.map((p: { fidelity: number }) => p.fidelity));
    expect(report.refitted.before).toBe(best);
    expect(report.fits.candidates.map((s: { start: number; end: number }) => `${s.start}-${s.end}`)).toEqual(['0-2', '1-3']);
    expect(fs.existsSync(out)).toBe(true);
  });

  const short = path.join(dir, 'short.jsonl');
  fs.writeFileSync(short, `${Array.from({ length: 6 }, (_, i) => JSON.stringify({ input_ids: [i, i + 1, i + 2] })).join('\n')}\n`);
  const refusals: [string, string[], RegExp | string, string?][] = [
    ['layers that do not exist', ['--layers', '3-4'], '--layers 3-4: layers 3-4 do not exist (the model has layers 0-3)'],
    ['overlapping spans', ['--layers', '0-1,1-2'], '--layers 0-1 and --layers 1-2 overlap (layer 1)'],
    [
      'too few samples to hold some out',
      ['--samples', '4'],
      /cli\.jsonl: 4 samples is too few to hold some out for choosing the fit; give at least 5$/,
    ],
    [
      'too few positions for the features',
      ['--data', 'SHORT'],
      '--layers 0-1: 15 calibration positions cannot fit the 33 features of the feed-forward output projection (its 32 inputs + 1); give more samples',
    ],
    ['a bad span', ['--layers', '0-1,x'], "--layers takes spans like 0-1 or 0-1,2-3 (0-based, inclusive), got '0-1,x'"],
    ['a bad rank', ['--rank', 'many'], "--rank must be a positive integer or full, got 'many'"],
    [
      'causal layers whose two masks a module cannot take',
      [],
      /^--layers 0-1: layers 0-1 read 2 values besides hidden and weights \(.*\); the module contract has one attention_bias$/,
      'causal',
    ],
    [
      'a fused residual',
      [],
      /^--layers 0-1: layer 0: the feed-forward block joins the stream in .*SkipLayerNormalization.*, a fused op; module fitting rewrites a plain Add \(fit the model before ONNX Runtime's fusions\)$/,
      'fused',
    ],
  ];
  for (const [what, flags, message, kind] of refusals) {
    it(`refuses ${what}: one line, exit 2, nothing written`, () => {
      const target =
        kind === 'causal'
          ? model('causal', { causal: true, causalStyle: 'where' })
          : kind === 'fused'
            ? path.join(repo, 'fixtures/bert_contrib_fused.onnx')
            : file;
      const given = new Map<string, string>([
        ['--layers', '0-1'],
        ['--data', kind === 'fused' ? data('fused', 10, 1, 100, 4) : calibration],
      ]);
      for (let i = 0; i < flags.length; i += 2) given.set(flags[i], flags[i + 1] === 'SHORT' ? short : flags[i + 1]);
      const out = path.join(dir, `never-${what.replaceAll(' ', '-')}`);
      const r = vcompile('module', 'fit', target, '-o', out, ...[...given].flat());
      expect(r.code).toBe(2);
      const line = r.stderr.replace(/^vcompile: /, '').trim();
      if (typeof message === 'string') expect(line).toBe(message);
      else expect(line).toMatch(message);
      expect(fs.existsSync(out)).toBe(false);
    });
  }

  it('vcompile module without fit prints its usage; another subcommand is named', () => {
    const bare = vcompile('module');
    expect(bare.code).toBe(2);
    expect(bare.stderr).toBe(
      'usage: vcompile module fit MODEL --layers S-E[,S-E] --data PATH -o OUT\n(vcompile module fit --help lists every option)\n',
    );
    expect(vcompile('module', 'fitt', file).stderr).toBe(
      "vcompile: unknown module command 'fitt' (the module command is fit: vcompile module fit MODEL --layers S-E[,S-E] --data PATH -o OUT)\n",
    );
  });

  it('refuses builtin:fit beside other modules, without data, and --no-context without a module fit', () => {
    const out = path.join(dir, 'never-compile.onnx');
    const mixed = vcompile(file, '--module', '0-1=builtin:fit', '--module', '2-3=builtin:average', '--data', calibration, '-o', out);
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toBe(
      'vcompile: --module 2-3=builtin:average: --module builtin:fit fits every module of the compile in sequence: give no other --module beside it\n',
    );
    const bare = vcompile(file, '--module', '0-1=builtin:fit', '-o', out);
    expect(bare.stderr).toBe('vcompile: --module 0-1=builtin:fit needs --data PATH (the calibration inputs)\n');
    const noData = vcompile(file, '--target-speedup', '1.5', '--fit-modules', '-o', out);
    expect(noData.stderr).toBe('vcompile: --fit-modules needs --data PATH (the calibration inputs)\n');
    const needless = 'vcompile: --no-context goes with --module S-E=builtin:fit or --fit-modules\n';
    const noFit = vcompile(file, '--module', '0-1=builtin:average', '--no-context', '-o', out);
    expect([noFit.code, noFit.stderr]).toEqual([2, needless]);
    const folder = vcompile(file, '--target-speedup', '1.5', '--modules', dir, '--no-context', '-o', out);
    expect([folder.code, folder.stderr]).toEqual([2, needless]);
    expect(fs.existsSync(out)).toBe(false);
  });
});

function vec(values: Float32Array): Tensor {
  return Tensor.fromArray('v', DataType.FLOAT, [values.length], values);
}
