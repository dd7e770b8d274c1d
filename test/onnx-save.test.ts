// saveModel's safety, as a library caller sees it: files compared by identity (hard links, `..`, symbolic
// links), the data file checked (not OUT, inside OUT's folder), `overwrite` replacing the input with its own
// data and removing what it no longer uses, temporary files registered (removeTemporaryFiles, what the
// CLI's signal handler calls), the original kept for the check after an in-place write, and the bytes the
// same whether written in one go or in pieces.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VcompileError } from '../src/errors.js';
import { ModelBuilder } from '../src/ir/builder.js';
import type { Model } from '../src/ir/model.js';
import { DataType, tensorType } from '../src/ir/types.js';
import {
  checkSave,
  encodeModel,
  externalDataFiles,
  keepOriginal,
  loadModel,
  readFileOrFail,
  removeTemporaryFiles,
  saveModel,
  saveModelAsync,
} from '../src/onnx/file.js';
import { expectSameModel } from './helpers/canonical.js';
import { buildEveryFieldModel } from './helpers/every-field.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-save-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const at = (name: string) => path.join(dir, name);
const filesIn = (folder: string) => fs.readdirSync(folder).sort();

function everyField(): Model {
  const model = buildEveryFieldModel();
  model.trainingInfo = [];
  return model;
}

/** A model with one weight of `n` floats (x + w). */
function weighted(n: number): Model {
  const b = new ModelBuilder(17);
  const x = b.input('x', tensorType(DataType.FLOAT, [n]));
  b.output(
    b.op.Add(
      x,
      b.floats(
        'w',
        [n],
        Float32Array.from({ length: n }, (_, i) => i % 251),
      ),
    ),
    'y',
    tensorType(DataType.FLOAT, [n]),
  );
  return b.model;
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

describe('saveModelAsync and saveModel write the same bytes', () => {
  it('inline and with external data', async () => {
    // the same file name in two folders: the data file's name is written into the model
    for (const options of [{}, { externalData: 'always' as const, sizeThreshold: 16 }]) {
      saveModel(everyField(), at('sync/m.onnx'), options);
      await saveModelAsync(everyField(), at('async/m.onnx'), options);
      expect(fs.readFileSync(at('async/m.onnx')).equals(fs.readFileSync(at('sync/m.onnx')))).toBe(true);
    }
    expect(fs.readFileSync(at('async/m.onnx.data')).equals(fs.readFileSync(at('sync/m.onnx.data')))).toBe(true);
  });

  it('a tensor larger than one piece of a write (16 MiB) goes out whole', async () => {
    const model = weighted(5 << 20);
    await saveModelAsync(model, at('big.onnx'));
    expect(Buffer.from(encodeModel(model)).equals(fs.readFileSync(at('big.onnx')))).toBe(true);
    saveModel(model, at('ext.onnx'), { externalData: 'always' });
    expectSameModel(loadModel(at('ext.onnx')), model);
  });
});

describe('the files a run reads are compared by identity', () => {
  beforeEach(() => saveModel(everyField(), at('in.onnx')));

  it('a hard link, a path through .. and a symbolic link to the folder all name the input', () => {
    fs.linkSync(at('in.onnx'), at('hard.onnx'));
    fs.mkdirSync(at('sub'));
    fs.symlinkSync(dir, at('sub/up'));
    const model = loadModel(at('in.onnx'));
    for (const target of [at('hard.onnx'), at('sub/../in.onnx'), at('sub/up/in.onnx')]) {
      expect(() => saveModel(model, target, { protect: [at('in.onnx')] })).toThrow(
        `${target}: refusing to overwrite the input model (write elsewhere, or pass overwrite: true)`,
      );
    }
    expect(filesIn(dir)).toEqual(['hard.onnx', 'in.onnx', 'sub']);
  });

  it('other files read are named by their label and never replaceable, even with overwrite', () => {
    fs.copyFileSync(at('in.onnx'), at('p.onnx'));
    const protect = [at('in.onnx'), { file: at('p.onnx'), label: 'plugin p.onnx' }];
    for (const overwrite of [false, true]) {
      expect(() => saveModel(everyField(), at('p.onnx'), { protect, overwrite })).toThrow(
        `${at('p.onnx')}: refusing to overwrite plugin p.onnx, which this run reads (write elsewhere)`,
      );
      expect(() => saveModel(everyField(), at('out.onnx'), { protect, overwrite, externalData: 'always', location: 'p.onnx' })).toThrow(
        `${at('out.onnx')}: refusing to write the external data over plugin p.onnx, which this run reads (location 'p.onnx' names it; choose another)`,
      );
    }
    expect(filesIn(dir)).toEqual(['in.onnx', 'p.onnx']);
  });
});

describe('the external data file', () => {
  const refused = (location: string, why: string, make?: () => void) => {
    make?.();
    const before = filesIn(dir);
    const error = thrown(() => saveModel(everyField(), at('out.onnx'), { externalData: 'always', location }));
    expect(error).toBeInstanceOf(VcompileError);
    expect(error.message).toBe(`external data location '${location}': ${why}`);
    expect(filesIn(dir)).toEqual(before);
  };

  it('is not OUT itself', () =>
    refused('out.onnx', 'names the output file itself; the weights need a file of their own (the default is out.onnx.data)'));
  it('is not a folder', () => refused('weights', 'is a directory; name the file the weights go to', () => fs.mkdirSync(at('weights'))));
  it('does not leave the output folder through a symbolic link', () => {
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-outside-'));
    try {
      refused('linked/w.data', 'resolves outside the output folder (through a symbolic link)', () => fs.symlinkSync(outside, at('linked')));
      expect(fs.readdirSync(outside)).toEqual([]);
    } finally {
      fs.rmSync(outside, { recursive: true, force: true });
    }
  });
  it('is written in a subfolder, created on the way', () => {
    saveModel(everyField(), at('out.onnx'), { externalData: 'always', sizeThreshold: 16, location: 'weights/out.data' });
    expect(fs.existsSync(at('weights/out.data'))).toBe(true);
    expectSameModel(loadModel(at('out.onnx')), everyField());
  });
});

describe('overwrite: OUT replaces the input', () => {
  beforeEach(() => saveModel(everyField(), at('in.onnx'), { externalData: 'always', sizeThreshold: 16 }));

  it("the new data file may replace the input's own, found from the model read", () => {
    const model = loadModel(at('in.onnx'));
    model.docString = 'replaced';
    expect(checkSave(model, at('in.onnx'), { protect: [at('in.onnx')], overwrite: true })).toEqual({ replacesInput: true });
    const written = saveModel(model, at('in.onnx'), { protect: [at('in.onnx')], overwrite: true });
    expect(written.removed).toEqual([]);
    expect(filesIn(dir)).toEqual(['in.onnx', 'in.onnx.data']);
    const reloaded = loadModel(at('in.onnx'));
    expect(reloaded.docString).toBe('replaced');
    reloaded.docString = everyField().docString;
    expectSameModel(reloaded, everyField());
  });

  it('the data files it no longer uses are removed after the write', () => {
    const data = fs.realpathSync(at('in.onnx.data'));
    const written = saveModel(loadModel(at('in.onnx')), at('in.onnx'), {
      protect: [at('in.onnx')],
      overwrite: true,
      externalData: 'never',
    });
    expect(written.removed).toEqual([data]);
    expect(filesIn(dir)).toEqual(['in.onnx']);
    expectSameModel(loadModel(at('in.onnx')), everyField());
  });

  it('kept with keepOriginal, the original stays readable until released', () => {
    const data = externalDataFiles(loadModel(at('in.onnx')));
    const kept = keepOriginal(at('in.onnx'), data);
    // another model entirely: the input's data file is known only because it is listed
    const protect = [at('in.onnx'), ...data.map((d) => ({ file: d.file, inputData: true }))];
    saveModel(weighted(4), at('in.onnx'), { protect, overwrite: true, externalData: 'never' });
    expectSameModel(loadModel(kept.file), everyField());
    expect(filesIn(dir)).toEqual([path.basename(path.dirname(kept.file)), 'in.onnx']);
    kept.release();
    expect(filesIn(dir)).toEqual(['in.onnx']);
  });
});

describe('temporary files', () => {
  beforeEach(() => removeTemporaryFiles());

  it('removeTemporaryFiles removes the files of a write in progress; the write then fails and leaves nothing', async () => {
    const writing = saveModelAsync(weighted(12 << 20), at('out.onnx'), { externalData: 'always' });
    const removed = removeTemporaryFiles();
    expect(removed).toHaveLength(1);
    expect(removed[0].folder).toBe(false);
    expect(path.basename(removed[0].path)).toMatch(/^\.out\.onnx\.data\.\d+\.[0-9a-f]{8}\.tmp$/);
    await expect(writing).rejects.toThrow(VcompileError);
    expect(filesIn(dir)).toEqual([]);
    expect(removeTemporaryFiles()).toEqual([]);
  });

  it('a finished write leaves none registered', async () => {
    await saveModelAsync(weighted(4), at('out.onnx'));
    expect(removeTemporaryFiles()).toEqual([]);
    expect(filesIn(dir)).toEqual(['out.onnx']);
  });
});

describe('reading', () => {
  it('a named pipe is refused without waiting for a writer', () => {
    expect(spawnSync('mkfifo', [at('pipe.onnx')]).status).toBe(0);
    expect(() => readFileOrFail(at('pipe.onnx'))).toThrow(
      new VcompileError(`${at('pipe.onnx')}: is a named pipe (FIFO), not a regular file`),
    );
    expect(() => loadModel(dir)).toThrow(new VcompileError(`${dir}: is a directory, not a model file`));
  });
});
