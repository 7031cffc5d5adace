"""The `longtake` command."""
from __future__ import annotations

import argparse
import json
import sys


def cmd_info(args) -> int:
    from .memory import load_checkpoint
    model = load_checkpoint(args.checkpoint)
    config = json.loads(model.config.to_json())
    print(json.dumps(config, indent=2))
    counts = model.parameter_counts()
    print("\nparameters:")
    for part, count in counts.items():
        print(f"  {part:<9} {count:>12,}")
    print(f"  {'total':<9} {sum(counts.values()):>12,}")
    return 0


def cmd_init(args) -> int:
    import torch
    from .memory import DenoiserConfig, LongTakeModel, ModelConfig, TextConfig, save_checkpoint
    from .training.vocab import VOCAB
    torch.manual_seed(args.seed)
    config = ModelConfig(text=TextConfig(vocab=VOCAB), denoiser=DenoiserConfig(memory=args.memory),
                         record={"made_by": "longtake init", "trained_steps": 0, "seed": args.seed})
    save_checkpoint(LongTakeModel(config), args.out)
    print(f"wrote an untrained {args.memory} checkpoint to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtake", description="Minute-long text-to-video with memory.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a checkpoint's config and parameter counts")
    info.add_argument("checkpoint")
    info.set_defaults(run=cmd_info)

    init = commands.add_parser("init", help="write an untrained checkpoint (a starting point for training or tests)")
    init.add_argument("out")
    init.add_argument("--memory", choices=("none", "malt", "lstm"), default="malt")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(run=cmd_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .memory import CheckpointError
    try:
        return args.run(args)
    except CheckpointError as error:
        print(f"longtake: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
