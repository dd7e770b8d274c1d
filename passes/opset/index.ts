// The opset upgrade pass: raise a model's default-domain opset so that passes needing newer ops (plugins
// need dynamic Pad and Slice, opset 11) can run on old exports. See upgrade.ts for how, adapters.ts for what.
import type { Model } from '../../src/ir/model.js';
import type { Pass } from '../pipeline.js';
import { type OpsetUpgradeOptions, type OpsetUpgradeReport, summarizeUpgrade, upgradeChanged, upgradeOpset } from './upgrade.js';

export { irVersionFor, MAX_ORT_OPSET, OP_VERSIONS, versionAt } from '../../src/ir/op-versions.js';
export { type OpsetUpgradeOptions, type OpsetUpgradeReport, summarizeUpgrade, upgradeChanged, upgradeOpset } from './upgrade.js';

export interface OpsetUpgradePassOptions extends OpsetUpgradeOptions {
  /** the default-domain opset to reach */
  target: number;
}

/**
 * `{ target: 17 }` upgrades to exactly 17 (refusing a model that is newer); with `atLeast: true` a model
 * at 17 or newer passes through unchanged, which is what a pass that merely needs 17 wants.
 */
export function opsetUpgradePass(options: OpsetUpgradePassOptions): Pass {
  return {
    name: 'opset-upgrade',
    run(model: Model) {
      const report: OpsetUpgradeReport = upgradeOpset(model, options.target, options);
      return { model, modified: upgradeChanged(report), report: { ...report }, summary: summarizeUpgrade(report) };
    },
  };
}

/**
 * The opset to upgrade `model` to before passes that need at least each of `minimums` (plugins: MIN_OPSET
 * from src/ir/ops.ts, and the opset of every plugin or module file), or undefined when it is new enough.
 */
export function opsetTargetFor(model: Model, ...minimums: number[]): number | undefined {
  const needed = Math.max(...minimums);
  const current = model.opsetVersion('');
  return current !== undefined && current >= needed ? undefined : needed;
}
