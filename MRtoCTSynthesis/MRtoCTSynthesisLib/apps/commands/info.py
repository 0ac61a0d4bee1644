"""``mrtoct info``: describe a checkpoint (method, networks, schedule, how it was trained)."""

from __future__ import annotations


def add_parser(sub) -> None:
    inf = sub.add_parser("info", help="describe a checkpoint (method, network, schedule, training data)")
    inf.add_argument("--model", required=True)
    inf.set_defaults(func=run)


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    from ...models.checkpoint import describe_checkpoint

    print(describe_checkpoint(args.model))
    return 0
