// Layer numbers across passes that renumber layers: users (and the passes' options) count layers as the
// input model does; after modules are spliced in, the pipeline context's layer map translates them.
import { msg, type OptionName, option, VcompileError } from '../../src/errors.js';

/**
 * Layer numbers of the input model as the current model numbers them, from a layer map (for each current
 * layer, its input-model index or null inside a module); a layer that a module replaced is refused, naming
 * the option that asked for it.
 */
export function translateLayers(layerMap: readonly (number | null)[], layers: readonly number[], asked: OptionName = 'plugins'): number[] {
  return layers.map((original) => {
    const at = layerMap.indexOf(original);
    if (at < 0)
      throw new VcompileError(msg`${option(asked)}: layer ${original} was replaced by a module (plugins go on the layers that remain)`);
    return at;
  });
}

/** A layer map after another: `outer` numbers the layers of the model `inner` describes. */
export function composeLayerMaps(inner: readonly (number | null)[] | undefined, outer: readonly (number | null)[]): (number | null)[] {
  if (!inner) return [...outer];
  return outer.map((i) => (i === null ? null : (inner[i] ?? null)));
}
