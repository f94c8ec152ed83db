"""`taper report`: Markdown summary and static HTML dashboard from asv results (see reports/)."""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--results", nargs="+", default=["results"], metavar="DIR",
                        help="asv results directories, e.g. this box's and the GPU box's "
                             "(default: results)")
    parser.add_argument("--out", default="html-report", metavar="DIR",
                        help="where report.md, index.html and the PNG charts go "
                             "(default: html-report)")
    parser.add_argument("--asv-publish", action="store_true",
                        help="also run asv publish into OUT/asv and link every benchmark to its "
                             "history there (needs the checkout's asv.conf.json)")
    parser.add_argument("--asv-config", default="asv.conf.json",
                        help="asv config used by --asv-publish (default: asv.conf.json)")
    parser.add_argument("--roofline", type=float, default=None, metavar="TOKENS_PER_S",
                        help="decode roofline to draw; default: track_*roofline* benchmark values")
    parser.add_argument("--candidate", default=None,
                        help="the implementation under test, compared with the best other "
                             "(default: reports/roles.py CANDIDATE, engine)")


def run(args) -> int:
    from reports import roles
    from reports.dashboard import PublishError, PublishSetupError, build_report
    from reports.results import ResultsError

    try:
        paths = build_report(args.results, args.out, asv=args.asv_publish,
                             asv_config=args.asv_config, roofline=args.roofline,
                             candidate=args.candidate or roles.CANDIDATE)
    except (ResultsError, ValueError, PublishSetupError) as e:
        print(f"taper report: {e}", file=sys.stderr)
        return 2
    except PublishError as e:
        print(f"taper report: {e}", file=sys.stderr)
        return 1
    if paths["stale"]:
        print(f"taper report: left out {len(paths['stale'])} results measured before their benchmark's "
              f"parameters changed, e.g. {paths['stale'][0]}", file=sys.stderr)
    print(f"wrote {paths['markdown']} and {paths['html']} with {len(paths['charts'])} charts")
    if paths["asv"]:
        print(f"asv dashboard: {paths['asv']}")
    return 0
