// The stream target (PluginFitOptions.target 'stream', --fit-target stream): each restore fitted to what
// the block must output for the layer's stream to reproduce the ORIGINAL model's stream. Closed forms on
// one layer (the two streams agree, so the stream target is the block's output), the capture's inverse norm
// on every norm form, a two-layer model where fitting layer 1 to the original's stream brings the output
// closer, determinism and the default's bytes, provenance, and the flag on both commands.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { CAPTURE_TARGET, CAPTURED, captureBlock, streamAfter } from '../passes/plugin/capture.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { describeInputs } from '../src/analysis/inputs.js';
import { fitPlugins, type PluginFitOptions } from '../src/decide/fit-plugins.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel } from '../src/onnx/file.js';
import { openData } from '../src/runtime/data.js';
import { openSession, run } from '../src/runtime/session.js';
import { vcompile } from './helpers/cli.js';
import { asCommandLineAsync } from './helpers/cli-message.js';
import { FitScratch, PLUGIN_FIT_BASE, type WeightEdit } from './helpers/fit-scratch.js';
import type { TransformerConfig } from './helpers/transformer-gen.js';

const scratch = new FitScratch('vcompile-fit-stream-', PLUGIN_FIT_BASE);
const { dir } = scratch;

/** A generated transformer, its weights scaled by `gain` (more nonlinear), written; `edit` changes initializers by name. */
function model(name: string, config: Partial<TransformerConfig>, gain = 1, edit?: WeightEdit): string {
  return scratch.model(name, config, (values, weight) => {
    if (gain !== 1 && /\.(ffn|attention)\..*weight/.test(weight)) for (let i = 0; i < values.length; i++) values[i] *= gain;
    edit?.(values, weight);
  });
}

const data = (name: string, samples: number, seed = 1) => scratch.data(name, samples, seed);

async function fitOn(file: string, dataFile: string, options: PluginFitOptions) {
  return fitPlugins(file, fs.readFileSync(file), openData(dataFile, describeInputs(loadModel(file))), options);
}

/** The model with `plugins` (layer -> plugin model) applied, written; returns its path. */
const compiled = (file: string, plugins: Map<number, Model>, name: string) => scratch.withPlugins(file, plugins, name);

/** The largest difference between the two plugins' weights, relative to the largest weight. */
function weightDistance(a: Model, b: Model): number {
  let diff = 0;
  let scale = 0;
  for (const v of a.graph.initializers) {
    const x = v.initializer!.toFloat32();
    const y = b.graph.lookup(v.name)!.initializer!.toFloat32();
    expect(y.length).toBe(x.length);
    for (let i = 0; i < x.length; i++) {
      diff = Math.max(diff, Math.abs(x[i] - y[i]));
      scale = Math.max(scale, Math.abs(x[i]));
    }
  }
  return diff / scale;
}

/** `file` as ONNX Runtime's extended optimizations leave it (com.microsoft fused ops), written. */
async function optimizedByOrt(file: string): Promise<string> {
  const out = file.replace(/\.onnx$/, '.ort.onnx');
  const session = await ort.InferenceSession.create(file, {
    graphOptimizationLevel: 'extended',
    optimizedModelFilePath: out,
    executionProviders: ['cpu'],
    logSeverityLevel: 4,
  });
  await session.release();
  return out;
}

/** (F^T F + lambda D)^-1 F^T R in float64, D the identity but for the last feature (the constant). */
function solveRidge(features: number[][], targets: number[][], lambda: number): number[] {
  const [n, m] = [features[0].length, targets[0].length];
  const a = Array.from({ length: n }, (_, i) => Array.from({ length: n + m }, (_, j) => (i === j && i < n - 1 ? lambda : 0)));
  for (const [r, f] of features.entries()) {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) a[i][j] += f[i] * f[j];
      for (let j = 0; j < m; j++) a[i][n + j] += f[i] * targets[r][j];
    }
  }
  for (let c = 0; c < n; c++) {
    const pivot = a.slice(c).reduce((best, row, i) => (Math.abs(row[c]) > Math.abs(a[best][c]) ? c + i : best), c);
    [a[c], a[pivot]] = [a[pivot], a[c]];
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const factor = a[r][c] / a[c][c];
      for (let j = c; j < n + m; j++) a[r][j] -= factor * a[c][j];
    }
  }
  return Array.from({ length: n * m }, (_, k) => a[Math.floor(k / m)][n + (k % m)] / a[Math.floor(k / m)][Math.floor(k / m)]);
}

const bytes = (m: Model) => Buffer.from(encodeModel(m));
const fitMeta = (m: Model) => JSON.parse(m.getMetadata('vcompile.fit')!);

describe('the stream target', () => {
  const calibration = data('calibration', 80);

  for (const norm of ['pre', 'post'] as const) {
    it(`on a one-layer ${norm}-LN model equals the block target (the streams entering the layer agree)`, async () => {
      const file = model(`one-${norm}`, { layers: 1, norm }, 4);
      for (const scope of ['ffn', 'attention'] as const) {
        const block = await fitOn(file, calibration, { ratio: 2, scope, rank: 'full' });
        const stream = await fitOn(file, calibration, { ratio: 2, scope, rank: 'full', target: 'stream' });
        const [b, s] = [block.layers[0], stream.layers[0]];
        expect(s).toMatchObject({ target: 'stream', restore: b.restore, tokens: b.tokens });
        expect(Math.abs(s.lambda / b.lambda - 1)).toBeLessThan(1e-6);
        expect(b.target).toBe('block');
        expect(Math.abs(s.unexplained.fitted - b.unexplained.fitted)).toBeLessThan(1e-4 * b.unexplained.mean);
        expect(weightDistance(block.plugins.get(0)!, stream.plugins.get(0)!)).toBeLessThan(1e-3);
      }
    });
  }

  // Norm^-1(Norm(x + y)) - x = y: with the original's stream fed from the same input, the captured target is y
  const norms: [string, Partial<TransformerConfig>, ((values: Float32Array, name: string) => void)?, 'fused'?][] = [
    ['post-LN, a spelled LayerNorm with a zero gamma channel', { norm: 'post' }, (v, n) => n === 'layer0.ffn_norm.weight' && (v[3] = 0)],
    ['post-LN, a LayerNormalization op', { norm: 'post', normForm: 'op' }],
    ['post-LN, an RMSNorm', { norm: 'post', normKind: 'rmsnorm' }],
    ['pre-LN', { norm: 'pre' }],
    [
      'post-LN, residual adds and norms fused by ONNX Runtime (SkipLayerNormalization)',
      { norm: 'post', normForm: 'op' },
      undefined,
      'fused',
    ],
  ];
  for (const [what, config, edit, fused] of norms) {
    it(`captures y itself when the two streams agree: ${what}`, async () => {
      const plain = model(`capture-${what.replace(/\W+/g, '-')}`, { layers: 1, ...config }, 2, edit);
      const file = fused ? await optimizedByOrt(plain) : plain;
      if (fused) expect(loadModel(file).graph.nodes.filter((n) => n.opType === 'SkipLayerNormalization').length).toBeGreaterThan(0);
      const feeds = openData(calibration, describeInputs(loadModel(file))).batches(4)[0].feeds;
      for (const scope of ['ffn', 'attention', 'layer'] as const) {
        const after = streamAfter(analyzeTransformer(loadModel(file)).layers[0], scope).name;
        const original = await openSession(file, { extraOutputs: [after] });
        const streamOut = (await run(original, feeds))[after];
        await original.release();
        const captured = async (target: 'block' | 'stream') => {
          const m = loadModel(file);
          captureBlock(m, { layer: 0, scope, ratio: 2, target });
          assertValid(m, 'captureBlock');
          expect(m.graph.inputs.some((v) => v.name === CAPTURE_TARGET)).toBe(target === 'stream');
          const session = await openSession(m);
          const extra: Record<string, Tensor> =
            target === 'stream'
              ? { [CAPTURE_TARGET]: Tensor.fromArray(CAPTURE_TARGET, DataType.FLOAT, streamOut.dims, streamOut.toFloat32()) }
              : {};
          const y = (await run(session, { ...feeds, ...extra }))[CAPTURED[2]].toFloat32();
          await session.release();
          return y;
        };
        const [y, target] = [await captured('block'), await captured('stream')];
        const largest = Math.max(...y.map(Math.abs));
        const error = Math.max(...y.map((v, i) => Math.abs(v - target[i])));
        expect(target.every(Number.isFinite)).toBe(true);
        expect(error).toBeLessThan(1e-4 * largest);
      }
    });
  }

  it("fits layer 1 to the original's stream: the plain float64 least-squares solve of the target, computed apart", async () => {
    // post-LN, FFN scope, k = 2: layer 0 fitted, then layer 1 on the stream it leaves. Here the target is
    // rebuilt from the models' own values: x and y at layer 1 of the model compressed at layer 0, the
    // original model's stream after layer 1's FFN, the norm's weights, u by hand (the FFN of each pair's mean)
    const file = model('two-layer', { seed: 11 }, 4);
    const fit = await fitOn(file, calibration, { ratio: 2, scope: 'ffn', rank: 'full', target: 'stream' });
    expect(fit.layers.map((l) => [l.target, l.restore])).toEqual([
      ['stream', 'fitted'],
      ['stream', 'fitted'],
    ]);
    const compressed = compiled(file, new Map([[0, fit.plugins.get(0)!]]), 'two-layer-L0');
    const original = loadModel(file);
    const layer = analyzeTransformer(original).layers[1];
    const [xName, yName, oName] = [layer.ffn.input.name, layer.ffn.output.name, streamAfter(layer, 'ffn').name];
    const weight = (name: string) => Array.from(original.graph.lookup(name)!.initializer!.toFloat32());
    const [gamma, beta] = [weight('layer1.ffn_norm.weight'), weight('layer1.ffn_norm.bias')];
    const [w1, b1, w2, b2] = ['inner.weight', 'inner.bias', 'output.weight', 'output.bias'].map((n) => weight(`layer1.ffn.${n}`));
    const d = 16;
    const f = 32;
    const ffn = (c: number[]) => {
      const inner = Array.from({ length: f }, (_, j) => Math.max(0, b1[j] + c.reduce((s, v, i) => s + v * w1[i * f + j], 0)));
      return Array.from({ length: d }, (_, j) => b2[j] + inner.reduce((s, v, i) => s + v * w2[i * d + j], 0));
    };
    const rows: { features: number[]; stream: number[]; block: number[] }[] = [];
    const [cSession, oSession] = [
      await openSession(compressed, { extraOutputs: [xName, yName] }),
      await openSession(file, { extraOutputs: [oName] }),
    ];
    const all = openData(calibration, describeInputs(original));
    // the samples the fit fits on (every fifth is held out), one at a time: no padding
    for (const sample of all.subset([...Array(all.size).keys()].filter((i) => i % 5 !== 4)).batches(1)) {
      const values = await run(cSession, sample.feeds);
      const [x, y] = [values[xName].toFloat32(), values[yName].toFloat32()];
      const o = (await run(oSession, sample.feeds))[oName].toFloat32();
      const seq = x.length / d;
      const at = (a: Float32Array, t: number) => Array.from(a.subarray(t * d, (t + 1) * d));
      for (let t = 0; t < seq; t++) {
        const group = [t - (t % 2), t - (t % 2) + 1].filter((g) => g < seq);
        const u = ffn(Array.from({ length: d }, (_, j) => group.reduce((s, g) => s + x[g * d + j], 0) / group.length));
        const pre = at(x, t).map((v, j) => v + y[t * d + j]);
        const mu = pre.reduce((s, v) => s + v, 0) / d;
        const sigma = Math.sqrt(pre.reduce((s, v) => s + (v - mu) ** 2, 0) / d + 1e-5);
        const target = at(o, t).map((v, j) => ((v - beta[j]) / gamma[j]) * sigma + mu - x[t * d + j]);
        rows.push({
          features: [...u, ...at(x, t), 1],
          stream: target.map((v, j) => v - u[j]),
          block: at(y, t).map((v, j) => v - u[j]),
        });
      }
    }
    await Promise.all([cSession.release(), oSession.release()]);
    expect(rows.length).toBe(fit.layers[1].tokens);
    // the ridge solve at the fit's lambda (the constant unpenalized) and the plugin's weights, as [u ; x ; 1] x d
    const plugin = fit.plugins.get(1)!;
    const adapter = (suffix: string) => plugin.graph.initializers.find((v) => v.name.endsWith(suffix))!.initializer!.toFloat32();
    const fitted = [...adapter('adapter_from_restored'), ...adapter('adapter_from_hidden'), ...adapter('adapter_bias')];
    const predict = (w: ArrayLike<number>) =>
      rows.map((r) => Array.from({ length: d }, (_, j) => r.features.reduce((s, v, i) => s + v * w[i * d + j], 0)));
    const fromPlugin = predict(fitted);
    const distance = (target: 'stream' | 'block') => {
      const fromSolve = predict(
        solveRidge(
          rows.map((r) => r.features),
          rows.map((r) => r[target]),
          fit.layers[1].lambda,
        ),
      );
      const scale = Math.max(...fromSolve.flat().map(Math.abs));
      return Math.max(...fromSolve.flatMap((p, r) => p.map((v, j) => Math.abs(v - fromPlugin[r][j])))) / scale;
    };
    expect(distance('stream')).toBeLessThan(1e-5);
    expect(distance('block')).toBeGreaterThan(0.05); // the targets differ: the check tells them apart
  });

  it('is deterministic; the default is the block target, byte for byte; the target is in the provenance', async () => {
    const file = model('determinism', { seed: 7 }, 4);
    const options: PluginFitOptions = { ratio: 4, scope: 'attention', rank: 4 };
    const [a, b] = [
      await fitOn(file, calibration, { ...options, target: 'stream' }),
      await fitOn(file, calibration, { ...options, target: 'stream' }),
    ];
    const [byDefault, block] = [await fitOn(file, calibration, options), await fitOn(file, calibration, { ...options, target: 'block' })];
    for (const layer of [0, 1]) {
      expect(bytes(a.plugins.get(layer)!).equals(bytes(b.plugins.get(layer)!))).toBe(true);
      expect(bytes(byDefault.plugins.get(layer)!).equals(bytes(block.plugins.get(layer)!))).toBe(true);
      expect(fitMeta(a.plugins.get(layer)!)).toMatchObject({ layer, target: 'stream' });
      // a default fit's provenance is as it was before the option: no target
      expect(Object.keys(fitMeta(block.plugins.get(layer)!))).not.toContain('target');
    }
    expect(byDefault.layers.map((l) => l.target)).toEqual(['block', 'block']);
    expect(a.layers.map((l) => l.target)).toEqual(['stream', 'stream']);
  });

  it('refuses a target it does not know, naming the option', async () => {
    const file = path.join(dir, 'determinism.onnx');
    const target = 'bogus' as PluginFitOptions['target'];
    await expect(fitOn(file, calibration, { ratio: 2, scope: 'ffn', target })).rejects.toThrow(
      /^target 'bogus': expected block or stream$/,
    );
    await expect(asCommandLineAsync(() => fitOn(file, calibration, { ratio: 2, scope: 'ffn', target }))).rejects.toThrow(
      /^--fit-target bogus: expected block or stream$/,
    );
  });
});

describe('--fit-target', () => {
  const calibration = data('cli', 40);

  it('vcompile plugin fit --fit-target stream: fit.json and the plugins record it', () => {
    const file = model('cli-model', { seed: 9 });
    const out = path.join(dir, 'plugins');
    const r = vcompile('plugin', 'fit', file, '--data', calibration, '--ratio', '2', '--rank', '8', '--fit-target', 'stream', '-o', out);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const summary = JSON.parse(fs.readFileSync(path.join(out, 'fit.json'), 'utf8'));
    expect(summary.layers.map((l: { target: string }) => l.target)).toEqual(['stream', 'stream']);
    expect(fitMeta(loadModel(path.join(out, 'L1.onnx')))).toMatchObject({ layer: 1, target: 'stream' });
    const bad = vcompile(
      'plugin',
      'fit',
      file,
      '--data',
      calibration,
      '--ratio',
      '2',
      '--fit-target',
      'output',
      '-o',
      path.join(dir, 'never'),
    );
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe('vcompile: --fit-target output: expected one of block, stream\n');
    expect(fs.existsSync(path.join(dir, 'never'))).toBe(false);
  });

  it('in a compile: with --plugin builtin:fit:K only', () => {
    const file = path.join(dir, 'cli-model.onnx');
    const out = path.join(dir, 'one-step.onnx');
    const r = vcompile(
      file,
      '--plugin',
      'builtin:fit:2',
      '--data',
      calibration,
      '--rank',
      '4',
      '--fit-target',
      'stream',
      '-o',
      out,
      '--json',
    );
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.fit[0].layers.map((l: { target: string }) => l.target)).toEqual(['stream', 'stream']);
    const alone = vcompile(file, '--plugin', 'builtin:mean:2', '--fit-target', 'stream', '-o', path.join(dir, 'never.onnx'));
    expect(alone.code).toBe(2);
    expect(alone.stderr).toBe('vcompile: --fit-target goes with --plugin builtin:fit:K\n');
    expect(fs.existsSync(path.join(dir, 'never.onnx'))).toBe(false);
  });
});
