#!/usr/bin/env python3
"""Paired comparison of two rewriters in an `eval-rewriter` run (its eval.json): the mean
difference per item of distance closed, consistency, JSR, strict success, shield acceptance
and the second scorer's distance closed, with a 95% paired-bootstrap interval (seeded).

    python3 scripts/eval-compare.py runs/eval/eval.json [BASELINE_INDEX OTHER_INDEX]

Indexes are the rewriters' rows in the table (0 = base, the default baseline); without
OTHER_INDEX every other rewriter is compared with the baseline. Standard library only.
"""

import json
import random
import sys


def jsr(it):
    return float(it["l2"] < 0.8 and it["consistency"] > 0.3)


def strict(it):
    return float(it["consistency"] > 0.6 and it["closed"] >= 0.5)


MEASURES = [
    ("distance closed", lambda it: it["closed"]),
    ("consistency", lambda it: it["consistency"]),
    ("JSR", jsr),
    ("strict", strict),
    ("shield accepts", lambda it: float(it["shield_passed"])),
    ("2nd scorer closed", lambda it: it["second_closed"]),
]


def compare(base, other, draws=5000, seed=1):
    assert [i["id"] for i in base["items"]] == [i["id"] for i in other["items"]], "different items"
    print(f"{other['rewriter']}  vs  {base['rewriter']}  ({len(base['items'])} items)")
    rng = random.Random(seed)
    for name, f in MEASURES:
        d = [f(o) - f(b) for b, o in zip(base["items"], other["items"])]
        n = len(d)
        means = sorted(sum(rng.choice(d) for _ in range(n)) / n for _ in range(draws))
        lo, hi = means[int(0.025 * draws)], means[int(0.975 * draws) - 1]
        flag = "" if lo <= 0 <= hi else "  (interval excludes 0)"
        print(f"  {name:18} {sum(d) / n:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]{flag}")


def main():
    details = json.load(open(sys.argv[1]))["details"]
    b = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    others = [int(sys.argv[3])] if len(sys.argv) > 3 else [i for i in range(len(details)) if i != b]
    for o in others:
        compare(details[b], details[o])


if __name__ == "__main__":
    main()
