// `vcompile plugin init`: write a built-in plugin as an ordinary ONNX file, ready to run, inspect,
// train in any framework and bring back.
import {
  type BuiltinKind,
  buildIdentityPlugin,
  buildMeanPlugin,
  buildVariatorPlugin,
  initVariatorWeights,
  type Scope,
} from '../../passes/plugin/builtin.js';
import { VcompileError } from '../errors.js';
import { saveModel } from '../onnx/file.js';
import { ExitCode } from './errors.js';

export interface PluginInitOptions {
  kind: BuiltinKind;
  ratio: number;
  hidden: number;
  scope: Scope;
  opset: number;
  seed: number;
  zeroAdapter: boolean;
  output: string;
  json: boolean;
}

export function initPlugin(options: PluginInitOptions): number {
  const { kind, ratio, hidden, scope, opset } = options;
  if (!Number.isInteger(ratio) || ratio < 1) throw new VcompileError(`--ratio must be an integer >= 1, got ${ratio}`);
  if (!Number.isInteger(hidden) || hidden < 1) throw new VcompileError(`--hidden must be a positive integer, got ${hidden}`);
  if (kind === 'identity' && ratio !== 1) throw new VcompileError('the identity plugin has ratio 1');
  if (opset < 11) throw new VcompileError(`--opset must be >= 11, got ${opset}`);
  const shape = { ratio, hidden, scope, opset };
  const model =
    kind === 'mean'
      ? buildMeanPlugin(shape)
      : kind === 'identity'
        ? buildIdentityPlugin(shape)
        : buildVariatorPlugin(shape, initVariatorWeights(ratio, hidden, { seed: options.seed, zeroAdapter: options.zeroAdapter }));
  const written = saveModel(model, options.output, { externalData: 'never' });
  const report = { output: options.output, kind, ratio, hidden, scope, opset, bytes: written.bytes };
  process.stdout.write(
    options.json
      ? `${JSON.stringify(report, null, 2)}\n`
      : `wrote ${options.output}: ${kind} plugin, k=${ratio}, d=${hidden}, scope ${scope} (${written.bytes} bytes)\n`,
  );
  return ExitCode.ok;
}
