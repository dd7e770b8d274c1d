// What the command line reads is never written: every file a command reads (the model, its external data,
// plugins, modules and theirs) is protected from every file it writes (OUT and its data file), also
// through symbolic links, `..` and hard links; --overwrite replaces the input and checks OUT against the
// original; a signal during a write leaves no temporary file; only regular files are read. Each command
// runs in a temporary folder with copies of the fixtures, and every file there is compared byte for byte
// afterwards.
import { execFile, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, type ExpectStatic, expect, it } from 'vitest';
import { extractModule } from '../passes/modular/extract.js';
import { buildMeanPlugin, buildVariatorPlugin, initVariatorWeights } from '../passes/plugin/builtin.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { loadModel, saveModel } from '../src/onnx/file.js';

const repo = path.resolve(import.meta.dirname, '..');
const BERT = path.join(repo, 'fixtures/bert_opset14.onnx');
const BERT4 = path.join(repo, 'fixtures/modules/bert4.onnx');
const folders: string[] = [];
afterAll(() => {
  for (const folder of folders) fs.rmSync(folder, { recursive: true, force: true });
});

/** The command line in `cwd` (paths in messages stay short); a hang fails the test instead of the suite. */
function vcompile(cwd: string, ...args: string[]): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(repo, 'bin/vcompile'), ...args], { cwd, timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({
        code: error ? (typeof error.code === 'number' ? error.code : null) : 0,
        signal: error?.signal ?? null,
        stdout,
        stderr,
      }),
    );
  });
}

type Make = 'model' | 'external' | 'plugin' | 'plugin-external' | 'bert4' | 'module' | 'modules-folder';

/**
 * A temporary folder with the files asked for: m.onnx (the BERT fixture), e.onnx + e.onnx.data (the same
 * with external data), p.onnx (a plugin), pv.onnx + pv.onnx.data (a plugin with external data), b4.onnx
 * (the 4-layer BERT), mod.onnx (its layers 1-2 as a module), mods/ (the trained modules).
 */
function workspace(...make: Make[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-files-'));
  folders.push(dir);
  const at = (name: string) => path.join(dir, name);
  for (const what of make) {
    if (what === 'model') fs.copyFileSync(BERT, at('m.onnx'));
    if (what === 'external') saveModel(loadModel(BERT), at('e.onnx'), { externalData: 'always' });
    if (what === 'plugin') saveModel(buildMeanPlugin({ ratio: 2, hidden: 64, scope: 'ffn', opset: 14 }), at('p.onnx'));
    if (what === 'plugin-external') {
      const shape = { ratio: 2, hidden: 64, scope: 'ffn' as const, opset: 14 };
      saveModel(buildVariatorPlugin(shape, initVariatorWeights(2, 64)), at('pv.onnx'), { externalData: 'always', sizeThreshold: 16 });
    }
    if (what === 'bert4') fs.copyFileSync(BERT4, at('b4.onnx'));
    if (what === 'module') saveModel(extractModule(loadModel(BERT4), 1, 2).module, at('mod.onnx'));
    if (what === 'modules-folder') {
      fs.mkdirSync(at('mods'));
      for (const f of fs.readdirSync(path.join(repo, 'fixtures/modules/trained')).filter((f) => f.endsWith('.onnx')))
        fs.copyFileSync(path.join(repo, 'fixtures/modules/trained', f), path.join(at('mods'), f));
    }
  }
  return dir;
}

/** Every file under `dir` (relative path -> bytes). */
function contents(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (sub: string) => {
    for (const entry of fs.readdirSync(path.join(dir, sub), { withFileTypes: true })) {
      const rel = path.join(sub, entry.name);
      if (entry.isDirectory()) walk(rel);
      else if (entry.isFile()) files.set(rel, fs.readFileSync(path.join(dir, rel)));
      else files.set(rel, Buffer.from(`(${entry.isSymbolicLink() ? 'link' : 'special'})`));
    }
  };
  walk('');
  return files;
}

/**
 * Every file of `before` is still there, byte for byte, and nothing else is (no output, no temporary file).
 * `check`: the test's own expect, in concurrent tests.
 */
function expectUnchanged(dir: string, before: Map<string, Buffer>, check: ExpectStatic = expect): void {
  const after = contents(dir);
  check([...after.keys()].sort()).toEqual([...before.keys()].sort());
  for (const [name, bytes] of before) check(after.get(name)!.equals(bytes), `${name} changed`).toBe(true);
}

/** No temporary file or kept original anywhere under `dir`. */
function expectNoTemporaries(dir: string): void {
  expect([...contents(dir).keys()].filter((f) => /(^|\/)\.[^/]*(\.tmp|\.original\.[^/]*)(\/|$)/.test(f))).toEqual([]);
}

describe.concurrent('a compile never writes over a file it reads', () => {
  const cases: [string, Make[], (dir: string) => string[], string][] = [
    [
      '--data-location naming the input model',
      ['external'],
      () => ['e.onnx', '-o', 'out.onnx', '--data-location', 'e.onnx', '--no-verify'],
      'out.onnx: refusing to write the external data over the input model, which this run reads (--data-location e.onnx names it; choose another)',
    ],
    [
      '--data-location naming the input model (inline input, --external-data always)',
      ['model'],
      () => ['m.onnx', '-o', 'out.onnx', '--external-data', 'always', '--data-location', 'm.onnx', '--no-verify'],
      'out.onnx: refusing to write the external data over the input model, which this run reads (--data-location m.onnx names it; choose another)',
    ],
    [
      "-o naming the input's external data file",
      ['external'],
      () => ['e.onnx', '-o', 'e.onnx.data', '--no-verify'],
      "e.onnx.data: refusing to overwrite the input's external data file e.onnx.data, which this run reads (write elsewhere)",
    ],
    [
      "-o naming the input's external data file through a symbolic link",
      ['external'],
      (dir) => {
        fs.symlinkSync('e.onnx.data', path.join(dir, 'alias.data'));
        return ['e.onnx', '-o', 'alias.data', '--no-verify'];
      },
      "alias.data: refusing to overwrite the input's external data file e.onnx.data, which this run reads (write elsewhere)",
    ],
    [
      "-o naming the input's external data file through '..'",
      ['external'],
      (dir) => {
        fs.mkdirSync(path.join(dir, 'sub'));
        return ['e.onnx', '-o', 'sub/../e.onnx.data', '--no-verify'];
      },
      "sub/../e.onnx.data: refusing to overwrite the input's external data file e.onnx.data, which this run reads (write elsewhere)",
    ],
    [
      "-o naming the input's external data file through a hard link",
      ['external'],
      (dir) => {
        fs.linkSync(path.join(dir, 'e.onnx.data'), path.join(dir, 'hard.data'));
        return ['e.onnx', '-o', 'hard.data', '--no-verify'];
      },
      "hard.data: refusing to overwrite the input's external data file e.onnx.data, which this run reads (write elsewhere)",
    ],
    [
      'the input model through a hard link',
      ['model'],
      (dir) => {
        fs.linkSync(path.join(dir, 'm.onnx'), path.join(dir, 'hard.onnx'));
        return ['m.onnx', '-o', 'hard.onnx', '--no-verify'];
      },
      'hard.onnx: refusing to overwrite the input model (write elsewhere, or pass --overwrite)',
    ],
    [
      '--data-location equal to OUT',
      ['model'],
      () => ['m.onnx', '-o', 'out.onnx', '--external-data', 'always', '--data-location', 'out.onnx'],
      '--data-location out.onnx: names the output file itself; the weights need a file of their own (the default is out.onnx.data)',
    ],
    [
      '--data-location equal to OUT, spelled differently',
      ['external'],
      () => ['e.onnx', '-o', 'out.onnx', '--data-location', './out.onnx'],
      '--data-location ./out.onnx: names the output file itself; the weights need a file of their own (the default is out.onnx.data)',
    ],
    [
      '-o naming a --plugin file',
      ['model', 'plugin'],
      () => ['m.onnx', '--plugin', 'p.onnx', '-o', 'p.onnx', '--no-verify'],
      'p.onnx: refusing to overwrite plugin p.onnx, which this run reads (write elsewhere)',
    ],
    [
      '-o naming a per-layer --plugin file',
      ['model', 'plugin'],
      () => ['m.onnx', '--plugin', '1=p.onnx', '-o', './p.onnx', '--no-verify'],
      './p.onnx: refusing to overwrite plugin p.onnx, which this run reads (write elsewhere)',
    ],
    [
      '--data-location naming a --plugin file',
      ['model', 'plugin'],
      () => ['m.onnx', '--plugin', 'p.onnx', '-o', 'out.onnx', '--external-data', 'always', '--data-location', 'p.onnx', '--no-verify'],
      'out.onnx: refusing to write the external data over plugin p.onnx, which this run reads (--data-location p.onnx names it; choose another)',
    ],
    [
      "-o naming a plugin's external data file",
      ['model', 'plugin-external'],
      () => ['m.onnx', '--plugin', 'pv.onnx', '-o', 'pv.onnx.data', '--no-verify'],
      'pv.onnx.data: refusing to overwrite the external data file pv.onnx.data of plugin pv.onnx, which this run reads (write elsewhere)',
    ],
    [
      '-o naming a --module file',
      ['bert4', 'module'],
      () => ['b4.onnx', '--module', '1-2=mod.onnx', '-o', 'mod.onnx', '--no-verify'],
      'mod.onnx: refusing to overwrite module mod.onnx, which this run reads (write elsewhere)',
    ],
    [
      '--data-location naming a --module file',
      ['bert4', 'module'],
      () => ['b4.onnx', '--module', '1-2=mod.onnx', '-o', 'out.onnx', '--external-data', 'always', '--data-location', 'mod.onnx'],
      'out.onnx: refusing to write the external data over module mod.onnx, which this run reads (--data-location mod.onnx names it; choose another)',
    ],
    [
      '-o naming a module of --modules DIR',
      ['bert4', 'modules-folder'],
      () => ['b4.onnx', '--target-speedup', '1.2', '--modules', 'mods', '-o', 'mods/layer_span2_L1-2.onnx', '--speedup-seq', '16'],
      'mods/layer_span2_L1-2.onnx: refusing to overwrite module mods/layer_span2_L1-2.onnx, which this run reads (write elsewhere)',
    ],
    [
      "extract -o naming the input's external data file",
      ['external'],
      () => ['extract', 'e.onnx', '--layers', '1', '-o', 'e.onnx.data'],
      "e.onnx.data: refusing to overwrite the input's external data file e.onnx.data, which this run reads (write elsewhere)",
    ],
    [
      'bench --chart naming a model it times',
      ['model'],
      () => ['bench', 'm.onnx', '--chart', 'm.onnx', '--runs', '1', '--warmup', '0'],
      '--chart m.onnx: refusing to overwrite m.onnx, which this run reads (write the chart elsewhere)',
    ],
  ];
  it.for(cases)('%s: one line, exit 2, every file as it was', async ([, make, args, message], { expect }) => {
    const dir = workspace(...make);
    const argv = args(dir);
    const before = contents(dir);
    const r = await vcompile(dir, ...argv);
    expect(r.stderr).toBe(`vcompile: ${message}\n`);
    expect(r.code).toBe(2);
    expectUnchanged(dir, before, expect);
  });
});

describe('--overwrite: OUT replaces the input model', () => {
  it('the check after the compile compares OUT with the original, not with itself', async () => {
    const dir = workspace('model');
    const elsewhere = await vcompile(dir, 'm.onnx', '--plugin', 'builtin:mean:4', '-o', 'other.onnx', '--json');
    expect(elsewhere.code).toBe(0);
    const inPlace = await vcompile(dir, 'm.onnx', '--plugin', 'builtin:mean:4', '-o', 'm.onnx', '--overwrite', '--json');
    expect(inPlace.stderr).toBe('');
    expect(inPlace.code).toBe(0);
    const [expected, actual] = [JSON.parse(elsewhere.stdout).verify, JSON.parse(inPlace.stdout).verify];
    expect(actual.original).toBe('m.onnx');
    expect(actual.outputs[0].maxAbs).toBeGreaterThan(0.1);
    expect(actual.outputs).toEqual(expected.outputs);
    expect(fs.readFileSync(path.join(dir, 'm.onnx')).equals(fs.readFileSync(path.join(dir, 'other.onnx')))).toBe(true);
    expectNoTemporaries(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(['m.onnx', 'other.onnx']);
  });

  it('--external-data never removes the old data file, which nothing uses any more', async () => {
    const dir = workspace('external');
    const r = await vcompile(dir, 'e.onnx', '-o', 'e.onnx', '--overwrite', '--external-data', 'never');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^wrote e\.onnx \(945855 bytes\)\nremoved e\.onnx\.data \(the input's external data; the output no longer uses it\)\nverify: skipped: no pass changed the model /,
    );
    expect(fs.readdirSync(dir)).toEqual(['e.onnx']);
    expect(fs.readFileSync(path.join(dir, 'e.onnx')).equals(fs.readFileSync(BERT))).toBe(true);
  });

  it('with external data kept, the data file is replaced along with the model', async () => {
    const dir = workspace('external');
    const r = await vcompile(dir, 'e.onnx', '--plugin', 'builtin:mean:2', '-o', 'e.onnx', '--overwrite', '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.externalData).toBe('e.onnx.data');
    expect(report.verify.outputs[0].maxAbs).toBeGreaterThan(0.1);
    expect(fs.readdirSync(dir).sort()).toEqual(['e.onnx', 'e.onnx.data']);
    expect(loadModel(path.join(dir, 'e.onnx')).getMetadata('vcompile.plugins')).toContain('builtin:mean:2');
  });

  it('OUT another name of the input (a link): the link is replaced, the input and its data stay', async () => {
    for (const link of [fs.symlinkSync, fs.linkSync]) {
      const dir = workspace('external');
      link(link === fs.symlinkSync ? 'e.onnx' : path.join(dir, 'e.onnx'), path.join(dir, 'alias.onnx'));
      const before = contents(dir);
      before.delete('alias.onnx');
      const r = await vcompile(dir, 'e.onnx', '-o', 'alias.onnx', '--overwrite', '--external-data', 'never', '--max-error', '0');
      expect(r.stderr).toBe('');
      expect(r.stdout).not.toContain('removed');
      const after = contents(dir);
      expect(after.get('alias.onnx')!.equals(fs.readFileSync(BERT))).toBe(true);
      after.delete('alias.onnx');
      expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
      for (const [name, bytes] of before) expect(after.get(name)!.equals(bytes), `${name} changed`).toBe(true);
    }
  });

  it('does not make a plugin or the data of another file replaceable', async () => {
    const dir = workspace('external', 'plugin');
    const before = contents(dir);
    const r = await vcompile(dir, 'e.onnx', '--plugin', 'p.onnx', '-o', 'e.onnx', '--overwrite', '--data-location', 'p.onnx');
    expect(r.stderr).toBe(
      'vcompile: e.onnx: refusing to write the external data over plugin p.onnx, which this run reads (--data-location p.onnx names it; choose another)\n',
    );
    expect((await vcompile(dir, 'e.onnx', '-o', 'e.onnx.data', '--overwrite')).code).toBe(2);
    expectUnchanged(dir, before);
  });
});

describe('a signal during a write', () => {
  /** A model of 8 x 32 MiB weights: big enough that writing it takes a while. */
  function bigModel(dir: string): string {
    const n = 8 << 20;
    const b = new ModelBuilder(17);
    let x = b.input('x', tensorType(DataType.FLOAT, [n]));
    for (let i = 0; i < 8; i++) x = b.op.Add(x, b.floats(`w${i}`, [n], new Float32Array(n).fill(i)));
    b.output(x, 'y', tensorType(DataType.FLOAT, [n]));
    const file = path.join(dir, 'big.onnx');
    saveModel(b.model, file);
    return file;
  }

  /** Starts a compile, sends SIGTERM as soon as its first temporary file appears; resolves when it has exited. */
  function interruptWrite(dir: string, args: string[]): Promise<{ code: number | null; stderr: string; during: boolean }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [path.join(repo, 'bin/vcompile'), ...args], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => {
        stderr += d;
      });
      let sent = false;
      const watch = setInterval(() => {
        if (!sent && fs.readdirSync(dir).some((f) => f.endsWith('.tmp'))) {
          sent = true;
          child.kill('SIGTERM');
        }
      }, 1);
      child.on('exit', (code) => {
        clearInterval(watch);
        resolve({ code, stderr, during: sent && !fs.existsSync(path.join(dir, 'out.onnx')) });
      });
    });
  }

  it('SIGTERM removes the temporary files, says so in one line and exits 143', async () => {
    const dir = workspace();
    bigModel(dir);
    const before = contents(dir);
    // The signal must land while the file is written; on a loaded machine the write may win the race, so
    // a few tries are allowed (each must clean up), and one of them must have been interrupted mid-write.
    let interrupted = 0;
    for (const args of [['--external-data', 'always'], [], ['--external-data', 'always'], []]) {
      const r = await interruptWrite(dir, ['big.onnx', '-o', 'out.onnx', '--no-verify', ...args]);
      expect(r.code).toBe(143);
      expect(r.stderr).toMatch(/^vcompile: interrupted by SIGTERM( \(removed \d temporary files?\))?\n$/);
      expectNoTemporaries(dir);
      if (r.during) {
        interrupted++;
        expect(r.stderr).toMatch(/removed/);
        expectUnchanged(dir, before);
      }
      for (const f of ['out.onnx', 'out.onnx.data']) fs.rmSync(path.join(dir, f), { force: true });
      if (interrupted > 0) break;
    }
    expect(interrupted).toBeGreaterThan(0);
  }, 60_000);
});

describe.concurrent('only regular files are read (a FIFO or a device would block, or never end)', () => {
  const fifo = (dir: string, name: string) => {
    const r = spawnSync('mkfifo', [path.join(dir, name)]);
    if (r.status !== 0) throw new Error(`mkfifo failed: ${r.stderr}`);
    return name;
  };
  const cases: [string, Make[], (dir: string) => string[], string | RegExp][] = [
    ['a FIFO as MODEL', [], (dir) => [fifo(dir, 'f.onnx'), '-o', 'out.onnx'], 'f.onnx: is a named pipe (FIFO), not a regular file'],
    ['a device as MODEL', [], () => ['/dev/null', '-o', 'out.onnx'], '/dev/null: is a character device, not a regular file'],
    ['a FIFO to inspect', [], (dir) => ['inspect', fifo(dir, 'f.onnx')], 'f.onnx: is a named pipe (FIFO), not a regular file'],
    [
      'a FIFO as --plugin',
      ['model'],
      (dir) => ['m.onnx', '--plugin', fifo(dir, 'p.onnx'), '-o', 'out.onnx'],
      'plugin p.onnx: is a named pipe (FIFO), not a regular file',
    ],
    [
      'a FIFO as --module',
      ['bert4'],
      (dir) => ['b4.onnx', '--module', `1-2=${fifo(dir, 'mod.onnx')}`, '-o', 'out.onnx'],
      'module mod.onnx: is a named pipe (FIFO), not a regular file',
    ],
    [
      'a FIFO as external data',
      ['external'],
      (dir) => {
        fs.rmSync(path.join(dir, 'e.onnx.data'));
        fifo(dir, 'e.onnx.data');
        return ['e.onnx', '-o', 'out.onnx'];
      },
      /^e\.onnx: tensor .*: external data location 'e\.onnx\.data' is a named pipe \(FIFO\), not a regular file$/,
    ],
    [
      'a FIFO as verify ORIGINAL',
      ['model'],
      (dir) => ['verify', fifo(dir, 'f.onnx'), 'm.onnx'],
      'f.onnx: is a named pipe (FIFO), not a regular file',
    ],
    [
      'a FIFO as verify REWRITTEN (ONNX Runtime would open it)',
      ['model'],
      (dir) => ['verify', 'm.onnx', fifo(dir, 'f.onnx')],
      'f.onnx: is a named pipe (FIFO), not a regular file',
    ],
    [
      'a FIFO among verify --inputs',
      ['model'],
      (dir) => {
        fs.mkdirSync(path.join(dir, 'in'));
        fifo(dir, 'in/input_ids.npy');
        return ['verify', 'm.onnx', 'm.onnx', '--inputs', 'in'];
      },
      'in/input_ids.npy: is a named pipe (FIFO), not a regular file',
    ],
  ];
  it.for(cases)('%s: refused at once', async ([, make, args, message], { expect }) => {
    const dir = workspace(...make);
    const argv = args(dir);
    const r = await vcompile(dir, ...argv);
    expect(r.signal).toBeNull();
    expect(r.stderr.endsWith('\n') && r.stderr.split('\n')).toHaveLength(2);
    const line = r.stderr.slice('vcompile: '.length, -1);
    if (typeof message === 'string') expect(line).toBe(message);
    else expect(line).toMatch(message);
    expect(r.code).toBe(2);
    expect(fs.existsSync(path.join(dir, 'out.onnx'))).toBe(false);
  });
});
