"""``wsss report WORKDIR``: one self-contained HTML page and a Markdown file of a run's results.

The page holds the results table, per-class IoU tables in the papers' layout, the seeds'
threshold sweeps, the training curves, pictures of a few images (maps, IR labels, pseudo masks,
predictions) and the resolved configuration; its pictures are embedded, so the one file can be
mailed or archived. ``report.md`` holds the same tables. What a run did not produce is left out
with a note. The logic lives in :mod:`wsss.pipeline.report`::

    wsss report work                      # work/report.html and work/report.md
    wsss report work --out reports/run1 --data /data/VOCdevkit
"""

from __future__ import annotations

import argparse

from wsss.commands import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workdir", help="the work directory of 'wsss run' (or the demo's OUT/work)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for report.html and report.md (default: the work directory)")
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="the dataset root, when it is no longer where the run's config.yaml says "
                             "(pictures need the images)")
    parser.add_argument("--images", type=positive_int, default=4, metavar="N",
                        help="images per picture grid (default: 4)")


def run(args: argparse.Namespace) -> int:
    from wsss.pipeline.report import build_report

    html_path, md_path = build_report(args.workdir, args.out, data=args.data, images=args.images)
    print(f"wrote {html_path} and {md_path}")
    return 0
