// The `vcompile` command line. Every failure is one line on stderr and a documented exit code
// (src/cli/errors.ts); each command's flags are declared in one function below, its work done in the
// command modules beside this file.
import yargs, { type Argv } from 'yargs';
import { VcompileError } from '../errors.js';
import { VCOMPILE_VERSION } from '../version.js';
import { compileFile, inspectFile } from './commands.js';
import { describeFailure } from './errors.js';
import { assembleCommand, extractCommand } from './modular-commands.js';
import { initPlugin } from './plugin-commands.js';
import { benchCommand, verifyCommand } from './runtime-commands.js';

export async function main(argv: string[]): Promise<number> {
  const out = { code: 0 };
  try {
    await buildParser(argv, out).parseAsync();
    return out.code;
  } catch (error) {
    const { line, code, stack } = describeFailure(error);
    process.stderr.write(`vcompile: ${line}\n`);
    if (stack && process.env.VCOMPILE_DEBUG) process.stderr.write(`${stack}\n`);
    return code;
  }
}

type Out = { code: number };

function buildParser(argv: string[], out: Out): Argv {
  const parser = yargs(argv)
    .scriptName('vcompile')
    .usage(
      '$0 MODEL -o OUT [--plugin P ...] [--module S-E=M ...] [options]\n$0 MODEL --target-speedup R --modules DIR -o OUT\n$0 extract MODEL --layers S-E -o M.onnx\n$0 plugin init --kind K --ratio K --hidden D -o P.onnx\n$0 inspect MODEL [options]\n$0 verify ORIGINAL REWRITTEN [options]\n$0 bench MODEL [MODEL...] [options]',
    );
  for (const command of [inspectCommand, pluginInitCommand, extractModuleCommand, verifyModelsCommand, benchModelsCommand, compileCommand])
    command(parser, out);
  return parser
    .strict()
    .version(VCOMPILE_VERSION)
    .help()
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new VcompileError(message.split('\n')[0]);
    });
}

// ------------------------------------------------------------------------------------ shared flags

type Ep = 'cpu' | 'cuda' | 'auto';
type GraphOptimization = 'disabled' | 'basic' | 'extended' | 'all';

/** The execution provider and GPU index, for every command that runs models (`what` prefixes the help). */
function withDevice<T>(y: Argv<T>, what = '') {
  return y
    .option('ep', {
      choices: ['cpu', 'cuda', 'auto'] as const,
      default: 'cpu' as Ep,
      describe: `${what}execution provider${what ? '' : ' (auto: CUDA when installed, else CPU with a notice)'}`,
    })
    .option('device-id', { type: 'number', default: 0, describe: `${what}GPU index for --ep cuda/auto` });
}

/** Flags of every command that runs models: execution provider, threads, optimization level. */
function withRuntime<T>(y: Argv<T>) {
  return withDevice(y)
    .option('threads', { type: 'number', describe: 'ONNX Runtime intra-op threads (default: one per core)' })
    .option('graph-optimization', {
      choices: ['disabled', 'basic', 'extended', 'all'] as const,
      default: 'all' as GraphOptimization,
      describe: 'ONNX Runtime graph optimization level',
    });
}

/** The batch x seq grid of generated inputs. */
function withGrid<T>(y: Argv<T>, batch: string, seq: string) {
  return y
    .option('batch', { type: 'string', default: batch, describe: 'batch sizes, comma-separated' })
    .option('seq', { type: 'string', default: seq, describe: 'sequence lengths, comma-separated' })
    .option('dim', {
      type: 'string',
      array: true,
      nargs: 1,
      describe: 'bind a symbolic input dim by name, NAME=VALUE (repeatable; wins over --batch/--seq)',
    })
    .option('seed', { type: 'number', default: 0, describe: 'seed of the generated inputs' });
}

function runtimeArgs(args: { ep: Ep; 'device-id': number; threads?: number; 'graph-optimization': GraphOptimization }) {
  return { ep: args.ep, deviceId: args['device-id'], threads: args.threads, graphOptimization: args['graph-optimization'] };
}

// ---------------------------------------------------------------------------------------- commands

function inspectCommand(parser: Argv, out: Out): void {
  parser.command(
    'inspect <model>',
    'describe a model: versions, inputs/outputs, op histogram, weights, external data',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
        .option('layers', { type: 'boolean', default: false, describe: 'add the transformer layer table (heads, FFN, norm, MACs, params)' })
        .option('seq', { type: 'number', default: 128, describe: 'sequence length the layer MACs are counted at' })
        .option('batch', { type: 'number', default: 1, describe: 'batch size the layer MACs are counted at' }),
    (args) => {
      out.code = inspectFile(args.model, { json: args.json, layers: args.layers, seq: args.seq, batch: args.batch });
    },
  );
}

function pluginInitCommand(parser: Argv, out: Out): void {
  parser.command(
    'plugin init',
    'write a built-in compression plugin as an ONNX file',
    (y) =>
      y
        .option('kind', {
          choices: ['mean', 'variator', 'identity'] as const,
          demandOption: true,
          describe: 'mean: average and repeat; variator: learned merge + adapter; identity: k = 1 plumbing check',
        })
        .option('ratio', { type: 'number', demandOption: true, describe: 'compression ratio k' })
        .option('hidden', { type: 'number', demandOption: true, describe: 'hidden size d of the model' })
        .option('scope', {
          choices: ['ffn', 'attention', 'layer'] as const,
          default: 'ffn' as const,
          describe: 'the block the plugin wraps',
        })
        .option('opset', { type: 'number', default: 17, describe: "default-domain opset to write (use the model's)" })
        .option('seed', { type: 'number', default: 0, describe: 'variator: seed of the random init' })
        .option('zero-adapter', {
          type: 'boolean',
          default: false,
          describe: 'variator: zero-init the adapter so restore starts as a plain repeat',
        })
        .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the plugin file to write' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    (args) => {
      out.code = initPlugin({
        kind: args.kind,
        ratio: args.ratio,
        hidden: args.hidden,
        scope: args.scope,
        opset: args.opset,
        seed: args.seed,
        zeroAdapter: args['zero-adapter'],
        output: args.output,
        json: args.json,
      });
    },
  );
}

function extractModuleCommand(parser: Argv, out: Out): void {
  parser.command(
    'extract <model>',
    'write layers START-END of MODEL as a standalone module (the starting point for training a modular layer)',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file' })
        .option('layers', { type: 'string', demandOption: true, describe: 'START-END, 0-based and inclusive (or one layer N)' })
        .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the module file to write' })
        .option('overwrite', { type: 'boolean', default: false, describe: 'allow OUT to be the input model itself' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    (args) => {
      out.code = extractCommand(args.model, { layers: args.layers, output: args.output, overwrite: args.overwrite, json: args.json });
    },
  );
}

function verifyModelsCommand(parser: Argv, out: Out): void {
  parser.command(
    'verify <original> <rewritten>',
    'run both models on the same inputs and compare their outputs (exit 1 when a threshold is violated)',
    (y) =>
      withRuntime(withGrid(y, '1,3', '16,37'))
        .positional('original', { type: 'string', demandOption: true, describe: 'the reference model' })
        .positional('rewritten', { type: 'string', demandOption: true, describe: 'the model checked against it' })
        .option('max-error', { type: 'number', describe: "fail when an output's max abs error exceeds this (default: report only)" })
        .option('min-cosine', {
          type: 'number',
          describe: "fail when an output's cosine similarity falls below this (default: report only)",
        })
        .option('inputs', {
          type: 'string',
          describe: 'read the inputs from this folder (input_N.pb TensorProto files, NAME.npy or input_N.npy) instead of generating them',
        })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' }),
    async (args) => {
      out.code = await verifyCommand(args.original, args.rewritten, {
        ...runtimeArgs(args),
        batch: args.batch,
        seq: args.seq,
        dim: args.dim,
        seed: args.seed,
        maxError: args['max-error'],
        minCosine: args['min-cosine'],
        inputs: args.inputs,
        json: args.json,
      });
    },
  );
}

function benchModelsCommand(parser: Argv, out: Out): void {
  parser.command(
    'bench <models..>',
    'time models side by side on ONNX Runtime (paired rounds, order rotated each round) with their MACs',
    (y) =>
      withRuntime(withGrid(y, '1', '128'))
        .positional('models', {
          type: 'string',
          array: true,
          demandOption: true,
          describe: 'the .onnx files; speed-ups are against the first',
        })
        .option('warmup', { type: 'number', default: 2, describe: 'untimed runs per model before each batch/seq point' })
        .option('runs', {
          type: 'number',
          default: 10,
          describe: 'timed rounds at each batch/seq point (each runs every model once, order rotated)',
        })
        .option('sessions', {
          type: 'number',
          default: 1,
          describe: 'sessions per model, used in turn over the rounds (sessions of one model can differ on a loaded machine)',
        })
        .option('control', {
          type: 'boolean',
          default: true,
          describe: 'time the first model a second time each round, against itself (--no-control: off)',
        })
        .option('ratios', { type: 'string', describe: 'time these ratios of a switchable model, each as its own entry, e.g. 1,2,4' })
        .option('spin', {
          type: 'boolean',
          default: false,
          describe: "let ONNX Runtime's idle threads spin (off by default: between interleaved sessions it steals cores)",
        })
        .option('chart', { type: 'string', describe: 'write an SVG chart of latency versus sequence length here' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' }),
    async (args) => {
      out.code = await benchCommand(args.models, {
        ...runtimeArgs(args),
        batch: args.batch,
        seq: args.seq,
        dim: args.dim,
        seed: args.seed,
        spin: args.spin,
        ratios: args.ratios,
        warmup: args.warmup,
        runs: args.runs,
        control: args.control,
        sessions: args.sessions,
        chart: args.chart,
        json: args.json,
      });
    },
  );
}

function compileCommand(parser: Argv, out: Out): void {
  parser.command(
    '$0 <model>',
    'rewrite MODEL and write the result to OUT',
    (y) =>
      withDevice(
        y
          .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file to compile (never modified)' })
          .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'where to write the compiled model' })
          .option('external-data', {
            choices: ['auto', 'always', 'never'] as const,
            default: 'auto' as const,
            describe: 'where weights go (auto: external when the input had external data or the model exceeds 2 GiB)',
          })
          .option('data-location', { type: 'string', describe: 'external data file name (default OUT file name + .data)' })
          .option('size-threshold', { type: 'number', default: 1024, describe: 'tensors below this many bytes stay inline' })
          .option('overwrite', { type: 'boolean', default: false, describe: 'allow OUT to be the input model itself' })
          .option('eliminate-dead-code', { type: 'boolean', default: false, describe: 'remove nodes and weights no output depends on' })
          .option('verify-ir', { type: 'boolean', default: false, describe: 'run the IR verifier on the input and after every pass' })
          .option('json', { type: 'boolean', default: false, describe: 'print a JSON report on stdout' })
          .option('plugin', {
            type: 'string',
            array: true,
            nargs: 1,
            default: [] as string[],
            describe: 'compression plugin: FILE, builtin:KIND:K[:SCOPE], or L=FILE for layer L only (repeatable)',
          })
          .option('layers', {
            type: 'string',
            describe: 'layers to compress, e.g. 2-9 or 0,3,5-7 (default: every layer whose self-attention is not causal)',
          })
          .option('compress-causal', {
            type: 'string',
            describe: 'also compress these causal self-attention layers (merging positions leaks future tokens)',
          })
          .option('module', {
            type: 'string',
            array: true,
            nargs: 1,
            default: [] as string[],
            describe:
              'replace layers START-END (0-based, inclusive) by a module: START-END=FILE or START-END=builtin:keep-first|average (repeatable)',
          })
          .option('target-speedup', {
            type: 'number',
            describe: 'assemble modules from --modules DIR to reach this MACs speed-up with the fewest layers replaced',
          })
          .option('modules', {
            type: 'string',
            describe:
              'folder of module files for --target-speedup (each names its start layer in metadata vcompile.start or as *L{START}-{END}.onnx)',
          })
          .option('speedup-batch', {
            type: 'number',
            default: 1,
            describe: 'with --target-speedup: batch size the MACs and the quick timing use',
          })
          .option('speedup-seq', {
            type: 'number',
            default: 128,
            describe: 'with --target-speedup: sequence length the MACs and the quick timing use',
          })
          .option('switchable', {
            type: 'boolean',
            default: false,
            describe: 'one model for every plugin ratio given, chosen at run time by the input vcompile_ratio',
          })
          .option('default-ratio', {
            type: 'number',
            describe: 'with --switchable: the ratio used when vcompile_ratio is not fed (default 1)',
          })
          .option('verify', {
            type: 'boolean',
            default: true,
            describe: 'run the written model against MODEL on ONNX Runtime and report the error (--no-verify skips it)',
          })
          .option('max-error', { type: 'number', describe: "verification gate: exit 1 when an output's max abs error exceeds this" })
          .option('min-cosine', {
            type: 'number',
            describe: "verification gate: exit 1 when an output's cosine similarity falls below this",
          })
          .option('dim', {
            type: 'string',
            array: true,
            nargs: 1,
            describe: 'verification: bind a symbolic input dim, NAME=VALUE (repeatable)',
          }),
        'verification: ',
      ),
    async (args) => {
      const write = {
        output: args.output,
        externalData: args['external-data'],
        dataLocation: args['data-location'],
        sizeThreshold: args['size-threshold'],
        overwrite: args.overwrite,
      };
      if (args['target-speedup'] !== undefined) {
        if (!args.modules) throw new VcompileError('--target-speedup needs --modules DIR');
        if (args.plugin.length || args.module.length)
          throw new VcompileError('--target-speedup chooses the modules itself: give it no --module or --plugin');
        out.code = await assembleCommand(args.model, {
          ...write,
          verifyIr: args['verify-ir'],
          json: args.json,
          modules: args.modules,
          targetSpeedup: args['target-speedup'],
          batch: args['speedup-batch'],
          seq: args['speedup-seq'],
          seeds: 3,
          timingRuns: 5,
        });
        return;
      }
      out.code = await compileFile(args.model, {
        ...write,
        eliminateDeadCode: args['eliminate-dead-code'],
        verifyIr: args['verify-ir'],
        json: args.json,
        plugins: args.plugin,
        layers: args.layers,
        compressCausal: args['compress-causal'],
        switchable: args.switchable,
        defaultRatio: args['default-ratio'],
        modules: args.module,
        verify: args.verify
          ? {
              maxError: args['max-error'],
              minCosine: args['min-cosine'],
              dim: args.dim,
              ep: args.ep,
              deviceId: args['device-id'],
              graphOptimization: 'all',
            }
          : undefined,
      });
    },
  );
}
