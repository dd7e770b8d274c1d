"""Export a BERT-base-shaped encoder with random weights for benchmarks.

    /usr/bin/python3 bench/models/bert_base.py OUT.onnx [--layers 12] [--hidden 768]
        [--heads 12] [--ffn 3072] [--opset 14] [--variator-ffn K [--bottleneck 64]]

Same module code as the committed BERT fixtures (fixtures/models.py), at full
size: about 340 MB with the defaults. The output is a benchmark input, not a
fixture, so writing into fixtures/ is refused.

--variator-ffn K exports the same backbone (same seed, same weights) with a
Variator plugin applied by hand around every layer's FFN (fixtures/plugins.py:
FFN scope, k = K): the reference a compiled model is timed against.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO_ROOT / "fixtures"
sys.path.insert(0, str(FIXTURE_DIR))
sys.dont_write_bytecode = True  # keep __pycache__ out of fixtures/

import models  # noqa: E402  (needs the path above)
import plugins  # noqa: E402


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
    parser.add_argument("--variator-ffn", type=int, metavar="K",
                        help="apply a Variator plugin with ratio K around every FFN (by hand)")
    parser.add_argument("--bottleneck", type=int, default=64,
                        help="the plugins' restore bottleneck width")
    args = parser.parse_args()
    if args.variator_ffn is not None and args.variator_ffn < 2:
        parser.error("--variator-ffn K needs K >= 2")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if FIXTURE_DIR in args.out.resolve().parents:
        parser.error("benchmark models are not fixtures; write them outside fixtures/")
    return args


def build(args):
    torch.manual_seed(args.seed)
    config = models.BertConfig(vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                               heads=args.heads, ffn=args.ffn, max_positions=args.max_positions)
    model = models.BertEncoder(config)
    models.init_norm_weights(model)
    if args.variator_ffn:
        # Drawn after the backbone: its weights are those of the plain model with the same seed.
        plugins.apply_ffn_plugins(model, args.variator_ffn, args.bottleneck)
    return model.eval()


def export(model, args):
    # Small example shapes keep tracing cheap; batch and seq are dynamic anyway.
    input_ids = torch.randint(0, args.vocab, (2, 8), dtype=torch.long)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    dynamic = {"batch": 0, "seq": 1}
    axes = {name: {axis: dim for dim, axis in dynamic.items()}
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
    model = build(args)
    params = models.count_params(model)
    start = time.perf_counter()
    export(model, args)
    seconds = time.perf_counter() - start
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size} bytes ({size / 2**20:.1f} MiB), "
          f"{params} params, opset {args.opset}, export {seconds:.1f} s")


if __name__ == "__main__":
    main()
