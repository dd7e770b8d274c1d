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
import { MAX_BUILTIN_RATIO } from '../../passes/plugin/contract.js';
import { builtinPluginBytes, formatBytes, MAX_BUILTIN_PLUGIN_BYTES } from '../compile/load.js';
import { VcompileError } from '../errors.js';
import { saveModel } from '../onnx/file.js';
import { MAX_ORT_OPSET } from '../runtime/session.js';
import { ExitCode } from './errors.js';
import { beforeWriting } from './signals.js';

/** The largest --hidden: beyond any released transformer (GPT-3 uses 12288, PaLM 18432). */
export const MAX_HIDDEN = 65536;
/** The oldest --opset: plugins need dynamic Pad and Slice. */
export const MIN_PLUGIN_OPSET = 11;

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
  if (ratio > MAX_BUILTIN_RATIO)
    throw new VcompileError(`--ratio ${ratio}: must be at most ${MAX_BUILTIN_RATIO} (compression ratios in use are 2 to 16)`);
  if (!Number.isInteger(hidden) || hidden < 1) throw new VcompileError(`--hidden must be a positive integer, got ${hidden}`);
  if (hidden > MAX_HIDDEN)
    throw new VcompileError(`--hidden ${hidden}: must be at most ${MAX_HIDDEN}, beyond the hidden size of any released transformer`);
  if (kind === 'identity' && ratio !== 1) throw new VcompileError('the identity plugin has ratio 1');
  if (!Number.isInteger(opset) || opset < MIN_PLUGIN_OPSET || opset > MAX_ORT_OPSET)
    throw new VcompileError(
      `--opset ${opset}: must be a whole number from ${MIN_PLUGIN_OPSET} (plugins need dynamic Pad and Slice) to ${MAX_ORT_OPSET} (the newest opset ONNX Runtime 1.30 runs)`,
    );
  const bytes = builtinPluginBytes(kind, ratio, hidden);
  if (bytes > MAX_BUILTIN_PLUGIN_BYTES)
    throw new VcompileError(
      `--kind ${kind} --ratio ${ratio} --hidden ${hidden}: the plugin's weights would take ${formatBytes(bytes)}, over the ${formatBytes(MAX_BUILTIN_PLUGIN_BYTES)} a built-in plugin may take (use a smaller --ratio)`,
    );
  const shape = { ratio, hidden, scope, opset };
  const model =
    kind === 'mean'
      ? buildMeanPlugin(shape)
      : kind === 'identity'
        ? buildIdentityPlugin(shape)
        : buildVariatorPlugin(shape, initVariatorWeights(ratio, hidden, { seed: options.seed, zeroAdapter: options.zeroAdapter }));
  beforeWriting();
  const written = saveModel(model, options.output, { externalData: 'never' });
  const report = { output: options.output, kind, ratio, hidden, scope, opset, bytes: written.bytes };
  process.stdout.write(
    options.json
      ? `${JSON.stringify(report, null, 2)}\n`
      : `wrote ${options.output}: ${kind} plugin, k=${ratio}, d=${hidden}, scope ${scope} (${written.bytes} bytes)\n`,
  );
  return ExitCode.ok;
}
