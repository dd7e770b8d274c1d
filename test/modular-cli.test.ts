// The modular command handlers: what they write and print, and every refusal with its one-line message
// and exit code 2, leaving no output file behind.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { extractModule } from '../passes/modular/extract.js';
import { cliMessage } from '../src/cli/errors.js';
import { assembleCommand, compileModulesCommand, extractCommand, parseModuleFlags } from '../src/cli/modular-commands.js';
import { VcompileError } from '../src/errors.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { DataType, type IrType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { loadModel, saveModel } from '../src/onnx/file.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-modular-cli-'));
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

const BERT = 'fixtures/bert_opset14.onnx';
let printed: string[];
beforeEach(() => {
  printed = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    printed.push(String(chunk));
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});
afterEach(() => vi.restoreAllMocks());

function out(name: string): string {
  return path.join(TMP, name);
}

let refusalCount = 0;
/** A fresh output path per refusal, so that one test's file cannot hide another's. */
function refusedOutput(): string {
  return out(`refused_${++refusalCount}.onnx`);
}

const writeFlags = (output: string) => ({
  output,
  externalData: 'auto' as const,
  sizeThreshold: 1024,
  overwrite: false,
  verifyIr: true,
  json: false,
});

/** A module file: hidden -> Identity -> hidden_out, with the inputs, metadata and sizes given. */
function tinyModule(
  name: string,
  options: { inputs?: [string, IrType][]; span?: string; start?: string; hidden?: number; outputName?: string } = {},
): string {
  const b = new ModelBuilder(14);
  const d = options.hidden ?? 64;
  const inputs = options.inputs ?? [['hidden', tensorType(DataType.FLOAT, ['batch', 'seq', d])]];
  const values = inputs.map(([n, type]) => b.input(n, type));
  b.output(b.op.Identity(values[0]), options.outputName ?? 'hidden_out', tensorType(DataType.FLOAT, ['batch', 'seq', d]));
  const props: [string, string][] = [];
  if (options.span !== undefined) props.push(['vcompile.span', options.span]);
  if (options.start !== undefined) props.push(['vcompile.start', options.start]);
  b.model.metadataProps = props;
  const file = out(name);
  saveModel(b.model, file, { overwrite: true });
  return file;
}

async function expectRefusal(action: () => unknown, message: string | RegExp, output: string): Promise<void> {
  let caught: unknown;
  try {
    await action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(VcompileError);
  const error = caught as VcompileError;
  expect(error.exitCode).toBe(2);
  // the line the CLI prints: options written as the flags they came from
  const line = cliMessage(error.parts);
  expect(line).not.toContain('\n');
  if (typeof message === 'string') expect(line).toBe(message);
  else expect(line).toMatch(message);
  expect(fs.existsSync(output)).toBe(false);
}

describe('vcompile extract', () => {
  it('writes a module under the contract and says what it took', () => {
    const output = out('bert_L1-2.onnx');
    expect(extractCommand(BERT, { layers: '1-2', output, overwrite: false, json: false })).toBe(0);
    const module = loadModel(output);
    assertValid(module, 'extract');
    expect(module.getMetadata('vcompile.span')).toBe('2');
    expect(module.getMetadata('vcompile.start')).toBe('1');
    expect(printed.join('')).toBe(
      `wrote ${output}: layers 1-2 of ${BERT} as a module (vcompile.span 2, vcompile.start 1, attention_bias <- /Mul_output_0; ${fs.statSync(output).size} bytes)\n`,
    );
  });

  const refusals: [string, string, string, string | RegExp][] = [
    ['a malformed --layers', BERT, '1..2', '--layers 1..2: expected START-END (0-based, inclusive), e.g. 2-3'],
    ['START after END', BERT, '2-1', 'extract layers 2-1: START 2 is after END 1'],
    ['layers that do not exist', BERT, '2-4', 'extract layers 2-4: layers 2-4 do not exist (the model has layers 0-2)'],
    [
      'layers of two stacks',
      'fixtures/encoder_decoder.onnx',
      '1-2',
      'extract layers 1-2: layers 1-2 are not consecutive on one residual stream (layer 2 starts the decoder stack)',
    ],
    [
      'T5: a position bias and a mask, two values on the scores',
      'fixtures/t5_encoder.onnx',
      '0-1',
      'extract layers 0-1: layers 0-1 read 2 values besides hidden and weights (/relative_bias/Unsqueeze_2_output_0 (from /relative_bias/Unsqueeze_2 (Unsqueeze)), /Where_1_output_0 (from /Where_1 (Where))); the module contract has one attention_bias',
    ],
    [
      'decoder layers reading the encoder states',
      'fixtures/encoder_decoder.onnx',
      '3',
      /^extract layer 3: layer 3 reads 4 values besides hidden and weights \(\/Expand_1_output_0 .*\/decoder\.1\/cross_attention\/Transpose_2_output_0 .*\); the module contract has one attention_bias$/,
    ],
    [
      'a model without attention',
      'NO_ATTENTION',
      '0',
      'extract layer 0: transformer analysis stopped: no transformer layer found: the graph has no Softmax and no com.microsoft Attention node',
    ],
  ];
  it.each(refusals)('refuses %s', async (_what, model, layers, message) => {
    const output = refusedOutput();
    if (model === 'NO_ATTENTION') model = tinyModule('identity.onnx', { span: '1' });
    await expectRefusal(() => extractCommand(model, { layers, output, overwrite: false, json: false }), message, output);
  });
});

describe('vcompile MODEL --module START-END=SOURCE', () => {
  it('writes the compiled model and reports the layers', () => {
    const module = out('bert_L0-1.onnx');
    saveModel(extractModule(loadModel(BERT), 0, 1).module, module);
    const output = out('compiled.onnx');
    expect(compileModulesCommand(BERT, [`0-1=${module}`, '2=builtin:keep-first'], writeFlags(output))).toBe(0);
    assertValid(loadModel(output), 'modules');
    expect(printed.join('')).toContain(`modules: layers 0-1 <- ${module}\nmodules: layer 2 <- builtin:keep-first\nmodules: removed `);
    expect(printed.join('')).toContain('output layers are [module, module, 2] (original index per layer)');
  });

  it('accepts a module without attention_bias on masked layers, with a note', () => {
    const module = tinyModule('nobias_L0-1.onnx', { span: '2' });
    const output = out('nobias.onnx');
    expect(compileModulesCommand(BERT, [`0-1=${module}`], writeFlags(output))).toBe(0);
    expect(printed.join('')).toContain(
      `modules: note: module ${module} takes no attention_bias: it ignores what layers 0-1 apply to their attention scores\n`,
    );
    const compiled = loadModel(output);
    assertValid(compiled, 'modules');
    expect(compiled.graph.nodes.filter((n) => n.opType === 'Softmax')).toHaveLength(1);
  });

  it('parses the flag values', () => {
    expect(parseModuleFlags(['2-3=a.onnx', '5=builtin:average', '0-0=dir/x=y.onnx'])).toEqual([
      { start: 2, end: 3, source: 'a.onnx' },
      { start: 5, end: 5, source: 'builtin:average' },
      { start: 0, end: 0, source: 'dir/x=y.onnx' },
    ]);
  });

  const float = (dims: (string | number)[]) => tensorType(DataType.FLOAT, dims);
  const hidden64 = ['hidden', float(['batch', 'seq', 64])] as [string, IrType];
  const cases: [string, string, () => string[], string | RegExp][] = [
    ['no --module', BERT, () => [], 'give at least one --module START-END=FILE'],
    [
      'a malformed value',
      BERT,
      () => ['1:2=m.onnx'],
      '--module 1:2=m.onnx: expected START-END=FILE or START-END=builtin:keep-first|average (layers 0-based, inclusive)',
    ],
    ['START after END', BERT, () => ['2-1=builtin:average'], '--module 2-1=builtin:average: START 2 is after END 1'],
    [
      'overlapping spans',
      BERT,
      () => ['0-1=builtin:average', '1-2=builtin:keep-first'],
      '--module 0-1=builtin:average and --module 1-2=builtin:keep-first overlap (layer 1)',
    ],
    [
      'layers that do not exist',
      BERT,
      () => ['1-3=builtin:average'],
      '--module 1-3=builtin:average: layers 1-3 do not exist (the model has layers 0-2)',
    ],
    ['a missing file', BERT, () => [`0-1=${out('nope.onnx')}`], `module ${out('nope.onnx')}: no such file`],
    [
      'a file that is not ONNX',
      BERT,
      () => {
        fs.writeFileSync(out('junk.onnx'), 'not a model');
        return [`0-1=${out('junk.onnx')}`];
      },
      /^module .*junk\.onnx: not an ONNX model/,
    ],
    [
      'a span of another length',
      BERT,
      () => [`0-2=${tinyModule('span2.onnx', { inputs: [hidden64], span: '2' })}`],
      /^--module 0-2=.*span2\.onnx: the module replaces 2 layers \(vcompile\.span = 2\) but layers 0-2 are 3 layers$/,
    ],
    [
      'another hidden size',
      BERT,
      () => [`0-1=${tinyModule('h32.onnx', { inputs: [['hidden', float(['batch', 'seq', 32])]], span: '2', hidden: 32 })}`],
      /^module .*h32\.onnx: hidden size 32 does not match the model's 64$/,
    ],
    [
      'no vcompile.span',
      BERT,
      () => [`0-1=${tinyModule('nospan.onnx', { inputs: [hidden64] })}`],
      /^module .*nospan\.onnx: metadata_props has no vcompile\.span \(how many consecutive layers the module replaces\)$/,
    ],
    [
      'a vcompile.span that is no count',
      BERT,
      () => [`0-1=${tinyModule('span0.onnx', { inputs: [hidden64], span: '0' })}`],
      /^module .*span0\.onnx: vcompile\.span must be an integer >= 1, got '0'$/,
    ],
    [
      'no hidden input',
      BERT,
      () => [`0-1=${tinyModule('nohidden.onnx', { inputs: [['x', float(['batch', 'seq', 64])]], span: '2' })}`],
      /^module .*nohidden\.onnx: missing input 'hidden' \(found 'x'\)$/,
    ],
    [
      'an input outside the contract',
      BERT,
      () => [`0-1=${tinyModule('extra.onnx', { inputs: [hidden64, ['mask', float(['batch', 'seq'])]], span: '2' })}`],
      /^module .*extra\.onnx: input 'mask' is not part of the contract \(the inputs are hidden and, optionally, attention_bias\)$/,
    ],
    [
      'no hidden_out output',
      BERT,
      () => [`0-1=${tinyModule('noout.onnx', { inputs: [hidden64], span: '2', outputName: 'y' })}`],
      /^module .*noout\.onnx: missing output 'hidden_out' \(found 'y'\)$/,
    ],
    [
      'attention_bias where the layers apply nothing to the scores',
      'fixtures/vit.onnx',
      () => [`0-1=${tinyModule('vitbias.onnx', { inputs: [hidden64, ['attention_bias', float(['batch', 1, 1, 'seq'])]], span: '2' })}`],
      /^--module 0-1=.*vitbias\.onnx: the module takes attention_bias, but layers 0-1 apply nothing to their attention scores$/,
    ],
    [
      'an attention_bias of another type',
      BERT,
      () => [
        `0-1=${tinyModule('boolbias.onnx', { inputs: [hidden64, ['attention_bias', tensorType(DataType.BOOL, ['batch', 1, 1, 'seq'])]], span: '2' })}`,
      ],
      /^--module 0-1=.*boolbias\.onnx: the module's attention_bias is bool but the model's \(\/Mul_output_0\) is float$/,
    ],
    [
      'an attention_bias of another rank',
      BERT,
      () => [`0-1=${tinyModule('rank2bias.onnx', { inputs: [hidden64, ['attention_bias', float(['batch', 'seq'])]], span: '2' })}`],
      /^--module 0-1=.*rank2bias\.onnx: the module's attention_bias has rank 2 but the model's \(\/Mul_output_0\) has rank 4$/,
    ],
    [
      'an attention_bias of another shape',
      'fixtures/encoder_decoder.onnx',
      () => [`0-1=${tinyModule('rowbias.onnx', { inputs: [hidden64, ['attention_bias', float(['batch', 1, 1, 'seq'])]], span: '2' })}`],
      /^--module 0-1=.*rowbias\.onnx: the module's attention_bias has 1 at axis 2 but the model's \(\/Where_1_output_0\) has seq$/,
    ],
    [
      'attention_bias where the layers read two values (T5)',
      'fixtures/t5_encoder.onnx',
      () => [`0-1=${tinyModule('t5bias.onnx', { inputs: [hidden64, ['attention_bias', float(['batch', 1, 'seq', 'seq'])]], span: '2' })}`],
      /^--module 0-1=.*t5bias\.onnx: layers 0-1 read 2 values besides hidden and weights \(.*\); the module contract has one attention_bias$/,
    ],
  ];
  it.each(cases)('refuses %s', async (_what, model, values, message) => {
    const output = refusedOutput();
    await expectRefusal(() => compileModulesCommand(model, values(), writeFlags(output)), message, output);
  });
});

describe('vcompile MODEL --target-speedup R --modules DIR', () => {
  const assembleFlags = (modules: string, targetSpeedup: number, output: string) => ({
    ...writeFlags(output),
    modules,
    targetSpeedup,
    batch: 1,
    seq: 16,
    seeds: 1,
    timingRuns: 1,
  });

  it('prints the plan, then writes', async () => {
    const output = out('assembled.onnx');
    expect(await assembleCommand('fixtures/modules/bert4.onnx', assembleFlags('fixtures/modules/trained', 1.2, output))).toBe(0);
    const text = printed.join('');
    expect(text).toMatch(/^plan for a 1\.2x MACs speed-up \(MACs at batch 1, seq 16\): 2 original layers replaced\n/);
    expect(text).toContain('  layers 1-2 <- fixtures/modules/trained/layer_span2_L1-2.onnx (layers from metadata): removes ');
    expect(text).toMatch(
      /\nMACs .* -> .*: predicted speed-up 1\.333x\nmeasured speed-up \d+\.\d{3}x \(median of 1 paired round, IQR [\d.]+-[\d.]+, CPU [\d.]+x; [\d.]+ ms -> [\d.]+ ms\): unreliable, 1 round gives no spread\noutput cosine vs the original: 0\.\d+ /,
    );
    expect(text.indexOf('plan for')).toBeLessThan(text.indexOf(`wrote ${output}`));
    assertValid(loadModel(output), 'assemble');
  });

  const dir = (name: string, files: Record<string, () => string>) => {
    const folder = out(name);
    fs.mkdirSync(folder, { recursive: true });
    for (const [file, make] of Object.entries(files)) fs.copyFileSync(make(), path.join(folder, file));
    return folder;
  };
  const hidden32 = (): [string, IrType] => ['hidden', tensorType(DataType.FLOAT, ['batch', 'seq', 32])];
  const cases: [string, () => [string, number], string | RegExp][] = [
    [
      'an unreachable target',
      () => ['fixtures/modules/trained', 3],
      /^target speed-up 3x cannot be reached with the 2 modules in fixtures\/modules\/trained: the best reachable MACs speed-up at batch 1, seq 16 is 1\.\d{3}x \(layers 1-3 <- layer_span3_L1-3\.onnx\)$/,
    ],
    ['a target of 1 or less', () => ['fixtures/modules/trained', 1], '--target-speedup must be a number > 1, got 1'],
    ['a missing folder', () => [out('none'), 2], `--modules ${out('none')}: no such file`],
    ['a folder without modules', () => [dir('empty', {}), 2], `--modules ${out('empty')}: no .onnx files`],
    [
      'a module made for unknown layers',
      () => [dir('unplaced', { 'm.onnx': () => tinyModule('unplaced.onnx', { inputs: [hidden32()], span: '2', hidden: 32 }) }), 2],
      /^module .*m\.onnx: cannot tell which layers it was made for: set metadata vcompile\.start, or name the file \*L\{START\}-\{END\}\.onnx$/,
    ],
    [
      'a file name that disagrees with vcompile.span',
      () => [dir('misnamed', { 'm_L1-3.onnx': () => tinyModule('misnamed.onnx', { inputs: [hidden32()], span: '2', hidden: 32 }) }), 2],
      /^module .*m_L1-3\.onnx: its name says layers 1-3 \(3 layers\) but vcompile\.span = 2$/,
    ],
    [
      'a module made for layers the model lacks',
      () => [dir('beyond', { 'm.onnx': () => tinyModule('beyond.onnx', { inputs: [hidden32()], span: '2', start: '3', hidden: 32 }) }), 2],
      /^module .*m\.onnx \(layers 3-4\): layers 3-4 do not exist \(the model has layers 0-3\)$/,
    ],
  ];
  it.each(cases)('refuses %s', async (_what, args, message) => {
    const output = refusedOutput();
    const [modules, target] = args();
    await expectRefusal(() => assembleCommand('fixtures/modules/bert4.onnx', assembleFlags(modules, target, output)), message, output);
  });

  it('measures within the position table: 128 or the table by default, a longer --speedup-seq refused', async () => {
    const output = out('assembled-default-seq.onnx');
    const flags = { ...assembleFlags('fixtures/modules/trained', 1.2, output), seq: undefined };
    expect(await assembleCommand('fixtures/modules/bert4.onnx', flags)).toBe(0);
    expect(printed.join('')).toMatch(/^plan for a 1\.2x MACs speed-up \(MACs at batch 1, seq 32\)/);
    const refused = refusedOutput();
    await expectRefusal(
      () => assembleCommand('fixtures/modules/bert4.onnx', { ...assembleFlags('fixtures/modules/trained', 1.2, refused), seq: 64 }),
      'seq 64 is beyond what the model runs: embeddings.position_ids (32 along axis 1) allows at most 32 positions (use --speedup-seq 32 or less)',
      refused,
    );
  });
});
