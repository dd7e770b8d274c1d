// Every fixture in fixtures/manifest.json and fixtures/manifest-derived.json: the file is there, our
// reader loads it, the IR verifier accepts it, and ONNX Runtime runs it at two input sizes with finite
// outputs of the shapes the manifest promises. The contrib-op BERT must also match its TS reference.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { CONTRIB_BERT, contribBertReference } from '../fixtures/contrib-bert.js';
import type { Model } from '../src/ir/model.js';
import { DataType } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { loadModel } from '../src/onnx/file.js';

const fixtures = path.resolve(import.meta.dirname, '../fixtures');

type Dims = (number | string)[];
interface Entry {
  file: string;
  vocab: number | null;
  inputs: Record<string, Dims>;
  outputs: Record<string, Dims>;
}

function readManifest(name: string): Entry[] {
  return (JSON.parse(fs.readFileSync(path.join(fixtures, name), 'utf8')) as { fixtures: Entry[] }).fixtures;
}

const manifests = { 'manifest.json': readManifest('manifest.json'), 'manifest-derived.json': readManifest('manifest-derived.json') };

/** Two settings of the symbolic dims; batch > 1 in both so some mask rows have padded tails. */
const SIZES: Record<string, number>[] = [
  { batch: 2, seq: 7, decoder_seq: 5, width: 40 },
  { batch: 3, seq: 4, decoder_seq: 6, width: 64 },
];

/** A manifest dim: a number, a symbol bound in `sizes`, or `symbol/k` (floor division). */
function resolveDim(dim: number | string, sizes: Record<string, number>): number {
  if (typeof dim === 'number') return dim;
  const [, symbol, divisor] = /^(\w+)(?:\/(\d+))?$/.exec(dim) ?? [];
  const value = symbol === undefined ? undefined : sizes[symbol];
  if (value === undefined) throw new Error(`manifest dim '${dim}' has no size in the test`);
  return divisor ? Math.floor(value / Number(divisor)) : value;
}

/** Small deterministic generator (LCG), so a failure reproduces. */
function numbers(seed: number): () => number {
  let state = seed >>> 0;
  return () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Row b keeps its first max(1, len - 2b) positions: padded tails of different lengths. */
function paddedMask(dims: number[]): BigInt64Array {
  const len = dims[dims.length - 1]!;
  return BigInt64Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) =>
    i % len < Math.max(1, len - 2 * Math.floor(i / len)) ? 1n : 0n,
  );
}

function makeInputs(model: Model, entry: Entry, sizes: Record<string, number>): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  const random = numbers(17);
  for (const input of model.graph.inputs) {
    if (input.initializer) continue;
    const manifestDims = entry.inputs[input.name];
    if (!manifestDims) throw new Error(`${entry.file}: input ${input.name} is not in the manifest`);
    const dims = manifestDims.map((d) => resolveDim(d, sizes));
    const size = dims.reduce((a, b) => a * b, 1);
    const elemType = input.type?.kind === 'tensor' ? input.type.elemType : undefined;
    if (elemType === DataType.INT64 && /mask/.test(input.name)) {
      feeds[input.name] = new ort.Tensor('int64', paddedMask(dims), dims);
    } else if (elemType === DataType.INT64) {
      const vocab = entry.vocab ?? 1;
      feeds[input.name] = new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: size }, () => BigInt(Math.floor(random() * vocab))),
        dims,
      );
    } else if (elemType === DataType.FLOAT) {
      feeds[input.name] = new ort.Tensor(
        'float32',
        Float32Array.from({ length: size }, () => random() * 2 - 1),
        dims,
      );
    } else {
      throw new Error(`${entry.file}: no generator for input ${input.name} of element type ${elemType}`);
    }
  }
  return feeds;
}

function weightsOf(model: Model): Map<string, Float32Array> {
  return new Map(model.graph.initializers.map((v) => [v.name, v.initializer!.toFloat32()]));
}

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

for (const [manifestName, entries] of Object.entries(manifests)) {
  describe(manifestName, () => {
    it('lists fixtures', () => {
      expect(entries.length).toBeGreaterThan(0);
    });

    for (const entry of entries) {
      const file = path.join(fixtures, entry.file);

      it(`${entry.file}: exists, loads, verifies and runs at two sizes`, async () => {
        expect(fs.existsSync(file), `${file} is missing; see fixtures/README.md to regenerate`).toBe(true);
        const model = loadModel(file);
        expect(verifyModel(model)).toEqual([]);
        expect(model.graph.outputs.map((v) => v.name).sort()).toEqual(Object.keys(entry.outputs).sort());

        const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
        try {
          for (const sizes of SIZES) {
            const results = await session.run(makeInputs(model, entry, sizes));
            for (const [name, dims] of Object.entries(entry.outputs)) {
              const out = results[name]!;
              expect(out.dims, `${name} at ${JSON.stringify(sizes)}`).toEqual(dims.map((d) => resolveDim(d, sizes)));
              const data = out.data as Float32Array;
              expect(data.every(Number.isFinite), `${name} has non-finite values`).toBe(true);
            }
          }
        } finally {
          await session.release();
        }
      });
    }
  });
}

describe('bert_contrib_fused.onnx', () => {
  const file = path.join(fixtures, 'bert_contrib_fused.onnx');
  const entry = manifests['manifest-derived.json'].find((e) => e.file === 'bert_contrib_fused.onnx')!;

  it('uses the contrib ops it is meant to exercise', () => {
    const ops = new Set(loadModel(file).graph.nodes.map((n) => `${n.domain ?? ''}:${n.opType}`));
    for (const op of ['Attention', 'SkipLayerNormalization', 'BiasGelu', 'FastGelu', 'EmbedLayerNormalization']) {
      expect(ops.has(`com.microsoft:${op}`), op).toBe(true);
    }
  });

  it('matches the TypeScript reference, weights read back from the file', async () => {
    const model = loadModel(file);
    const weights = weightsOf(model);
    const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
    try {
      for (const sizes of SIZES) {
        const feeds = makeInputs(model, entry, sizes);
        const ids = feeds.input_ids!.data as BigInt64Array;
        const mask = feeds.attention_mask!.data as BigInt64Array;
        const { batch, seq } = sizes as { batch: number; seq: number };
        const actual = (await session.run(feeds)).last_hidden_state!.data as Float32Array;
        const expected = contribBertReference(weights, ids, mask, batch, seq);
        expect(maxAbsDiff(actual, expected)).toBeLessThan(1e-4);
        // the padded tails must matter, or this comparison would not test the mask
        const unmasked = contribBertReference(
          weights,
          ids,
          mask.map(() => 1n),
          batch,
          seq,
        );
        expect(maxAbsDiff(unmasked, expected)).toBeGreaterThan(1e-2);
      }
    } finally {
      await session.release();
    }
  });

  it('manifest entry agrees with the builder configuration', () => {
    expect(entry.vocab).toBe(CONTRIB_BERT.vocab);
  });
});
