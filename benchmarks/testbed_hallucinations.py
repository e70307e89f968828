"""What the testbed model hallucinates: top hallucinated objects, share of the scene's own theme, share of partners.

    python benchmarks/testbed_hallucinations.py runs/tb500/chair/baseline/results.json

Reads a ``vlmfix eval chair`` results file made on the testbed world and prints the statistics the realism bar asks
for (the most frequent hallucinations should be absent objects typical of the scene's theme).
"""

from __future__ import annotations

import collections
import json
import sys

from vlmfix.testbed import default_eval_world
from vlmfix.testbed.categories import BY_NAME


def stats(results_path: str) -> dict:
    results = json.loads(open(results_path).read())
    root = default_eval_world()
    themes = {s["image_id"]: s["theme"] for s in json.loads((root / "annotations" / "scenes_val.json").read_text())
              ["scenes"]}
    counts, same_theme, partner, total = collections.Counter(), 0, 0, 0
    for cap in results["captions"]:
        present = {BY_NAME[g].id for g in cap["gt"] if g in BY_NAME}
        for obj in cap["hallucinated"]:
            cat = BY_NAME.get(obj)
            if cat is None:
                continue
            total += 1
            counts[obj] += 1
            same_theme += cat.theme == themes.get(cap["image_id"])
            partner += cat.partner in present
    return {"hallucinated_mentions": total, "top10": counts.most_common(10),
            "same_theme": same_theme / max(total, 1), "partner_of_present": partner / max(total, 1)}


if __name__ == "__main__":
    print(json.dumps(stats(sys.argv[1]), indent=1))
