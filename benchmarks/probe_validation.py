"""How often the probe's verdict told the settings where CUT wins from those where it does not.

    python -m benchmarks.probe_validation out/results

Reads every ``<setting>/report.json`` written by ``cutalign experiment`` (its ``probe`` figures, measured on
the starting model before any arm ran) and, where present, ``probe-<setting>-nospans.json`` (``cutalign probe
--out`` with the same task's judge reporting no spans). The verdict is recomputed from the stored figures with
the current thresholds (``cutalign.reading.probe.verdict``). The outcome it predicts: the arm ``--arm auto``
would run — ``span`` when the judge reports spans, else ``cut`` — ends above SFT on positives by more than the
two arms' seed spreads added (the report's "beats"). Prints one row per (setting, judge) and the hit rate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cutalign.reading.probe import ProbeReport, verdict


def report_of(figures: dict[str, float]) -> ProbeReport:
    """A ``ProbeReport`` back from its metrics (``ProbeReport.metrics``)."""
    responses = int(figures["probe/responses"])
    return ProbeReport(
        responses=responses,
        positives=round(figures["probe/positive_rate"] * responses),
        negatives_measured=int(figures["probe/negatives_measured"]),
        spans_reported=figures["probe/spans_reported"],
        flagged_fraction=figures.get("probe/flagged_fraction"),
        contrast=figures.get("probe/contrast"),
        log_ratio=figures.get("probe/log_ratio"),
        threshold=1.1,
        detection={k: v for k, v in figures.items() if k.startswith("detection/")},
    )


def main(results: Path) -> None:
    rows, hits = [], 0
    for path in sorted(results.glob("*/report.json")):
        body = json.loads(path.read_text())
        summaries = {s["arm"]: s for s in body["summary"]}
        if not body.get("probe") or "sft" not in summaries:
            continue
        setting = path.parent.name
        nospans = results / f"probe-{setting}-nospans.json"
        probes = [("spans", body["probe"]["probe"], "span")]
        if nospans.is_file():
            probes.append(("no spans", json.loads(nospans.read_text()), "cut"))
        for judge, figures, arm in probes:
            if arm not in summaries:
                continue
            expected = verdict(report_of(figures)).ok
            wins = bool(summaries[arm]["beats_reference"][-1])
            gap = summaries[arm]["vs_reference"][-1]
            hits += expected == wins
            rows.append(
                f"| {setting} | {judge} | `{arm}` | {gap['mean']:+.3f} ± {gap['std']:.3f} | "
                f"{'wins' if wins else 'does not win'} | {'learns' if expected else 'does not learn'} | "
                f"{'right' if expected == wins else 'wrong'} |"
            )
    print("| setting | judge | arm | Δ vs sft (final) | outcome | probe expects | |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nthe probe was right in {hits} of {len(rows)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/results"))
