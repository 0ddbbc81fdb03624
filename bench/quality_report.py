"""Merge per-seed result files of bench/quality.py and print the Markdown tables.

    .venv/bin/python bench/quality_report.py bench/results/quality-quick-seed*.json

Each input is one ``bench/quality.py`` output (any number of seeds); rows are pooled over
all files and shown as mean ± std (n = seeds) of the TEST accuracy in %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from quality import CRITERIA, RATIOS, SPARSITIES  # noqa: E402 - run as a script from bench/


def pooled(files: list[Path]) -> dict:
    """{dataset: {part: {row: [values...]}}} plus the dense accuracies and EB epochs."""
    out: dict = {}
    for path in files:
        report = json.loads(path.read_text())
        for dataset, parts in report["datasets"].items():
            target = out.setdefault(dataset, {"seeds": []})
            target["seeds"].extend(parts["seeds"])
            for part, rows in parts.items():
                if part == "seeds":
                    continue
                for row, stats in rows.items():
                    target.setdefault(part, {}).setdefault(row, []).extend(stats["values"])
    return out


def fmt(values: list[float] | None, digits: int = 1) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(data: dict) -> str:
    lines: list[str] = []
    for dataset, parts in data.items():
        seeds = parts["seeds"]
        dense = [s["dense_test"] for s in seeds]
        lines.append(
            f"#### {dataset} (n = {len(seeds)} seeds; dense test accuracy {fmt(dense)}, "
            f"{seeds[0]['dense_params']:,} parameters)\n"
        )
        un = parts.get("unstructured")
        if un:
            lines.append("Unstructured (test accuracy %, same total epochs):\n")
            lines.append("| sparsity | ProbMask | global magnitude | random |")
            lines.append("|---|---|---|---|")
            for s in SPARSITIES:
                key = f"{int(round(s * 100))}%"
                lines.append(
                    f"| {key} | {fmt(un.get(f'probmask {key}'))} | {fmt(un.get(f'magnitude {key}'))} | "
                    f"{fmt(un.get(f'random {key}'))} |"
                )
            lines.append("")
        st = parts.get("structured")
        if st:
            lines.append("Structured, layerwise (test accuracy % after finetune; MACs % of dense):\n")
            lines.append("| channels removed | " + " | ".join(CRITERIA) + " | MACs |")
            lines.append("|---|" + "---|" * (len(CRITERIA) + 1))
            for r in RATIOS:
                key = f"{int(r * 100)}%"
                cells = " | ".join(fmt(st.get(f"{c} {key}")) for c in CRITERIA)
                lines.append(f"| {key} | {cells} | {fmt(st.get(f'spline {key} MACs'), 0)} |")
            lines.append("")
            lines.append("Engine variants at 50 % (test accuracy % before → after finetune; MACs % of dense):\n")
            lines.append("| variant | before finetune | after finetune | MACs |")
            lines.append("|---|---|---|---|")
            names = sorted({k[: -len(" 50%")] for k in st if k.endswith(" 50%")} - set(CRITERIA))
            for c, note in (
                ("spline layerwise", "greedy redundancy, mean replacement"),
                ("l1 layerwise", "mean replacement"),
            ):  # noqa: E501
                base = c.split()[0]
                lines.append(
                    f"| {c} ({note}) | {fmt(st.get(f'{base} 50% (before finetune)'))} "
                    f"| {fmt(st.get(f'{base} 50%'))} | {fmt(st.get(f'{base} 50% MACs'), 0)} |"
                )
            for name in names:
                lines.append(
                    f"| {name} | {fmt(st.get(f'{name} 50% (before finetune)'))} | {fmt(st.get(f'{name} 50%'))} "
                    f"| {fmt(st.get(f'{name} 50% MACs'), 0)} |"
                )
            lines.append("")
        eb = parts.get("early_bird")
        if eb:
            lines.append(
                "Early-bird at 50 % channels (test accuracy %, epoch the ticket was drawn, training GFLOPs):\n"
            )
            lines.append(
                "| criterion | EB: accuracy | EB: epoch | EB: GFLOPs | full: accuracy | full: epochs | full: GFLOPs | EB found |"
            )
            lines.append("|---|---|---|---|---|---|---|---|")
            for label in ("spline", "bn"):
                found = sum(1 for s in seeds if s["eb_epochs"]["plain" if label == "spline" else "bn_l1"] is not None)
                lines.append(
                    f"| {label} | {fmt(eb.get(f'{label} EB'))} | {fmt(eb.get(f'{label} EB epoch'))} | "
                    f"{fmt(eb.get(f'{label} EB training GFLOPs'))} | {fmt(eb.get(f'{label} full'))} | "
                    f"{fmt(eb.get(f'{label} full epoch'), 0)} | {fmt(eb.get(f'{label} full training GFLOPs'))} | "
                    f"{found}/{len(seeds)} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(tables(pooled(args.files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
