// The `vcompile` command line. Every failure is one line on stderr and a documented exit code
// (src/cli/errors.ts); each command's flags are declared in one function below, its work done in the
// command modules beside this file.
import * as fs from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { BUDGET } from '../decide/fit-plugins.js';
import { VcompileError } from '../errors.js';
import { MAX_ORT_OPSET } from '../ir/op-versions.js';
import { VCOMPILE_VERSION } from '../version.js';
import { compileFile, inspectFile } from './commands.js';
import { describeFailure, ExitCode } from './errors.js';
import { fitCommand } from './fit-commands.js';
import { assembleCommand, extractCommand } from './modular-commands.js';
import { moduleFitCommand } from './module-fit-commands.js';
import { initPlugin, MIN_PLUGIN_OPSET } from './plugin-commands.js';
import { benchCommand } from './runtime-commands.js';
import { enableSignalCleanup } from './signals.js';
import { type TuneFlags, tuneCommand } from './tune-commands.js';
import { verifyCommand } from './verify-commands.js';

/** How --rank and --units of a plugin fit read in every command that fits plugins. */
const FIT_RANK = `adapter rank, or full (default: within ${BUDGET * 100}% of the block with the units)`;
const FIT_UNITS = `the block's hidden units computed at full length (default: as many as ${BUDGET * 50}% of the block's MACs buy; 0: none)`;

export async function main(argv: string[]): Promise<number> {
  enableSignalCleanup();
  const out = { code: 0 };
  try {
    const answered = preflight(argv);
    if (answered !== undefined) return answered;
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

const USAGE = [
  '$0 MODEL -o OUT [--plugin P ...] [--module S-E=M ...] [options]',
  '$0 MODEL --target-speedup R --modules DIR -o OUT',
  '$0 extract MODEL --layers S-E -o M.onnx',
  '$0 plugin init --kind K --ratio K --hidden D -o P.onnx',
  '$0 plugin fit MODEL --data PATH --ratio K --scope S -o DIR',
  '$0 tune MODEL --data PATH [--budget B] -o OUT [--report DIR]',
  '$0 inspect MODEL [options]',
  '$0 verify ORIGINAL REWRITTEN [options]',
  '$0 bench MODEL [MODEL...] [options]',
  '$0 module fit MODEL --layers S-E[,S-E] --data PATH -o OUT',
  '$0 MODEL --target-speedup R --fit-modules --data PATH -o OUT',
];
const COMMANDS = ['inspect', 'verify', 'bench', 'extract', 'plugin', 'tune', 'module'];
/** USAGE's line of `module fit` */
const MODULE_FIT_USAGE = 9;

/** The usage lines as printed on a bare command (`vcompile`, `vcompile plugin`), on stderr. */
function usage(lines: readonly string[], more: string): string {
  return `usage: ${lines.map((l) => l.replace('$0', 'vcompile')).join('\n       ')}\n${more}\n`;
}

/**
 * Command lines yargs would answer with a misleading message: none at all and `vcompile plugin` without
 * `init` print the usage (exit 2); a mistyped command is named as one rather than read as a model file.
 * Returns the exit code when it answered, else undefined (yargs parses).
 */
function preflight(argv: readonly string[]): number | undefined {
  const [first, second] = argv;
  if (first === undefined) {
    process.stderr.write(usage(USAGE, '(vcompile --help lists every option)'));
    return ExitCode.badInput;
  }
  if (first === 'plugin' && second !== 'init' && second !== 'fit' && second !== '--help') {
    if (second !== undefined && !second.startsWith('-'))
      throw new VcompileError(
        `unknown plugin command '${second}' (the plugin commands are init and fit: ${USAGE[3].replace('$0', 'vcompile')}, ${USAGE[4].replace('$0', 'vcompile')})`,
      );
    process.stderr.write(usage([USAGE[3], USAGE[4]], '(vcompile plugin init --help and vcompile plugin fit --help list every option)'));
    return ExitCode.badInput;
  }
  if (first === 'module' && second !== 'fit' && second !== '--help') {
    if (second !== undefined && !second.startsWith('-'))
      throw new VcompileError(
        `unknown module command '${second}' (the module command is fit: ${USAGE[MODULE_FIT_USAGE].replace('$0', 'vcompile')})`,
      );
    process.stderr.write(usage([USAGE[MODULE_FIT_USAGE]], '(vcompile module fit --help lists every option)'));
    return ExitCode.badInput;
  }
  if (/^[a-z][a-z-]*$/i.test(first) && !COMMANDS.includes(first) && !fs.existsSync(first)) {
    // `module` is not suggested: a model file named `model` or `modules` is the likelier meaning
    const near = COMMANDS.find((command) => command !== 'module' && editDistance(first.toLowerCase(), command) <= 2);
    if (near) throw new VcompileError(`unknown command '${first}' (did you mean ${near}?)`);
    if (!argv.some((a) => a === '-o' || a.startsWith('--output') || /^-o./.test(a)))
      throw new VcompileError(
        `unknown command '${first}' (the commands are inspect, verify, bench, extract, plugin init, plugin fit, tune and module fit; to compile a model, give its file and -o OUT)`,
      );
  }
  return undefined;
}

/** Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

function buildParser(argv: string[], out: Out): Argv {
  const parser = yargs(argv).scriptName('vcompile').usage(USAGE.join('\n'));
  for (const command of [
    inspectCommand,
    pluginCommands,
    extractModuleCommand,
    moduleCommands,
    tuneModelCommand,
    verifyModelsCommand,
    benchModelsCommand,
    compileCommand,
  ])
    command(parser, out);
  return parser
    .strict()
    .version(VCOMPILE_VERSION)
    .help()
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new VcompileError(oneLine(message));
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

/** The gates and the inputs of a check: `vcompile verify` and the check after a compile. */
function withCheck<T>(y: Argv<T>, what = '') {
  return y
    .option('max-error', { type: 'number', describe: `${what}fail when an output's max abs error exceeds this` })
    .option('min-cosine', { type: 'number', describe: `${what}fail when an output's cosine similarity falls below this` })
    .option('min-top1-agreement', {
      type: 'number',
      describe: `${what}fail when the share of positions whose top class agrees with the original's falls below this (0-1)`,
    })
    .option('max-kl', { type: 'number', describe: `${what}fail when the mean KL(original || rewritten) of a class output exceeds this` })
    .option('max-accuracy-drop', {
      type: 'number',
      describe: `${what}fail when the accuracy on the labels drops by more than this many points`,
    })
    .option('data', {
      type: 'string',
      describe: `${what}real inputs: a folder of NAME.npy files, a .jsonl file, or ONNX test data sets (labels: labels.npy or a labels key)`,
    })
    .option('samples', { type: 'number', describe: `${what}with --data: use the first N samples` })
    .option('logits', {
      type: 'string',
      array: true,
      nargs: 1,
      describe: `${what}the outputs whose last axis scores classes (default: detected; none: no output)`,
    })
    .option('per-layer', {
      type: 'boolean',
      default: false,
      describe: `${what}also compare the residual stream leaving every transformer layer`,
    });
}

function checkArgs(args: {
  'max-error'?: number;
  'min-cosine'?: number;
  'min-top1-agreement'?: number;
  'max-kl'?: number;
  'max-accuracy-drop'?: number;
  data?: string;
  samples?: number;
  logits?: string[];
  'per-layer': boolean;
}) {
  return {
    maxError: args['max-error'],
    minCosine: args['min-cosine'],
    minTop1Agreement: args['min-top1-agreement'],
    maxKl: args['max-kl'],
    maxAccuracyDrop: args['max-accuracy-drop'],
    data: args.data,
    samples: args.samples,
    logits: args.logits,
    perLayer: args['per-layer'],
  };
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

/** `plugin init` and `plugin fit`: subcommands of `plugin`. */
function pluginCommands(parser: Argv, out: Out): void {
  parser.command('plugin', 'write (init) or fit compression plugins', (y) => {
    pluginInitCommand(y, out);
    pluginFitCommand(y, out);
    return y.demandCommand(1);
  });
}

function pluginInitCommand(parser: Argv, out: Out): void {
  parser.command(
    'init',
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
        .option('opset', {
          type: 'number',
          default: 17,
          describe: `default-domain opset to write, ${MIN_PLUGIN_OPSET} to ${MAX_ORT_OPSET} (use the model's)`,
        })
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

function pluginFitCommand(parser: Argv, out: Out): void {
  parser.command(
    'fit <model>',
    'fit one compression plugin per layer in closed form from data (no training): DIR/L{i}.onnx and DIR/fit.json',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file the plugins are for' })
        .option('data', {
          type: 'string',
          demandOption: true,
          describe: 'calibration inputs: a folder of NAME.npy files, a .jsonl file, or ONNX test data sets',
        })
        .option('ratio', { type: 'number', demandOption: true, describe: 'compression ratio k' })
        .option('scope', {
          choices: ['ffn', 'attention', 'layer'] as const,
          default: 'ffn' as const,
          describe: 'the block the plugins wrap',
        })
        .option('rank', {
          type: 'string',
          describe: FIT_RANK,
        })
        .option('units', {
          type: 'number',
          describe: `ffn scope: ${FIT_UNITS}`,
        })
        .option('fit-target', {
          choices: ['block', 'stream'] as const,
          describe: "what each restore is fitted to: the original block's output (block, default) or the original model's stream",
        })
        .option('layers', {
          type: 'string',
          describe: 'layers to fit, e.g. 2-9 or 0,3,5-7 (default: every layer whose self-attention is not causal)',
        })
        .option('samples', { type: 'number', describe: 'use the first N samples of the data' })
        .option('batch', { type: 'number', default: 8, describe: 'samples per run' })
        .option('threads', { type: 'number', describe: 'ONNX Runtime intra-op threads (default: one per core)' })
        .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the folder to write the plugins and fit.json to' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    async (args) => {
      out.code = await fitCommand(args.model, { ...args, scope: args.scope, fitTarget: args['fit-target'], output: args.output });
    },
  );
}

function tuneModelCommand(parser: Argv, out: Out): void {
  parser.command(
    'tune <model>',
    'find the fastest model within a fidelity budget on your data: plugins fitted per layer, every kept candidate evaluated and timed',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file to speed up' })
        .option('data', {
          type: 'string',
          demandOption: true,
          describe: 'inputs (with labels for an accuracy budget): 3 in 5 samples fit, 1 in 5 choose, 1 in 5 test',
        })
        .option('budget', {
          type: 'string',
          describe:
            "'accuracy-drop<=POINTS', 'top1-agreement>=FRACTION' or 'kl<=VALUE' (default: accuracy-drop<=0.5 with labels, else top1-agreement>=0.99)",
        })
        .option('target-speedup', {
          type: 'number',
          describe: 'the most faithful model within budget reaching this speed-up, not the fastest',
        })
        .option('batch', { type: 'number', describe: 'batch the candidates are timed at (default 8)' })
        .option('seq', { type: 'number', describe: 'sequence length they are timed at (default 128, or the position table)' })
        .option('time-limit', { type: 'string', describe: 'stop the search after this long (90s, 20m, 1h) and keep the best so far' })
        .option('scopes', { type: 'string', describe: 'plugin scopes to try (default ffn,attention,layer)' })
        .option('ratios', { type: 'string', describe: 'compression ratios to try per layer (default 2,4)' })
        .option('rank', {
          type: 'string',
          describe: FIT_RANK,
        })
        .option('units', {
          type: 'number',
          describe: `ffn scope: ${FIT_UNITS}`,
        })
        .option('profiles', {
          type: 'string',
          choices: ['auto', 'measured', 'estimated'] as const,
          default: 'auto',
          describe:
            'per-layer profiles: each evaluated, or estimated from the fits (auto: estimated when evaluating would take over 5 min)',
        })
        .option('samples', { type: 'number', describe: 'use the first N samples of the data' })
        .option('fit-samples', {
          type: 'number',
          describe: 'fit the plugins on N of the fitting samples (default: all 3 in 5); the fits take time in proportion',
        })
        .option('run-batch', { type: 'number', describe: 'samples per run while fitting and evaluating (default 8)' })
        .option('runs', { type: 'number', describe: 'timed rounds per candidate (default 5)' })
        .option('threads', { type: 'number', describe: 'ONNX Runtime intra-op threads (default: one per core)' })
        .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the model to write' })
        .option('report', { type: 'string', describe: 'folder for frontier.json, frontier.svg and the cache a later run reuses' })
        .option('require', { type: 'boolean', default: false, describe: 'exit 1 and write nothing when no candidate meets the budget' })
        .option('verify-ir', { type: 'boolean', default: false, describe: 'run the IR verifier after every pass' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    async (args) => {
      out.code = await tuneCommand(args.model, {
        data: args.data,
        budget: args.budget,
        targetSpeedup: args['target-speedup'],
        batch: args.batch,
        seq: args.seq,
        timeLimit: args['time-limit'],
        scopes: args.scopes,
        ratios: args.ratios,
        rank: args.rank,
        units: args.units,
        profiles: args.profiles as TuneFlags['profiles'],
        samples: args.samples,
        fitSamples: args['fit-samples'],
        runBatch: args['run-batch'],
        runs: args.runs,
        threads: args.threads,
        output: args.output,
        report: args.report,
        require: args.require,
        verifyIr: args['verify-ir'],
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

function moduleCommands(parser: Argv, out: Out): void {
  parser.command('module', 'fit modules (modular layers) from data', (y) => {
    moduleFitCliCommand(y, out);
    return y.demandCommand(1);
  });
}

function moduleFitCliCommand(parser: Argv, out: Out): void {
  parser.command(
    'fit <model>',
    'fit a module for layers START-END in closed form from data (no training): one layer fitted to the span; several spans in sequence',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file the modules are for' })
        .option('layers', {
          type: 'string',
          demandOption: true,
          describe: 'the span START-END (0-based, inclusive), or several: 0-1,2-3 (then -o is a folder)',
        })
        .option('data', {
          type: 'string',
          demandOption: true,
          describe: 'calibration inputs: a folder of NAME.npy files, a .jsonl file, or ONNX test data sets',
        })
        .option('init', {
          choices: ['keep-first', 'average'] as const,
          default: 'keep-first' as const,
          describe: "the module's starting point: the span's first layer, or one layer of the span's mean weights",
        })
        .option('rank', { type: 'string', describe: 'rank of the fitted output map, or full (default full)' })
        .option('context', {
          type: 'boolean',
          default: true,
          describe:
            "also fit context maps (the neighbours' and the sequence mean's share of the dropped layers' attention, 2d² MACs per position); --no-context: modules cost exactly their first layer",
        })
        .option('samples', { type: 'number', describe: 'use the first N samples of the data' })
        .option('batch', { type: 'number', default: 8, describe: 'samples per run' })
        .option('threads', { type: 'number', describe: 'ONNX Runtime intra-op threads (default: one per core)' })
        .option('output', {
          alias: 'o',
          type: 'string',
          demandOption: true,
          describe: 'the module file (one span), or the folder for OUT/L{S}-{E}.onnx and OUT/fit.json (several)',
        })
        .option('overwrite', { type: 'boolean', default: false, describe: 'allow OUT to be the input model itself' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    async (args) => {
      out.code = await moduleFitCommand(args.model, { ...args, init: args.init, output: args.output });
    },
  );
}

function verifyModelsCommand(parser: Argv, out: Out): void {
  parser.command(
    'verify <original> <rewritten>',
    'run both models on the same inputs and compare their outputs (exit 1 when a gate is violated)',
    (y) =>
      withCheck(withRuntime(y))
        .positional('original', { type: 'string', demandOption: true, describe: 'the reference model' })
        .positional('rewritten', { type: 'string', demandOption: true, describe: 'the model checked against it' })
        .option('batch', {
          type: 'string',
          describe: 'generated inputs: batch sizes, comma-separated (default 1,3); with --data: samples per run (default 8)',
        })
        .option('seq', {
          type: 'string',
          describe: 'generated inputs: sequence lengths (default: the transformer sees at least 32 positions)',
        })
        .option('dim', {
          type: 'string',
          array: true,
          nargs: 1,
          describe: 'bind a symbolic input dim by name, NAME=VALUE (repeatable; wins over --batch/--seq)',
        })
        .option('seed', { type: 'number', default: 0, describe: 'seed of the generated inputs' })
        .option('inputs', {
          type: 'string',
          describe: 'read the inputs from this folder (input_N.pb TensorProto files, NAME.npy or input_N.npy) instead of generating them',
        })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' }),
    async (args) => {
      out.code = await verifyCommand(args.original, args.rewritten, {
        ...runtimeArgs(args),
        ...checkArgs(args),
        batch: args.batch,
        seq: args.seq,
        dim: args.dim,
        seed: args.seed,
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
      withCheck(
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
            .option('size-threshold', { type: 'string', default: '1024', describe: 'tensors below this many bytes stay inline' })
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
                'replace layers START-END (0-based, inclusive) by a module: START-END=FILE, START-END=builtin:keep-first|average, or START-END=builtin:fit[:INIT] fitted from --data (repeatable)',
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
            .option('fit-modules', {
              type: 'boolean',
              default: false,
              describe: 'with --target-speedup: fit modules for every 2- and 3-layer span from --data and choose by data-measured fidelity',
            })
            .option('context', {
              type: 'boolean',
              describe:
                'with --module S-E=builtin:fit or --fit-modules: fit context maps too (the default); --no-context: fitted modules cost exactly their first layer',
            })
            .option('speedup-batch', {
              type: 'number',
              default: 1,
              describe: 'with --target-speedup: batch size the MACs and the quick timing use',
            })
            .option('speedup-seq', {
              type: 'number',
              describe: 'with --target-speedup: sequence length the MACs and the quick timing use (default 128, or the position table)',
            })
            .option('rank', {
              type: 'string',
              describe: `with --plugin builtin:fit:K: the ${FIT_RANK}`,
            })
            .option('units', {
              type: 'number',
              describe: `with --plugin builtin:fit:K:ffn: ${FIT_UNITS}`,
            })
            .option('fit-target', {
              choices: ['block', 'stream'] as const,
              describe: "with --plugin builtin:fit:K: fit to the original block's output (block, default) or the original model's stream",
            })
            .option('target-opset', {
              type: 'number',
              describe: "upgrade the model's default-domain opset to this (automatic, to what plugins and modules need, when not given)",
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
            .option('batch', {
              type: 'string',
              describe: 'verification: generated batch sizes (default 1,3), or with --data the samples per run (default 8)',
            })
            .option('dim', {
              type: 'string',
              array: true,
              nargs: 1,
              describe: 'verification: bind a symbolic input dim, NAME=VALUE (repeatable)',
            }),
          'verification: ',
        ),
        'verification: ',
      ),
    async (args) => {
      const write = {
        output: args.output,
        externalData: args['external-data'],
        dataLocation: args['data-location'],
        sizeThreshold: byteCount(args['size-threshold'], '--size-threshold'),
        overwrite: args.overwrite,
      };
      if (args['fit-modules'] && args['target-speedup'] === undefined) throw new VcompileError('--fit-modules goes with --target-speedup');
      if (args.context !== undefined && args['target-speedup'] !== undefined && !args['fit-modules'])
        throw new VcompileError(`--${args.context ? '' : 'no-'}context goes with --module S-E=builtin:fit or --fit-modules`);
      if (args['target-speedup'] !== undefined) {
        if (!args.modules && !args['fit-modules'])
          throw new VcompileError('--target-speedup needs --modules DIR, or --fit-modules --data PATH');
        if (args.modules && args['fit-modules']) throw new VcompileError('--target-speedup takes --modules DIR or --fit-modules, not both');
        if (args['fit-modules'] && !args.data) throw new VcompileError('--fit-modules needs --data PATH (the calibration inputs)');
        if (args.plugin.length || args.module.length)
          throw new VcompileError('--target-speedup chooses the modules itself: give it no --module or --plugin');
        out.code = await assembleCommand(args.model, {
          ...write,
          verifyIr: args['verify-ir'],
          json: args.json,
          modules: args.modules,
          fit: args['fit-modules'] ? { data: args.data!, samples: args.samples, batch: args.batch, context: args.context } : undefined,
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
        targetOpset: args['target-opset'],
        data: args.data,
        samples: args.samples,
        batch: args.batch,
        rank: args.rank,
        units: args.units,
        fitTarget: args['fit-target'],
        context: args.context,
        verify: args.verify
          ? { ...checkArgs(args), batch: args.batch, dim: args.dim, ep: args.ep, deviceId: args['device-id'], graphOptimization: 'all' }
          : undefined,
      });
    },
  );
}

/** A flag's value as a whole number of bytes. */
function byteCount(text: string, flag: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(n) || n < 0)
    throw new VcompileError(`${flag} ${text}: must be a whole number of bytes >= 0`);
  return n;
}

/**
 * A yargs message on one line: 'Invalid values:\n  Argument: ep, Given: "gpu", Choices: "cpu", ...' becomes
 * '--ep gpu: expected one of cpu, cuda, auto'; others keep their first line.
 */
function oneLine(message: string): string {
  const choice = /Argument: (\S+), Given: (.+?), Choices: (.+)/.exec(message);
  if (!choice) return message.split('\n')[0];
  const unquote = (s: string) => s.trim().replace(/^"(.*)"$/, '$1');
  return `--${choice[1]} ${unquote(choice[2])}: expected one of ${choice[3].split(',').map(unquote).join(', ')}`;
}
