"""Paired statistics over cells and the markdown table of a run."""

from __future__ import annotations

import numpy as np

METRICS = ("near_fpr95", "near_auroc", "far_fpr95", "far_auroc")


def paired_deltas(rows: dict[int, dict], baseline: dict[int, dict]) -> dict[str, dict]:
    """Per metric, the per-seed differences ``rows - baseline`` over their common seeds: mean, std, n and
    ``t`` = mean / standard error (std with ddof=1); empty without a common seed."""
    common = sorted(set(rows) & set(baseline))
    out = {}
    for m in METRICS if common else ():
        d = np.array([rows[s][m] - baseline[s][m] for s in common])
        sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        se = sd / np.sqrt(len(d)) if len(d) > 1 else 0.0
        out[m] = {"mean": float(d.mean()), "std": sd, "n": len(d), "t": float(d.mean() / se) if se > 0 else None}
    return out


def summarise(cells: list[dict], against: str | None = None) -> dict:
    """Per (profile, row): mean/std of each metric over seeds, and the paired per-seed difference to its baseline
    (``delta_<metric>``), for a row run under ``--versus`` settings too, to that twin (``twin_delta_<metric>``),
    and with ``against``, to that row (``against_delta_<metric>``: one sampler head to head with another).
    """
    by = {}
    for c in cells:
        by.setdefault((c["profile"], c["row"]), {})[(c.get("split", c["profile"]), c["seed"])] = c  # paired by both
    twins = {c["twin"] for c in cells if c.get("twin")}
    out: dict = {}
    for (profile, row), seeds in by.items():
        first = next(iter(seeds.values()))
        entry = {
            "n_seeds": len(seeds),  # cells: (split, seed) pairs
            "n_splits": len({split for split, _ in seeds}),
            "baseline": first["baseline"],
            "seconds_mean": float(np.mean([c["seconds"] for c in seeds.values()])),
        }
        for m in (*METRICS, "id_accuracy"):
            v = np.array([c[m] for c in seeds.values()])
            entry[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        # A --versus twin ran under other settings than the against row: it is paired with its own row instead.
        head_to_head = against if against not in (None, row, entry["baseline"]) and row not in twins else None
        for prefix, other in (
            ("delta", entry["baseline"]),
            ("twin_delta", first.get("twin")),
            ("against_delta", head_to_head),
        ):
            if other and (base := by.get((profile, other))):
                entry.update({f"{prefix}_{m}": d for m, d in paired_deltas(seeds, base).items()})
        if first.get("twin"):
            entry["twin"] = first["twin"]
        if head_to_head:
            entry["against"] = head_to_head
        out.setdefault(profile, {})[row] = entry
    return out


def markdown_table(summary: dict, profile: str) -> str:
    """One markdown table per profile, in percent; Δ = paired per-seed difference to the row's baseline."""
    head = (
        "| row | near FPR95 ↓ | near AUROC ↑ | far FPR95 ↓ | far AUROC ↑ | Δ near FPR95 (mean ± std, t) | "
        "Δ near AUROC | Δ far FPR95 | ID acc | seeds |"
    )
    lines = [head, "|" + "---|" * 10]

    def ms(e):
        return f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}"

    def delta(e, m, prefix="delta"):
        d = e.get(f"{prefix}_{m}")
        if not d:
            return "–"
        t = f", t {d['t']:+.1f}" if d["t"] is not None else ""
        return f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f}{t}"

    for row, e in summary[profile].items():
        base = f" (vs {e['baseline']})" if e["baseline"] not in (None, "ce") else ""
        lines.append(
            f"| {row}{base} | {ms(e['near_fpr95'])} | {ms(e['near_auroc'])} | {ms(e['far_fpr95'])} | "
            f"{ms(e['far_auroc'])} | {delta(e, 'near_fpr95')} | {delta(e, 'near_auroc')} | "
            f"{delta(e, 'far_fpr95')} | {100 * e['id_accuracy']['mean']:.1f} | {e['n_seeds']} |"
        )
    for prefix, other, title in (
        (
            "twin_delta",
            "twin",
            "Each row paired with itself under the `--versus` settings (Δ = row − twin, same seed):",
        ),
        ("against_delta", "against", "Each row head to head with the `--against` row (Δ = row − that row, same seed):"),
    ):
        paired = [(row, e) for row, e in summary[profile].items() if e.get(f"{prefix}_near_fpr95")]  # common seeds only
        if paired:
            lines += [
                "",
                title,
                "",
                f"| row | {other} | Δ near FPR95 (mean ± std, t) | Δ near AUROC | Δ far FPR95 | seeds |",
                "|" + "---|" * 6,
            ]
            lines += [
                f"| {row} | {e[other]} | {delta(e, 'near_fpr95', prefix)} | {delta(e, 'near_auroc', prefix)} | "
                f"{delta(e, 'far_fpr95', prefix)} | {e[f'{prefix}_near_fpr95']['n']} |"
                for row, e in paired
            ]
    return "\n".join(lines)
