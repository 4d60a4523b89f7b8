"""What a stack would build, without a cloud account or the Pulumi CLI.

    venv/bin/python scripts/plan.py STACK [--out DIR] [--charts DIR] [--offline]

Runs __main__.py under Pulumi's mock engine with the stack's settings (as `pulumi preview` would)
and writes, under plan/STACK/: resources.md, graph.dot and graph.svg, nodes/<node>/ (each remote
step's arguments and the files it writes), kubernetes.yaml, helm/<release>/ (values and the chart
rendered by helm), summary.txt, estimate.md (the estimated first deploy and one more worker,
offline/estimate.py, with the chain of steps each waits on; summary.txt gives both in minutes).
Secrets show as [secret], values known only after a deploy as (known after deploy). Bad settings
fail with the message `pulumi up` would give.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.settings import SettingsError
from offline.engine import ROOT, STACKS
from offline.plan import PlanError, make_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stack", help=f"the stack to plan: {', '.join(STACKS)}")
    parser.add_argument("--out", type=Path, help="where to write the plan (default plan/STACK)")
    parser.add_argument(
        "--charts", type=Path, help="a folder of chart archives (.tgz) to render from before any download"
    )
    parser.add_argument(
        "--offline", action="store_true", help="never download a chart; without it, helm pulls missing charts"
    )
    args = parser.parse_args(argv)
    out = args.out or ROOT / "plan" / args.stack
    if args.charts is not None and not args.charts.is_dir():
        parser.error(f"--charts {args.charts}: no such folder")
    try:
        plan = make_plan(args.stack, out, args.charts, args.offline)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        plan.write()
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(plan.summary(), end="")
    print(f"Written to {out}")
    return 1 if plan.failed else 0


if __name__ == "__main__":
    sys.exit(main())
