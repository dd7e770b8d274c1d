// The `vcompile` command line. Every failure is one line on stderr and a documented exit code.
import yargs, { type Argv } from 'yargs';
import { VcompileError } from '../errors.js';
import { compileFile, inspectFile } from './commands.js';

const VERSION = '0.1.0';

export async function main(argv: string[]): Promise<number> {
  const out = { code: 0 };
  try {
    await buildParser(argv, out).parseAsync();
    return out.code;
  } catch (error) {
    return reportError(error);
  }
}

function reportError(error: unknown): number {
  if (error instanceof VcompileError) {
    process.stderr.write(`vcompile: ${error.message}\n`);
    return error.exitCode;
  }
  const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
  process.stderr.write(`vcompile: internal error: ${message} (set VCOMPILE_DEBUG=1 for details)\n`);
  if (process.env.VCOMPILE_DEBUG) process.stderr.write(`${(error as Error).stack}\n`);
  return 70;
}

function buildParser(argv: string[], out: { code: number }): Argv {
  return yargs(argv)
    .scriptName('vcompile')
    .usage('$0 MODEL -o OUT [options]\n$0 inspect MODEL [options]')
    .command(
      'inspect <model>',
      'describe a model: versions, inputs/outputs, op histogram, weights, external data',
      (y) =>
        y
          .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file' })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      (args) => {
        out.code = inspectFile(args.model, { json: args.json });
      },
    )
    .command(
      '$0 <model>',
      'rewrite MODEL and write the result to OUT',
      (y) =>
        y
          .positional('model', { type: 'string', demandOption: true, describe: 'the .onnx file to compile (never modified)' })
          .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'where to write the compiled model' })
          .option('external-data', { choices: ['auto', 'always', 'never'] as const, default: 'auto' as const, describe: 'where weights go (auto: external when the input had external data or the model exceeds 2 GiB)' })
          .option('data-location', { type: 'string', describe: 'external data file name (default OUT file name + .data)' })
          .option('size-threshold', { type: 'number', default: 1024, describe: 'tensors below this many bytes stay inline' })
          .option('overwrite', { type: 'boolean', default: false, describe: 'allow OUT to be the input model itself' })
          .option('eliminate-dead-code', { type: 'boolean', default: false, describe: 'remove nodes and weights no output depends on' })
          .option('verify-ir', { type: 'boolean', default: false, describe: 'run the IR verifier on the input and after every pass' })
          .option('json', { type: 'boolean', default: false, describe: 'print a JSON report on stdout' }),
      (args) => {
        out.code = compileFile(args.model, {
          output: args.output,
          externalData: args['external-data'],
          dataLocation: args['data-location'],
          sizeThreshold: args['size-threshold'],
          overwrite: args.overwrite,
          eliminateDeadCode: args['eliminate-dead-code'],
          verifyIr: args['verify-ir'],
          json: args.json,
        });
      },
    )
    .strict()
    .version(VERSION)
    .help()
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new VcompileError(message.split('\n')[0]);
    });
}
