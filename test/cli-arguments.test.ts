// Command lines that used to be accepted silently, hang, or answer with a misleading message: each gets
// one line naming the flag and the value (exit 2), or the usage; sizes are bounded before any work.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, it } from 'vitest';
import { builtinPluginBytes, loadPlugin, MAX_BUILTIN_PLUGIN_BYTES } from '../src/compile/load.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/ir/types.js';
import { loadModel } from '../src/onnx/file.js';
import { openSession, run } from '../src/runtime/session.js';
import { asCommandLine } from './helpers/cli-message.js';

const repo = path.resolve(import.meta.dirname, '..');
const BERT = 'fixtures/bert_opset14.onnx';
const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-args-'));
  dirs.push(dir);
  return dir;
}

/** The command line, run in the repository (several at once: each mostly waits for the process). */
function vcompile(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(repo, 'bin/vcompile'), ...args], { cwd: repo, timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, stdout, stderr }),
    );
  });
}

describe.concurrent('usage and mistyped commands', () => {
  it('bare vcompile prints the usage on stderr, exit 2', async ({ expect }) => {
    const r = await vcompile();
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      [
        'usage: vcompile MODEL -o OUT [--plugin P ...] [--module S-E=M ...] [options]',
        '       vcompile MODEL --target-speedup R --modules DIR -o OUT',
        '       vcompile extract MODEL --layers S-E -o M.onnx',
        '       vcompile plugin init --kind K --ratio K --hidden D -o P.onnx',
        '       vcompile plugin fit MODEL --data PATH --ratio K --scope S -o DIR',
        '       vcompile tune MODEL --data PATH [--budget B] -o OUT [--report DIR]',
        '       vcompile inspect MODEL [options]',
        '       vcompile verify ORIGINAL REWRITTEN [options]',
        '       vcompile bench MODEL [MODEL...] [options]',
        '       vcompile module fit MODEL --layers S-E[,S-E] --data PATH -o OUT',
        '       vcompile MODEL --target-speedup R --fit-modules --data PATH -o OUT',
        '(vcompile --help lists every option)',
        '',
      ].join('\n'),
    );
  });

  it('vcompile plugin without init prints its usage, exit 2', async ({ expect }) => {
    for (const args of [['plugin'], ['plugin', '--kind', 'mean']]) {
      const r = await vcompile(...args);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(
        'usage: vcompile plugin init --kind K --ratio K --hidden D -o P.onnx\n       vcompile plugin fit MODEL --data PATH --ratio K --scope S -o DIR\n(vcompile plugin init --help and vcompile plugin fit --help list every option)\n',
      );
    }
    expect((await vcompile('plugin', 'int', '--kind', 'mean')).stderr).toBe(
      "vcompile: unknown plugin command 'int' (the plugin commands are init and fit: vcompile plugin init --kind K --ratio K --hidden D -o P.onnx, vcompile plugin fit MODEL --data PATH --ratio K --scope S -o DIR)\n",
    );
  });

  it('a mistyped command is named as one, not read as a model file', async ({ expect }) => {
    const r = await vcompile('inpsect', BERT);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("vcompile: unknown command 'inpsect' (did you mean inspect?)\n");
    expect((await vcompile('bnech', BERT)).stderr).toBe("vcompile: unknown command 'bnech' (did you mean bench?)\n");
    expect((await vcompile('compile', BERT)).stderr).toBe(
      "vcompile: unknown command 'compile' (the commands are inspect, verify, bench, extract, plugin init, plugin fit, tune and module fit; to compile a model, give its file and -o OUT)\n",
    );
    // with -o it is a model file that does not exist
    expect((await vcompile('model', '-o', path.join(tempDir(), 'x.onnx'))).stderr).toBe('vcompile: model: no such file\n');
  });
});

describe.concurrent('verify reads both models with the compile path first', () => {
  const dir = tempDir();
  const text = path.join(dir, 'x.onnx');
  fs.writeFileSync(text, 'hello, not a model\n');
  const cases: [string, string[], string][] = [
    ['a missing REWRITTEN', ['verify', BERT, path.join(dir, 'missing.onnx')], `${path.join(dir, 'missing.onnx')}: no such file`],
    [
      'a REWRITTEN that is not ONNX',
      ['verify', BERT, text],
      `${text}: not an ONNX model (protobuf decode failed at byte 3: unsupported wire type 4)`,
    ],
    ['a missing ORIGINAL', ['verify', path.join(dir, 'missing.onnx'), BERT], `${path.join(dir, 'missing.onnx')}: no such file`],
  ];
  it.for(cases)('%s: the same message as vcompile MODEL -o OUT', async ([, args, line], { expect }) => {
    const r = await vcompile(...args);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`vcompile: ${line}\n`);
  });
  it('the compile path gives it too', async ({ expect }) => {
    expect((await vcompile(text, '-o', path.join(dir, 'out.onnx'))).stderr).toBe(
      `vcompile: ${text}: not an ONNX model (protobuf decode failed at byte 3: unsupported wire type 4)\n`,
    );
  });
});

describe.concurrent('values accepted silently before', () => {
  // each case gets its own folder (DIR in the messages), which must stay empty
  const cases: [string, (dir: string) => string[], string][] = [
    [
      'two --plugin L= for one layer',
      (dir) => [BERT, '--plugin', '1=builtin:mean:2', '--plugin', '1=builtin:variator:2', '-o', path.join(dir, 'out.onnx')],
      '--plugin 1=builtin:variator:2: layer 1 already has --plugin 1=builtin:mean:2 (one plugin per layer; --switchable takes one per ratio)',
    ],
    [
      '--dim naming no dim (compile)',
      (dir) => [BERT, '-o', path.join(dir, 'out.onnx'), '--dim', 'sequence=16'],
      `--dim sequence=16: ${BERT} has no input dim named sequence (the symbolic input dims are batch, seq)`,
    ],
    [
      '--dim naming no dim (verify)',
      () => ['verify', BERT, BERT, '--dim', 'sequence=16'],
      `--dim sequence=16: ${BERT} has no input dim named sequence (the symbolic input dims are batch, seq)`,
    ],
    [
      '--dim naming no dim (bench)',
      () => ['bench', BERT, 'fixtures/vit.onnx', '--dim', 'sequence=16', '--runs', '1'],
      `--dim sequence=16: none of ${BERT}, fixtures/vit.onnx has an input dim named sequence (the symbolic input dims are batch, seq)`,
    ],
    [
      '--ratios on a model that is not switchable',
      () => ['bench', BERT, '--ratios', '2', '--runs', '1'],
      `--ratios 2: ${BERT} is not a switchable model (no vcompile_ratio input: compile with --switchable)`,
    ],
    [
      '--size-threshold abc',
      (dir) => [BERT, '-o', path.join(dir, 'out.onnx'), '--size-threshold', 'abc'],
      '--size-threshold abc: must be a whole number of bytes >= 0',
    ],
    [
      '--size-threshold -5',
      (dir) => [BERT, '-o', path.join(dir, 'out.onnx'), '--size-threshold=-5'],
      '--size-threshold -5: must be a whole number of bytes >= 0',
    ],
    [
      'plugin init --opset 99',
      (dir) => ['plugin', 'init', '--kind', 'mean', '--ratio', '2', '--hidden', '64', '--opset', '99', '-o', path.join(dir, 'out.onnx')],
      '--opset 99: must be a whole number from 11 (plugins need dynamic Pad and Slice) to 26 (the newest opset ONNX Runtime 1.30 runs)',
    ],
    [
      'plugin init --opset 10',
      (dir) => ['plugin', 'init', '--kind', 'mean', '--ratio', '2', '--hidden', '64', '--opset', '10', '-o', path.join(dir, 'out.onnx')],
      '--opset 10: must be a whole number from 11 (plugins need dynamic Pad and Slice) to 26 (the newest opset ONNX Runtime 1.30 runs)',
    ],
    [
      'builtin:mean:1e9',
      (dir) => [BERT, '--plugin', 'builtin:mean:1e9', '-o', path.join(dir, 'out.onnx')],
      "plugin builtin:mean:1e9: the ratio K must be a whole number from 1 to 1024, got '1e9'",
    ],
    [
      'builtin:mean:2000',
      (dir) => [BERT, '--plugin', 'builtin:mean:2000', '-o', path.join(dir, 'out.onnx')],
      "plugin builtin:mean:2000: the ratio K must be a whole number from 1 to 1024, got '2000'",
    ],
    [
      '-o naming a folder (trailing slash)',
      (dir) => [BERT, '-o', `${dir}/`],
      '-o DIR/: is a directory; name the file to write (e.g. DIR/model.onnx)',
    ],
    ['-o naming a folder', (dir) => [BERT, '-o', dir], '-o DIR: is a directory; name the file to write (e.g. DIR/model.onnx)'],
    [
      '-o under a file',
      (dir) => {
        fs.writeFileSync(path.join(dir, 'plain'), '');
        return [BERT, '-o', path.join(dir, 'plain', 'out.onnx')];
      },
      '-o DIR/plain/out.onnx: DIR/plain is a file, not a folder',
    ],
  ];
  it.for(cases)('%s: one line naming the flag, exit 2, nothing written', async ([, args, message], { expect }) => {
    const dir = tempDir();
    const r = await vcompile(...args(dir));
    expect(r.stderr.replaceAll(dir, 'DIR')).toBe(`vcompile: ${message}\n`);
    expect(r.code).toBe(2);
    expect(fs.readdirSync(dir).filter((f) => f !== 'plain')).toEqual([]);
  });

  it('--switchable still takes one per-layer plugin per ratio', async ({ expect }) => {
    const output = path.join(tempDir(), 'out.onnx');
    const r = await vcompile(
      BERT,
      '--switchable',
      '--plugin',
      '1=builtin:mean:2',
      '--plugin',
      '1=builtin:mean:4',
      '-o',
      output,
      '--no-verify',
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('-o into folders that do not exist creates them (documented)', async ({ expect }) => {
    const output = path.join(tempDir(), 'new', 'deeper', 'out.onnx');
    expect((await vcompile(BERT, '-o', output, '--no-verify')).code).toBe(0);
    expect(fs.statSync(output).size).toBe(fs.statSync(BERT).size);
  });
});

describe.concurrent('sizes are bounded before any work', () => {
  const out = () => path.join(tempDir(), 'p.onnx');
  const cases: [string, string[], string][] = [
    [
      '--hidden 10000000',
      ['--kind', 'mean', '--ratio', '2', '--hidden', '10000000'],
      '--hidden 10000000: must be at most 65536, beyond the hidden size of any released transformer',
    ],
    [
      '--ratio 5000',
      ['--kind', 'mean', '--ratio', '5000', '--hidden', '64'],
      '--ratio 5000: must be at most 1024 (compression ratios in use are 2 to 16)',
    ],
    [
      'variator weights over 1 GiB',
      ['--kind', 'variator', '--ratio', '1024', '--hidden', '768'],
      "--kind variator --ratio 1024 --hidden 768: the plugin's weights would take 3.0 GiB, over the 1.0 GiB a built-in plugin may take (use a smaller --ratio)",
    ],
  ];
  it.for(cases)('plugin init %s: one line, exit 2', async ([, args, message], { expect }) => {
    const started = Date.now();
    const r = await vcompile('plugin', 'init', ...args, '-o', out());
    expect(r.stderr).toBe(`vcompile: ${message}\n`);
    expect(r.code).toBe(2);
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('a built-in plugin generated for the model is bounded the same way', ({ expect }) => {
    expect(builtinPluginBytes('variator', 1024, 1024)).toBeGreaterThan(MAX_BUILTIN_PLUGIN_BYTES);
    expect(builtinPluginBytes('variator', 16, 8192)).toBe(14_713_152);
    expect(builtinPluginBytes('mean', 1024, 65536)).toBe(0);
    expect(asCommandLine(() => loadPlugin('builtin:variator:1024', { hidden: 1024, opset: 17 }))).toThrow(
      "plugin builtin:variator:1024: its weights would take 4.0 GiB at the model's hidden size 1024, over the 1.0 GiB a built-in plugin may take (use a smaller ratio)",
    );
  });

  it('plugin init at the newest opset ONNX Runtime runs writes a plugin it runs', async ({ expect }) => {
    const plugin = out();
    expect(
      (await vcompile('plugin', 'init', '--kind', 'variator', '--ratio', '2', '--hidden', '64', '--opset', '26', '-o', plugin)).code,
    ).toBe(0);
    expect(loadModel(plugin).opsetImports).toEqual([{ domain: '', version: 26 }]);
    const session = await openSession(plugin);
    try {
      const floats = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));
      const outputs = await run(session, {
        hidden: Tensor.fromArray('hidden', DataType.FLOAT, [1, 4, 64], floats(256)),
        inner: Tensor.fromArray('inner', DataType.FLOAT, [1, 2, 64], floats(128)),
        keep: Tensor.fromArray('keep', DataType.FLOAT, [1, 4], new Float32Array(4).fill(1)),
      });
      expect(outputs.compressed.dims).toEqual([1, 2, 64]);
      expect(outputs.restored.dims).toEqual([1, 4, 64]);
    } finally {
      await session.release();
    }
  });
});
