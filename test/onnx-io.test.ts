// Lossless reading and writing of .onnx files: every schema field survives, unknown fields too, external
// data is read only from inside the model's folder, writes are atomic, and bad input fails in one line.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import onnxProto from 'onnx-proto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { VcompileError } from '../src/errors.js';
import type { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { verifyModel } from '../src/ir/verify.js';
import { concatChunks, decode, encode, type ProtoMessage } from '../src/onnx/codec.js';
import { decodeModel, encodeModel, loadModel, saveModel } from '../src/onnx/file.js';
import { messageDesc } from '../src/onnx/schema.js';
import { canonicalModel, expectSameModel, hex } from './helpers/canonical.js';
import { asCommandLine } from './helpers/cli-message.js';
import { buildEveryFieldModel, UNKNOWN } from './helpers/every-field.js';

// Every fs call of the code under test goes through these pass-through spies, so a test can tell which
// files were opened, and make one call fail the way a full disk would.
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  return { ...real, openSync: vi.fn(real.openSync), readFileSync: vi.fn(real.readFileSync), writevSync: vi.fn(real.writevSync) };
});

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-io-'));
});
afterEach(() => {
  // Back to plain pass-through (mockReset keeps the implementation given to vi.fn), one-off failures dropped.
  for (const spy of [fs.openSync, fs.readFileSync, fs.writevSync]) vi.mocked(spy).mockReset();
  fs.chmodSync(dir, 0o700);
  fs.rmSync(dir, { recursive: true, force: true });
});

const bytesOf = (file: string) => new Uint8Array(fs.readFileSync(file));
const filesIn = (folder: string) => fs.readdirSync(folder).sort();

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a throw');
}

/** Fields present anywhere in a decoded message tree, as `Message.field`. */
function fieldsPresent(m: ProtoMessage, type: string, seen = new Set<string>()): Set<string> {
  for (const f of messageDesc(type).fields) {
    const v = m[f.name];
    if (v === undefined) continue;
    seen.add(`${type}.${f.name}`);
    if (f.kind === 'message') for (const item of (f.repeated ? v : [v]) as ProtoMessage[]) fieldsPresent(item, f.message!, seen);
  }
  return seen;
}

/** Every field of every message reachable from `type`. */
function schemaFields(type: string, out = new Set<string>()): Set<string> {
  for (const f of messageDesc(type).fields) {
    const key = `${type}.${f.name}`;
    if (out.has(key)) continue;
    out.add(key);
    if (f.kind === 'message') schemaFields(f.message!, out);
  }
  return out;
}

describe('the every-field model', () => {
  it('sets every field of the schema (external_data only when saved with external data)', () => {
    const inline = fieldsPresent(decode('ModelProto', encodeModel(buildEveryFieldModel())), 'ModelProto');
    const missing = [...schemaFields('ModelProto')].filter((f) => !inline.has(f));
    expect(missing).toEqual(['TensorProto.external_data']);

    const file = path.join(dir, 'm.onnx');
    saveModel(buildEveryFieldModel(), file, { externalData: 'always', sizeThreshold: 16 });
    expect(fieldsPresent(decode('ModelProto', bytesOf(file)), 'ModelProto').has('TensorProto.external_data')).toBe(true);
  });

  it('passes the IR verifier', () => {
    expect(verifyModel(buildEveryFieldModel())).toEqual([]);
  });

  it('survives saveModel -> loadModel, tensor storage included', () => {
    const model = buildEveryFieldModel();
    const file = path.join(dir, 'every.onnx');
    const { bytes, externalFile } = saveModel(model, file);
    expect(externalFile).toBeUndefined();
    expect(fs.statSync(file).size).toBe(bytes);
    expect(filesIn(dir)).toEqual(['every.onnx']);
    const loaded = loadModel(file);
    expectSameModel(loaded, model, { storageDetail: true });
    expect(verifyModel(loaded)).toEqual([]);
  });

  it('re-encodes byte-identically, through the codec and through the IR', () => {
    const bytes = encodeModel(buildEveryFieldModel());
    expect(hex(concatChunks(encode('ModelProto', decode('ModelProto', bytes))))).toBe(hex(bytes));
    expect(hex(encodeModel(decodeModel(bytes)))).toBe(hex(bytes));
  });

  it('keeps fields the schema does not know, where they were', () => {
    const file = path.join(dir, 'every.onnx');
    saveModel(buildEveryFieldModel(), file);
    const raw = Buffer.from(bytesOf(file));
    for (const field of Object.values(UNKNOWN).flat()) expect(raw.includes(Buffer.from(field))).toBe(true);

    const loaded = loadModel(file);
    const hexes = (fields: Uint8Array[] | undefined) => fields?.map(hex);
    expect(hexes(loaded.unknownFields)).toEqual(UNKNOWN.model.map(hex));
    expect(hexes(loaded.graph.unknownFields)).toEqual(UNKNOWN.graph.map(hex));
    expect(hexes(loaded.graph.nodes.find((n) => n.opType === 'ScaledAdd')!.unknownFields)).toEqual(UNKNOWN.node.map(hex));
    expect(hexes(loaded.graph.initializers.find((v) => v.name === 'w_decorated')!.initializer!.unknownFields)).toEqual(
      UNKNOWN.tensor.map(hex),
    );
    expect(hexes(loaded.functions[0].unknownFields)).toEqual(UNKNOWN.function.map(hex));
    expect(hexes(loaded.trainingInfo[0].unknownFields)).toEqual(UNKNOWN.trainingInfo.map(hex));
  });

  it('loses fields when round-tripped through protobufjs with the ONNX 1.10 schema (why vcompile has its own codec)', () => {
    const bytes = encodeModel(buildEveryFieldModel());
    const { ModelProto } = onnxProto.onnx;
    const viaProtobufjs = ModelProto.encode(ModelProto.decode(bytes)).finish();
    expect(viaProtobufjs.length).toBeLessThan(bytes.length);

    const after = decodeModel(viaProtobufjs);
    const callAfter = after.graph.nodes.find((n) => n.opType === 'ScaledAdd')!;
    expect(callAfter.overload).toBeUndefined(); // NodeProto.overload (ONNX 1.16)
    expect(callAfter.metadataProps).toBeUndefined(); // NodeProto.metadata_props (ONNX 1.16)
    expect(callAfter.deviceConfigurations).toBeUndefined(); // ONNX 1.18
    expect(after.graph.metadataProps).toBeUndefined();
    expect(after.configuration).toEqual([]);
    expect(after.unknownFields).toBeUndefined();
    expect(after.functions[0].attributeProtos).toEqual([]); // FunctionProto.attribute_proto (ONNX 1.13)
    // ...and the call no longer resolves to its function, whose overload was dropped too.
    expect(after.functions[0].overload).toBeUndefined();

    // The same bytes through vcompile's codec keep all of it.
    const ours = decodeModel(bytes).graph.nodes.find((n) => n.opType === 'ScaledAdd')!;
    expect(ours.overload).toBe('v2');
    expect(ours.metadataProps).toEqual([['node-key', 'node-value']]);
  });
});

describe('the fixtures', () => {
  // (ONNX's backend test models get the same check in onnx-testdata.test.ts.)
  const files = fs
    .readdirSync('fixtures')
    .filter((f) => f.endsWith('.onnx'))
    .map((f) => path.join('fixtures', f));

  it.skipIf(files.length === 0)(`re-encode byte-identically through the codec and the IR (${files.length} files)`, () => {
    const differing: string[] = [];
    for (const file of files) {
      const bytes = bytesOf(file);
      const viaCodec = concatChunks(encode('ModelProto', decode('ModelProto', bytes)));
      const viaIr = encodeModel(decodeModel(bytes, { baseDir: path.dirname(file), label: file }));
      if (Buffer.compare(Buffer.from(viaCodec), bytes) !== 0) differing.push(`codec: ${file}`);
      if (Buffer.compare(Buffer.from(viaIr), bytes) !== 0) differing.push(`IR: ${file}`);
    }
    expect(differing).toEqual([]);
  });
});

// ------------------------------------------------------------------------------------ external data

/** A model whose one initializer `w` (float[n]) lives in an external file, written straight with the codec. */
function externalModelBytes(entries: [string, string][], n = 4): Uint8Array {
  const floatType = { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [{ dim_value: BigInt(n) }] } } };
  return concatChunks(
    encode('ModelProto', {
      ir_version: 10n,
      opset_import: [{ domain: '', version: 21n }],
      graph: {
        name: 'g',
        initializer: [
          {
            name: 'w',
            data_type: DataType.FLOAT,
            dims: [BigInt(n)],
            data_location: 1,
            external_data: entries.map(([key, value]) => ({ key, value })),
          },
        ],
        output: [{ name: 'w', type: floatType }],
      },
    }),
  );
}

function externalEntries(model: Model): Map<string, [string, string][]> {
  const found = new Map<string, [string, string][]>();
  for (const graph of model.allGraphs()) {
    for (const v of graph.initializers) {
      const s = v.initializer!.storage;
      if (s.kind === 'external') found.set(v.name, s.external.entries);
    }
  }
  return found;
}

describe('external data', () => {
  it('saves every tensor over the threshold to one data file, contiguously, and reads the same model back', () => {
    const model = buildEveryFieldModel();
    const file = path.join(dir, 'model.onnx');
    const { externalFile } = saveModel(model, file, { externalData: 'always', sizeThreshold: 16 });
    expect(externalFile).toBe(path.join(dir, 'model.onnx.data'));
    expect(filesIn(dir)).toEqual(['model.onnx', 'model.onnx.data']);

    const loaded = loadModel(file);
    expectSameModel(loaded, model);

    const entries = externalEntries(loaded);
    const originals = new Map(model.graph.initializers.map((v) => [v.name, v.initializer!]));
    // Exactly the initializers of 16 bytes or more went out (strings never do).
    const expectedOut = [...originals].filter(([, t]) => t.dataType !== DataType.STRING && t.byteLength >= 16).map(([name]) => name);
    expect([...entries.keys()].sort()).toEqual(expectedOut.sort());

    const data = bytesOf(externalFile!);
    const ranges = [...entries].map(([name, e]) => {
      expect(e.map(([k]) => k)).toEqual(['location', 'offset', 'length']);
      const get = (key: string) => e.find(([k]) => k === key)![1];
      expect(get('location')).toBe('model.onnx.data');
      const offset = Number(get('offset'));
      const length = Number(get('length'));
      expect(hex(data.subarray(offset, offset + length))).toBe(hex(originals.get(name)!.bytes()));
      return [offset, length];
    });
    // Back to back, in write order, filling the file (it also holds attribute and sparse tensors).
    ranges.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).toBeGreaterThanOrEqual(ranges[i - 1][0] + ranges[i - 1][1]);
    const initializerBytes = ranges.reduce((n, [, length]) => n + length, 0);
    expect(data.length).toBeGreaterThanOrEqual(initializerBytes);
  });

  it('writes a fresh checksum where the input had one, and keeps entries it does not interpret', () => {
    const first = path.join(dir, 'a.onnx');
    saveModel(buildEveryFieldModel(), first, { externalData: 'always', sizeThreshold: 16 });
    const loaded = loadModel(first);
    const tensor = loaded.graph.initializers.find((v) => v.name === 'w_float_raw')!.initializer!;
    if (tensor.storage.kind !== 'external') throw new Error('expected external storage');
    tensor.storage.external.entries.push(['checksum', 'stale'], ['producer-note', 'kept']);

    const second = path.join(dir, 'b.onnx');
    saveModel(loaded, second, { externalData: 'always', sizeThreshold: 16 });
    const reloaded = loadModel(second);
    const entries = externalEntries(reloaded).get('w_float_raw')!;
    const sha1 = createHash('sha1').update(tensor.bytes()).digest('hex');
    expect(entries.map(([k]) => k)).toEqual(['location', 'offset', 'length', 'checksum', 'producer-note']);
    expect(entries.slice(3)).toEqual([
      ['checksum', sha1],
      ['producer-note', 'kept'],
    ]);
    expect(entries[0]).toEqual(['location', 'b.onnx.data']);
    expectSameModel(reloaded, loaded);
  });

  describe('refuses a location that leaves the model folder, before opening anything there', () => {
    let outside: string;
    let outsideFile: string;
    beforeEach(() => {
      outside = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-outside-'));
      outsideFile = path.join(outside, 'secret.bin');
      fs.writeFileSync(outsideFile, Buffer.alloc(16, 7));
      fs.mkdirSync(path.join(dir, 'models'));
    });
    afterEach(() => fs.rmSync(outside, { recursive: true, force: true }));

    function expectRefused(location: string, why: string): void {
      const file = path.join(dir, 'models', 'm.onnx');
      fs.writeFileSync(file, externalModelBytes([['location', location]]));
      vi.mocked(fs.openSync).mockClear();
      vi.mocked(fs.readFileSync).mockClear();
      const error = thrown(() => loadModel(file));
      expect(error).toBeInstanceOf(VcompileError);
      expect(error.message).toBe(`${file}: tensor w: external data location '${location}' ${why}`);
      const opened = [...vi.mocked(fs.openSync).mock.calls, ...vi.mocked(fs.readFileSync).mock.calls].map((c) => String(c[0]));
      expect(opened).toEqual([file]);
    }

    it('an absolute path', () => expectRefused(outsideFile, 'is absolute'));
    it("a path through '..'", () => expectRefused(`../../${path.basename(outside)}/secret.bin`, "contains '..'"));
    it("'..' hidden in the middle", () => expectRefused('sub/../../x.bin', "contains '..'"));
    it('a symbolic link to a file outside', () => {
      fs.symlinkSync(outsideFile, path.join(dir, 'models', 'link.bin'));
      expectRefused('link.bin', 'resolves outside the model folder');
    });
    it('a file inside a symlinked folder that points outside', () => {
      fs.symlinkSync(outside, path.join(dir, 'models', 'linked-dir'));
      expectRefused('linked-dir/secret.bin', 'resolves outside the model folder');
    });
    it('a missing file', () => expectRefused('absent.bin', 'does not exist'));
  });

  it('accepts a symbolic link that stays inside the model folder', () => {
    fs.writeFileSync(path.join(dir, 'real.bin'), Buffer.from(Float32Array.of(1, 2, 3, 4).buffer));
    fs.symlinkSync('real.bin', path.join(dir, 'alias.bin'));
    const file = path.join(dir, 'm.onnx');
    fs.writeFileSync(file, externalModelBytes([['location', 'alias.bin']]));
    expect(Array.from(loadModel(file).graph.initializers[0].initializer!.toFloat32())).toEqual([1, 2, 3, 4]);
  });

  it('refuses a range that runs past the end of the data file', () => {
    fs.writeFileSync(path.join(dir, 'w.bin'), Buffer.alloc(20));
    const file = path.join(dir, 'm.onnx');
    fs.writeFileSync(
      file,
      externalModelBytes([
        ['location', 'w.bin'],
        ['offset', '8'],
        ['length', '16'],
      ]),
    );
    expect(() => loadModel(file)).toThrow(
      new VcompileError(`${file}: tensor w: external data [8, 24) runs past the end of w.bin (20 bytes)`),
    );
  });

  it('reads a tensor at an offset beyond 2^31 (sparse 3 GiB file)', () => {
    const dataFile = path.join(dir, 'big.bin');
    const size = 3 * 2 ** 30;
    const offset = size - 64;
    fs.writeFileSync(dataFile, '');
    fs.truncateSync(dataFile, size); // sparse: takes no disk space
    const fd = fs.openSync(dataFile, 'r+');
    fs.writeSync(fd, Buffer.from(Float32Array.of(1.5, -2, 1e30, -0).buffer), 0, 16, offset);
    fs.closeSync(fd);
    const file = path.join(dir, 'm.onnx');
    fs.writeFileSync(
      file,
      externalModelBytes([
        ['location', 'big.bin'],
        ['offset', String(offset)],
        ['length', '16'],
      ]),
    );

    const tensor = loadModel(file).graph.initializers[0].initializer!;
    expect(tensor.storage.kind === 'external' && tensor.storage.external.offset).toBe(offset);
    expect(Array.from(tensor.toFloat32())).toEqual([1.5, -2, Math.fround(1e30), -0]);
  });
});

// ------------------------------------------------------------------------------------ atomic writes

describe('saveModel writes atomically', () => {
  const smallModel = () => {
    const model = buildEveryFieldModel();
    model.trainingInfo = [];
    return model;
  };

  // A read-only folder (EACCES on the temporary file) is simulated: CI runs as root, where chmod does not deny.
  it('when the temporary file cannot be created: an error and no file', () => {
    const file = path.join(dir, 'out.onnx');
    vi.mocked(fs.openSync).mockImplementationOnce(() => {
      throw Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
    });
    expect(() => saveModel(smallModel(), file)).toThrow(new VcompileError(`${file}: permission denied`));
    expect(filesIn(dir)).toEqual([]);
  });

  it('when the disk fills up mid-write: an error, no file and no temporary file', () => {
    const file = path.join(dir, 'out.onnx');
    vi.mocked(fs.writevSync).mockImplementationOnce(() => {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    });
    expect(() => saveModel(smallModel(), file, { externalData: 'always', sizeThreshold: 16 })).toThrow(
      new VcompileError(`${file}: ENOSPC: no space left on device, write`),
    );
    expect(filesIn(dir)).toEqual([]);
  });

  it('when encoding throws: the error, no file and no temporary data file', () => {
    const model = smallModel();
    const broken = new Tensor('broken', DataType.FLOAT, [256], {
      kind: 'external',
      external: {
        location: 'gone.bin',
        offset: 0,
        length: 1024,
        entries: [['location', 'gone.bin']],
        load: () => {
          throw new Error('the data went away');
        },
      },
    });
    model.graph.initializers[0].initializer = broken;
    for (const externalData of ['always', 'never'] as const) {
      expect(() => saveModel(model, path.join(dir, 'out.onnx'), { externalData })).toThrow('the data went away');
      expect(filesIn(dir)).toEqual([]);
    }
  });

  it('an existing file is replaced whole, never left half-written', () => {
    const file = path.join(dir, 'out.onnx');
    fs.writeFileSync(file, 'previous content');
    vi.mocked(fs.writevSync).mockImplementationOnce(() => {
      throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
    });
    expect(() => saveModel(smallModel(), file)).toThrow(VcompileError);
    expect(fs.readFileSync(file, 'utf8')).toBe('previous content');
    expect(filesIn(dir)).toEqual(['out.onnx']);
    saveModel(smallModel(), file);
    expectSameModel(loadModel(file), smallModel());
  });

  it('refuses to overwrite a protected input, also through a symbolic link, unless told to', () => {
    const input = path.join(dir, 'in.onnx');
    fs.writeFileSync(input, encodeModel(smallModel()));
    const before = hex(bytesOf(input));
    const model = loadModel(input);
    model.docString = 'changed';
    for (const target of [input, path.join(dir, 'alias.onnx')]) {
      if (target !== input) fs.symlinkSync('in.onnx', target);
      expect(asCommandLine(() => saveModel(model, target, { protect: [input] }))).toThrow(
        `${target}: refusing to overwrite the input model (write elsewhere, or pass --overwrite)`,
      );
      expect(() => saveModel(model, target, { protect: [input] })).toThrow(
        `${target}: refusing to overwrite the input model (write elsewhere, or pass overwrite: true)`,
      );
      expect(hex(bytesOf(input))).toBe(before);
    }
    expect(filesIn(dir)).toEqual(['alias.onnx', 'in.onnx']);
    saveModel(model, input, { protect: [input], overwrite: true });
    expect(loadModel(input).docString).toBe('changed');
  });

  it("refuses to overwrite the input's external data file", () => {
    const input = path.join(dir, 'in.onnx');
    saveModel(smallModel(), input, { externalData: 'always', sizeThreshold: 16 });
    const model = loadModel(input);
    const out = path.join(dir, 'out.onnx');
    expect(() => saveModel(model, out, { protect: [input], location: 'in.onnx.data' })).toThrow(
      new VcompileError(`${out}: refusing to overwrite the input's external data file in.onnx.data`),
    );
    expect(filesIn(dir)).toEqual(['in.onnx', 'in.onnx.data']);
  });
});

// ------------------------------------------------------------------------------------ bad input

describe('a file that is not an ONNX model', () => {
  const model = () => encodeModel(buildEveryFieldModel());
  const cases: [string, () => Uint8Array, string | RegExp][] = [
    ['a text file', () => Buffer.from('hello, this is not a model\n'), 'protobuf decode failed at byte 3: unsupported wire type 4'],
    ['an empty file', () => new Uint8Array(0), 'no ir_version and no graph'],
    [
      'a PNG header',
      () => Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]),
      'protobuf decode failed at byte 11: field number 0',
    ],
    ['JSON', () => Buffer.from('{"ir_version": 7}'), 'protobuf decode failed at byte 1: unsupported wire type 3'],
    [
      'a model cut in half',
      () => model().subarray(0, model().length >> 1),
      /^protobuf decode failed at byte \d+: length \d+ runs past the end of its message$/,
    ],
  ];
  for (const [what, bytes, why] of cases) {
    it(`${what}: one-line VcompileError`, () => {
      const file = path.join(dir, 'bad.onnx');
      fs.writeFileSync(file, bytes());
      const error = thrown(() => loadModel(file));
      expect(error).toBeInstanceOf(VcompileError);
      if (typeof why === 'string') expect(error.message).toBe(`${file}: not an ONNX model (${why})`);
      else expect(error.message.slice(`${file}: not an ONNX model (`.length, -1)).toMatch(why);
    });
  }

  it('a model truncated anywhere inside its graph fails cleanly', () => {
    const bytes = model();
    const graph = Buffer.from(concatChunks(encode('GraphProto', decode('ModelProto', bytes).graph as ProtoMessage)));
    const graphStart = Buffer.from(bytes).indexOf(graph);
    expect(graphStart).toBeGreaterThan(0);
    for (let cut = graphStart; cut < graphStart + graph.length; cut += 97) {
      const error = thrown(() => decodeModel(bytes.subarray(0, cut), { label: 'cut' }));
      expect(error).toBeInstanceOf(VcompileError);
      expect(error.message).toMatch(/^cut: not an ONNX model \(protobuf decode failed at byte \d+: [^\n]+\)$/);
    }
  });

  it('a missing file and a directory', () => {
    const missing = path.join(dir, 'absent.onnx');
    expect(() => loadModel(missing)).toThrow(new VcompileError(`${missing}: no such file`));
    expect(() => loadModel(dir)).toThrow(new VcompileError(`${dir}: is a directory, not a model file`));
  });
});

it('canonicalModel sees a change in any part of the model', () => {
  // The comparisons above are only as good as the canonical form: make sure it is not blind.
  const base = JSON.stringify(canonicalModel(buildEveryFieldModel(), { storageDetail: true }));
  const edits: ((m: Model) => void)[] = [
    (m) => (m.graph.nodes[0].overload = 'v3'),
    (m) => (m.functions[0].attributeProtos[0].i = 4n),
    (m) => (m.graph.initializers[0].initializer = Tensor.fromRaw('w_float_raw', DataType.FLOAT, [1], new Uint8Array(4))),
    (m) => m.trainingInfo[0].algorithm!.nodes[0].attributes.push({ name: 'extra', i: 1n }),
    (m) => (m.graph.unknownFields = []),
    (m) => ((m.graph.nodes[0].deviceConfigurations![0].sharding_spec as { tensor_name: string }[])[0].tensor_name = 'Y'),
  ];
  for (const edit of edits) {
    const model = buildEveryFieldModel();
    edit(model);
    expect(JSON.stringify(canonicalModel(model, { storageDetail: true }))).not.toBe(base);
  }
});
