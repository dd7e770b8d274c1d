// Generated model inputs (vocabulary bounds, padded masks, positions, seeding, dim binding) and inputs
// read from files (.npy written by NumPy itself, ONNX test-data folders of TensorProto files).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { VcompileError } from '../src/errors.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { loadModel } from '../src/onnx/file.js';
import { writeTensorFile } from '../src/onnx/tensor-file.js';
import { Rng } from '../src/random.js';
import { bindDims, describeInputs, generateFeeds, readFeedFolder, realPositions } from '../src/runtime/feeds.js';
import { decodeNpy, encodeNpy, readNpy, writeNpy } from '../src/runtime/npy.js';
import { asCommandLine } from './helpers/cli-message.js';

const repo = path.resolve(import.meta.dirname, '..');
const fixture = (name: string) => path.join(repo, 'fixtures', name);

interface ManifestEntry {
  file: string;
  vocab?: number | null;
  inputs: Record<string, (string | number)[]>;
}
const manifest = (name: string) => (JSON.parse(fs.readFileSync(fixture(name), 'utf8')) as { fixtures: ManifestEntry[] }).fixtures;
const withVocab = [...manifest('manifest.json'), ...manifest('manifest-derived.json')].filter(
  (f) => typeof f.vocab === 'number' && !f.file.startsWith('..'),
);

describe('generated feeds', () => {
  it.each(withVocab.map((f) => [f.file, f] as const))('%s: ids index the embedding table, and only it', (file, entry) => {
    const specs = describeInputs(loadModel(fixture(file)));
    const ids = specs.filter((s) => s.role === 'ids');
    expect(ids.length).toBeGreaterThan(0);
    for (const spec of ids) expect(spec.vocab).toBe(entry.vocab);
    const feeds = generateFeeds(specs, { batch: 3, seq: 37 }, 7);
    for (const spec of ids) {
      const values = feeds[spec.name].toNumbers();
      expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...values)).toBeLessThan(entry.vocab!);
      // not a degenerate sample: many distinct ids across the table's range
      expect(new Set(values).size).toBeGreaterThan(20);
      expect(Math.max(...values)).toBeGreaterThan(entry.vocab! / 2);
    }
  });

  it('masks keep a decreasing number of real positions per row, at least one; padded ids are 0', () => {
    const specs = describeInputs(loadModel(fixture('bert_opset14.onnx')));
    const feeds = generateFeeds(specs, { batch: 4, seq: 10 }, 0);
    const mask = feeds.attention_mask.toNumbers();
    const ids = feeds.input_ids.toNumbers();
    const kept = [0, 1, 2, 3].map((b) => mask.slice(b * 10, b * 10 + 10));
    expect(kept.map((row) => row.reduce((a, v) => a + v, 0))).toEqual([10, 8, 5, 3]);
    for (const [b, row] of kept.entries()) {
      const real = row.filter((v) => v === 1).length;
      expect(row).toEqual([...new Array(real).fill(1), ...new Array(10 - real).fill(0)]);
      expect(ids.slice(b * 10 + real, b * 10 + 10).every((v) => v === 0)).toBe(true);
    }
    for (const [batch, seq] of [
      [5, 2],
      [3, 1],
      [9, 4],
    ]) {
      for (let b = 0; b < batch; b++) expect(realPositions(b, batch, seq)).toBeGreaterThanOrEqual(1);
    }
  });

  it('positions count up, token types are zero, floats are normal, everything follows the seed', () => {
    const b = new ModelBuilder(17);
    const inputs = [
      b.input('input_ids', tensorType(DataType.INT64, ['batch', 'seq'])),
      b.input('token_type_ids', tensorType(DataType.INT64, ['batch', 'seq'])),
      b.input('position_ids', tensorType(DataType.INT32, ['batch', 'seq'])),
      b.input('attention_mask', tensorType(DataType.FLOAT, ['batch', 'seq'])),
      b.input('pixels', tensorType(DataType.FLOAT, ['N', 3, 'height', 'width'])),
    ];
    for (const v of inputs) b.output(b.op.Identity(v), `${v.name}_out`);
    const specs = describeInputs(b.model);
    expect(specs.map((s) => s.role)).toEqual(['ids', 'tokenTypes', 'positions', 'mask', 'float']);
    const feeds = generateFeeds(specs, { batch: 2, seq: 5, dims: { width: 4 } }, 3);
    expect(feeds.position_ids.dataType).toBe(DataType.INT32);
    expect(feeds.position_ids.toNumbers()).toEqual([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    expect(feeds.token_type_ids.toNumbers()).toEqual(new Array(10).fill(0));
    expect(feeds.pixels.dims).toEqual([2, 3, 5, 4]);
    const pixels = Array.from(feeds.pixels.toFloat32());
    const mean = pixels.reduce((a, v) => a + v, 0) / pixels.length;
    const variance = pixels.reduce((a, v) => a + (v - mean) ** 2, 0) / pixels.length;
    expect(Math.abs(mean)).toBeLessThan(0.3);
    expect(variance).toBeGreaterThan(0.6);
    expect(variance).toBeLessThan(1.5);
    const again = generateFeeds(specs, { batch: 2, seq: 5, dims: { width: 4 } }, 3);
    const other = generateFeeds(specs, { batch: 2, seq: 5, dims: { width: 4 } }, 4);
    for (const name of Object.keys(feeds)) expect(Buffer.from(again[name].bytes()).equals(Buffer.from(feeds[name].bytes()))).toBe(true);
    expect(Buffer.from(other.pixels.bytes()).equals(Buffer.from(feeds.pixels.bytes()))).toBe(false);
    // the ids have no table to index: the fallback range is [0, 2)
    expect(new Set(feeds.input_ids.toNumbers())).toEqual(new Set([0, 1]));
  });

  it('binds axis 0 to the batch, other symbolic dims to seq, named dims by --dim', () => {
    const b = new ModelBuilder(17);
    const x = b.input('x', tensorType(DataType.FLOAT, ['p2o.DynamicDimension.0', 3, 'p2o.DynamicDimension.1']));
    const y = b.input('y', { kind: 'tensor', elemType: DataType.FLOAT, shape: [{}, { param: 'seq_len' }, { param: 'batch_size' }] });
    b.output(b.op.Identity(x), 'xo');
    b.output(b.op.Identity(y), 'yo');
    const specs = describeInputs(b.model);
    expect(Object.fromEntries(bindDims(specs, { batch: 2, seq: 9 }))).toEqual({
      'p2o.DynamicDimension.0': 2,
      'p2o.DynamicDimension.1': 9,
      'y.0': 2,
      seq_len: 9,
      batch_size: 2,
    });
    expect(bindDims(specs, { batch: 2, seq: 9, dims: { 'p2o.DynamicDimension.1': 320, 'y.0': 5 } }).get('p2o.DynamicDimension.1')).toBe(
      320,
    );
    expect(bindDims(specs, { batch: 2, seq: 9, dims: { 'y.0': 5 } }).get('y.0')).toBe(5);
  });

  it('Rng: uniform in [0, 1), reproducible per seed and stream', () => {
    const a = new Rng(1, 'x');
    const values = Array.from({ length: 1000 }, () => a.next());
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThan(1);
    expect(new Rng(1, 'x').next()).toBe(values[0]);
    expect(new Rng(1, 'y').next()).not.toBe(values[0]);
    expect(new Rng(2, 'x').next()).not.toBe(values[0]);
  });
});

describe('.npy files', () => {
  const npy = (name: string) => fixture(`npy/${name}.npy`);

  it('reads what numpy.save wrote', () => {
    const f32 = readNpy(npy('float32_2x3'));
    expect([f32.dataType, f32.dims]).toEqual([DataType.FLOAT, [2, 3]]);
    expect(Array.from(f32.toFloat32())).toEqual([0, 1, 2, 3, 4, 5].map((i) => i / 4 - 0.5));
    const f64 = readNpy(npy('float64_4'));
    expect(Array.from(new Float64Array(new Uint8Array(f64.bytes()).buffer))).toEqual([Math.PI, -1e300, 5e-324, 0]);
    expect(Array.from(readNpy(npy('float16_3')).toFloat32())).toEqual([1, -2, 0.5]);
    const ids = readNpy(npy('int64_2x5'), 'input_ids');
    expect([ids.name, ids.dataType, ids.dims]).toEqual(['input_ids', DataType.INT64, [2, 5]]);
    expect(ids.toNumbers()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => (i * 1000003) % 30522));
    const scalar = readNpy(npy('int32_scalar'));
    expect([scalar.dims, scalar.toNumbers()]).toEqual([[], [-7]]);
    expect(readNpy(npy('uint8_4')).toNumbers()).toEqual([0, 1, 128, 255]);
    const bools = readNpy(npy('bool_2x2'));
    expect([bools.dataType, bools.toNumbers()]).toEqual([DataType.BOOL, [1, 0, 0, 1]]);
    expect(readNpy(npy('int64_empty_0x3')).dims).toEqual([0, 3]);
  });

  it('writes byte for byte what numpy.save writes', () => {
    for (const name of ['float32_2x3', 'float64_4', 'float16_3', 'int64_2x5', 'int32_scalar', 'uint8_4', 'bool_2x2', 'int64_empty_0x3']) {
      const bytes = fs.readFileSync(npy(name));
      expect(Buffer.from(encodeNpy(decodeNpy(bytes))).equals(bytes), name).toBe(true);
    }
  });

  it('refuses what it cannot read, in one line', () => {
    expect(() => readNpy(npy('fortran_2x3'))).toThrow(/Fortran-ordered arrays are not supported/);
    expect(() => readNpy(npy('bigendian_3'))).toThrow(/dtype '>i4': big-endian data is not supported/);
    expect(() => decodeNpy(new Uint8Array([1, 2, 3]), undefined, 'x.npy')).toThrow(/^x\.npy: not a \.npy file/);
    const truncated = fs.readFileSync(npy('int64_2x5')).subarray(0, 150);
    expect(() => decodeNpy(truncated, undefined, 't.npy')).toThrow(VcompileError);
    expect(() => readNpy('/nonexistent.npy')).toThrow(/no such file/);
  });
});

describe('feeds from a folder', () => {
  const specs = describeInputs(loadModel(fixture('bert_opset14.onnx')));
  const ids = Tensor.fromArray(undefined, DataType.INT64, [1, 4], new BigInt64Array([101n, 7n, 8n, 102n]));
  const mask = Tensor.fromArray(undefined, DataType.INT64, [1, 4], new BigInt64Array([1n, 1n, 1n, 0n]));

  it('ONNX test data: input_N.pb by position, or by the name inside', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-feeds-'));
    writeTensorFile(path.join(dir, 'input_0.pb'), ids);
    writeTensorFile(path.join(dir, 'input_1.pb'), mask);
    writeTensorFile(path.join(dir, 'output_0.pb'), mask); // reference outputs live beside the inputs
    const feeds = readFeedFolder(dir, specs);
    expect(feeds.input_ids.toNumbers()).toEqual([101, 7, 8, 102]);
    expect(feeds.attention_mask.toNumbers()).toEqual([1, 1, 1, 0]);
    // names inside the files win over positions
    writeTensorFile(path.join(dir, 'input_0.pb'), Object.assign(mask, { name: 'attention_mask' }));
    writeTensorFile(path.join(dir, 'input_1.pb'), Object.assign(ids, { name: 'input_ids' }));
    expect(readFeedFolder(dir, specs).input_ids.toNumbers()).toEqual([101, 7, 8, 102]);
  });

  const backendTest = '/usr/share/libonnx-testdata/data/node/test_add_bcast';
  it.skipIf(!fs.existsSync(backendTest))('ONNX backend test data as shipped by libonnx-testdata', () => {
    const dir = backendTest;
    const modelSpecs = describeInputs(loadModel(path.join(dir, 'model.onnx')));
    const feeds = readFeedFolder(path.join(dir, 'test_data_set_0'), modelSpecs);
    expect(Object.keys(feeds)).toEqual(modelSpecs.map((s) => s.name));
    expect(feeds[modelSpecs[0].name].dims).toEqual([3, 4, 5]);
  });

  it('an input without a declared shape can only come from files', () => {
    const b = new ModelBuilder(17);
    b.output(b.op.Identity(b.input('x', { kind: 'tensor', elemType: DataType.FLOAT })), 'y');
    expect(asCommandLine(() => describeInputs(b.model))).toThrow('input x: no declared shape; give its values with --inputs DIR');
    expect(() => describeInputs(b.model)).toThrow('input x: no declared shape; give its values with inputsDir');
    const specs = describeInputs(b.model, { allowUnshaped: true });
    expect(() => generateFeeds(specs, { batch: 1, seq: 1 })).toThrow(/input x: no declared shape/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-feeds-'));
    writeNpy(path.join(dir, 'x.npy'), Tensor.fromArray(undefined, DataType.FLOAT, [2, 2, 2], new Float32Array(8).fill(1.5)));
    expect(readFeedFolder(dir, specs).x.dims).toEqual([2, 2, 2]);
  });

  it('.npy files by input name, with type and rank checked', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-feeds-'));
    writeNpy(path.join(dir, 'input_ids.npy'), ids);
    writeNpy(path.join(dir, 'attention_mask.npy'), mask);
    expect(readFeedFolder(dir, specs).attention_mask.toNumbers()).toEqual([1, 1, 1, 0]);
    writeNpy(path.join(dir, 'attention_mask.npy'), Tensor.fromArray(undefined, DataType.INT32, [1, 4], new Int32Array(4)));
    expect(() => readFeedFolder(dir, specs)).toThrow(/input attention_mask: the file holds int32, the model takes int64/);
    fs.rmSync(path.join(dir, 'attention_mask.npy'));
    expect(() => readFeedFolder(dir, specs)).toThrow(/no file for input attention_mask/);
  });
});
