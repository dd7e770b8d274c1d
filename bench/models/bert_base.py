"""Export a BERT-base-shaped encoder with random weights for benchmarks.

    /usr/bin/python3 bench/models/bert_base.py OUT.onnx [--layers 12] [--hidden 768]
        [--heads 12] [--ffn 3072] [--opset 14]
        [--plugin-scope ffn|attention|layer --ratio K [--bottleneck 64] [--plugin-out PLUGIN.onnx]]
        [--fixed BATCHxSEQ]

Same module code as the committed BERT fixtures (fixtures/models.py), at full
size: about 340 MB with the defaults. The output is a benchmark input, not a
fixture, so writing into fixtures/ is refused.

--plugin-scope S --ratio K exports the same backbone (same seed, same weights)
with one Variator plugin of ratio K applied by hand in scope S of every layer
(fixtures/plugin_models.py: the reference the plugin pass is tested against):
the hand-written model a compiled one is timed against. All layers share the
one plugin (same weights), as `vcompile MODEL --plugin P.onnx` applies it, and
--plugin-out writes that plugin alone as a vcompile plugin file, so

    vcompile PLAIN.onnx --plugin PLUGIN.onnx -o COMPILED.onnx

should compute what OUT computes.

--fixed 8x256 exports with batch and sequence fixed at those sizes (no
dynamic axes): a model deployed at one padded length, where the compiler can
prove the length a multiple of k. The plugin file stays dynamic.
"""

import argparse
import re
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO_ROOT / "fixtures"
sys.path.insert(0, str(FIXTURE_DIR))
sys.dont_write_bytecode = True  # keep __pycache__ out of fixtures/

import models  # noqa: E402  (needs the path above)
import plugin_models  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the .onnx file")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--opset", type=int, default=14)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--max-positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plugin-scope", choices=plugin_models.SCOPES,
                        help="apply a Variator plugin by hand in this scope of every layer")
    parser.add_argument("--ratio", type=int, metavar="K", help="the plugin's compression ratio")
    parser.add_argument("--bottleneck", type=int, default=plugin_models.VARIATOR_BOTTLENECK,
                        help="the plugin's restore bottleneck width")
    parser.add_argument("--plugin-out", type=Path, metavar="PLUGIN.onnx",
                        help="also write the plugin alone, as a vcompile plugin file")
    parser.add_argument("--fixed", metavar="BATCHxSEQ",
                        help="fix batch and sequence at these sizes instead of exporting them dynamic")
    args = parser.parse_args()
    if args.fixed is not None:
        match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", args.fixed)
        if match is None:
            parser.error(f"--fixed {args.fixed}: expected BATCHxSEQ, e.g. 8x256")
        args.fixed = (int(match.group(1)), int(match.group(2)))
    if (args.plugin_scope is None) != (args.ratio is None):
        parser.error("--plugin-scope and --ratio go together")
    if args.ratio is not None and args.ratio < 1:
        parser.error("--ratio K needs K >= 1")
    if args.plugin_out is not None and args.plugin_scope is None:
        parser.error("--plugin-out needs --plugin-scope and --ratio")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    for path in (args.out, args.plugin_out):
        if path is not None and FIXTURE_DIR in path.resolve().parents:
            parser.error("benchmark models are not fixtures; write them outside fixtures/")
    return args


def build(args):
    """(model to export, the plugin it applies or None)."""
    torch.manual_seed(args.seed)
    config = models.BertConfig(vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                               heads=args.heads, ffn=args.ffn, max_positions=args.max_positions)
    model = models.BertEncoder(config)
    models.init_norm_weights(model)
    if args.plugin_scope is None:
        return model.eval(), None
    # Drawn after the backbone: its weights are those of the plain model with the same seed.
    plugin = plugin_models.VariatorPlugin(args.ratio, args.hidden, args.plugin_scope, args.bottleneck)
    # One module in every slot: the export holds its weights once, as a compiled model does.
    placement = {index: plugin for index in range(args.layers)}
    return plugin_models.PluginBert(model, placement).eval(), plugin.eval()


def export(model, args):
    # Small example shapes keep tracing cheap when batch and seq are dynamic anyway.
    shape = args.fixed or (2, 8)
    input_ids = torch.randint(0, args.vocab, shape, dtype=torch.long)
    attention_mask = torch.ones(*shape, dtype=torch.long)
    dynamic = {"batch": 0, "seq": 1}
    axes = None if args.fixed else {name: {axis: dim for dim, axis in dynamic.items()}
                                    for name in ("input_ids", "attention_mask", "last_hidden_state")}
    with torch.no_grad():
        torch.onnx.export(model, (input_ids, attention_mask), str(args.out),
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=args.opset,
                          do_constant_folding=True)


def main():
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model, plugin = build(args)
    params = models.count_params(model)
    start = time.perf_counter()
    export(model, args)
    seconds = time.perf_counter() - start
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size} bytes ({size / 2**20:.1f} MiB), "
          f"{params} params, opset {args.opset}, export {seconds:.1f} s")
    if args.plugin_out is not None:
        args.plugin_out.parent.mkdir(parents=True, exist_ok=True)
        plugin_models.export_plugin(plugin, args.plugin_out, args.opset)
        size = args.plugin_out.stat().st_size
        print(f"wrote {args.plugin_out}: {size} bytes, {models.count_params(plugin)} params, "
              f"vcompile.ratio {plugin.ratio}, vcompile.scope {plugin.scope}")


if __name__ == "__main__":
    main()
