"""Paired statistics over cells and the pooled report of a run (per profile: splits x seeds pooled).

A cell is one (split, row, seed). Rows are paired with CE (their baseline)
and with the best peer cell by cell: same split, same seed. Far-OOD is the
mean over the far sets (other profile, noise, inverted) and is also given per
kind; a row whose training outliers are noise (``noise_outliers``) is scored
on far-OOD without the noise set, so it earns no credit for recognising its
own training distribution.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..offline_decoder.gate import gate_line
from .cells import CellNotRun
from .rows import DEFAULT_ROW
from .settings import LabSettings

METRICS = ("near_fpr95", "near_auroc", "far_fpr95", "far_auroc")
PEER_KINDS = ("peer", "posthoc")
TARGETS = {"near_vs_ce": -0.05, "near_t": -2.5, "far_vs_ce": -0.05, "near_vs_peer_t": -2.0}
SHORTCUT_TARGET = 65.0  # percent: the decoder-shortcut probe's AUROC a decoded row should stay under


def credited(cell: dict, metric: str, without_noise: bool = False) -> float:
    """The cell's value of ``metric``; far metrics of a noise-trained row (or with ``without_noise``) leave the
    noise set out."""
    kinds = cell.get("far_kinds")
    if metric.startswith("far_") and (without_noise or cell.get("noise_outliers")) and kinds:
        m = metric[4:]
        return float(np.mean([v[m] for k, v in kinds.items() if k != "noise"]))
    return float(cell[metric])


def paired_deltas(rows: dict, baseline: dict) -> dict[str, dict]:
    """Per metric, the per-cell differences ``rows - baseline`` over their common keys ((split, seed) pairs):
    mean, std, n and ``t`` = mean / standard error (std with ddof=1); empty without a common key. Where either
    side trained on noise, both sides' far figures leave the noise set out (like for like)."""
    common = sorted(set(rows) & set(baseline))
    out = {}
    for m in METRICS if common else ():
        d = np.array(
            [
                credited(rows[s], m, no_noise) - credited(baseline[s], m, no_noise)
                for s in common
                for no_noise in [bool(rows[s].get("noise_outliers") or baseline[s].get("noise_outliers"))]
            ]
        )
        sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        se = sd / np.sqrt(len(d)) if len(d) > 1 else 0.0
        out[m] = {"mean": float(d.mean()), "std": sd, "n": len(d), "t": float(d.mean() / se) if se > 0 else None}
    return out


def _plain(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def _stats(cells: list[dict], metric: str) -> dict:
    return _plain(credited(c, metric) for c in cells)


def summarise(cells: list[dict], against: str | None = None) -> dict:
    """Per (profile, row): mean/std of each metric over its cells (splits x seeds), far per kind, a per-split
    breakdown, and paired differences (by split and seed) to its baseline (``delta_<metric>``), to the best
    peer on near FPR95 (``peer_delta_<metric>``, ``best_peer``) and to the best post-hoc detector on far FPR95
    (``posthoc_delta_<metric>``, ``best_posthoc``); for a row run under ``--versus`` settings, to that twin
    (``twin_delta_<metric>``), and with ``against``, to that row (``against_delta_<metric>``)."""
    by: dict = {}
    for c in cells:
        by.setdefault((c["profile"], c["row"]), {})[(c.get("split", c["profile"]), c["seed"])] = c
    twins = {c["twin"] for c in cells if c.get("twin")}
    out: dict = {}
    for (profile, row), keyed in by.items():
        first = next(iter(keyed.values()))
        group = list(keyed.values())
        entry = {
            "n_seeds": len(keyed),  # cells: (split, seed) pairs
            "n_splits": len({split for split, _ in keyed}),
            "baseline": first["baseline"],
            "kind": first.get("kind", "ours"),
            "noise_outliers": bool(first.get("noise_outliers")),
            "seconds_mean": float(np.mean([c["seconds"] for c in group])),
        }
        for m in METRICS:
            entry[m] = _stats(group, m)
        entry["id_accuracy"] = _plain(c["id_accuracy"] for c in group)
        if probed := [c["shortcut_auroc"] for c in group if "shortcut_auroc" in c]:
            entry["shortcut_auroc"] = _plain(probed)  # the decoder-shortcut probe (cells.SHORTCUT_SET)
        kinds = sorted({k for c in group for k in c.get("far_kinds", {})})
        entry["far_kinds"] = {
            k: {
                m: _plain(c["far_kinds"][k][m] for c in group if k in c.get("far_kinds", {}))
                for m in ("fpr95", "auroc")
            }
            for k in kinds
        }
        splits = sorted({split for split, _ in keyed})
        entry["per_split"] = {
            split: {
                "name": next(c.get("split_name", "") for (s, _), c in keyed.items() if s == split),
                **{m: _stats([c for (s, _), c in keyed.items() if s == split], m) for m in METRICS},
            }
            for split in splits
        }
        # A --versus twin ran under other settings than the against row: it is paired with its own row instead.
        head_to_head = against if against not in (None, row, entry["baseline"]) and row not in twins else None
        for prefix, other in (
            ("delta", entry["baseline"]),
            ("twin_delta", first.get("twin")),
            ("against_delta", head_to_head),
        ):
            if other and (base := by.get((profile, other))):
                entry.update({f"{prefix}_{m}": d for m, d in paired_deltas(keyed, base).items()})
                if prefix == "delta":
                    entry["per_split_delta"] = {
                        split: paired_deltas(
                            {k: c for k, c in keyed.items() if k[0] == split},
                            {k: c for k, c in base.items() if k[0] == split},
                        ).get("near_fpr95")
                        for split in splits
                    }
        if first.get("twin"):
            entry["twin"] = first["twin"]
        if head_to_head:
            entry["against"] = head_to_head
        out.setdefault(profile, {})[row] = entry
    for profile, rows in out.items():
        _pair_with_best(profile, rows, by, twins)
    return out


def _pair_with_best(profile: str, rows: dict, by: dict, twins: set) -> None:
    """Name the best peer (lowest near FPR95) and the best post-hoc detector (lowest far FPR95), ranked by their
    mean paired Δ to CE (so a row that ran on fewer or easier splits is not favoured), and pair every row with
    the best one other than itself: the best peer is compared with the runner-up, so a recipe that is itself a
    peer (``noise+cutmix``) still meets its strongest rival."""
    peers = {r: e for r, e in rows.items() if e["kind"] in PEER_KINDS and r not in twins}
    posthoc = {r: e for r, e in peers.items() if e["kind"] == "posthoc"}
    for prefix, pool, metric in (("peer", peers, "near_fpr95"), ("posthoc", posthoc, "far_fpr95")):
        ranked = sorted(pool, key=lambda r: (pool[r].get(f"delta_{metric}") or pool[r][metric])["mean"])
        for row, entry in rows.items():
            best = next((r for r in ranked if r != row), None)
            if best is None:
                continue
            entry[f"best_{prefix}"] = best
            entry.update(
                {f"{prefix}_delta_{m}": d for m, d in paired_deltas(by[profile, row], by[profile, best]).items()}
            )


def _ms(e: dict) -> str:
    return f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}"


def _delta(e: dict, m: str, prefix: str = "delta") -> str:
    d = e.get(f"{prefix}_{m}")
    if not d:
        return "–"
    t = f" (t {d['t']:+.1f})" if d["t"] is not None else ""
    return f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f}{t}"


def markdown_table(summary: dict, profile: str) -> str:
    """The pooled report of one profile, in percent: the main table (mean ± std over splits x seeds; paired Δ
    to CE, to the best peer and to the best post-hoc detector), far per kind, and a per-split breakdown."""
    rows = summary[profile]
    lines = _main_table(rows)
    if any(e["noise_outliers"] for e in rows.values()):
        lines += [
            "",
            "† trained on noise outliers (alone or in its mix): its far figures, and its pair's in every Δ, "
            "leave the far-OOD noise set out.",
        ]
    probed = {row: e["shortcut_auroc"] for row, e in rows.items() if "shortcut_auroc" in e}
    if probed:
        lines += [
            "",
            "Decoder shortcut: AUROC of the row's score between decoded reconstructions of ID test images and the "
            f"real ones (50 is chance; target ≤ {SHORTCUT_TARGET:.0f}): "
            + "; ".join(f"{row} {_ms(v)}" for row, v in probed.items()),
        ]
    lines += _far_kinds_table(rows) + _per_split_table(rows)
    for prefix, other, title in (
        ("twin_delta", "twin", "Each row paired with itself under the `--versus` settings (Δ = row − twin):"),
        ("against_delta", "against", "Each row head to head with the `--against` row (Δ = row − that row):"),
    ):
        lines += _paired_table(rows, prefix, other, title)
    return "\n".join(lines)


def _main_table(rows: dict) -> list[str]:
    # the header names the best of each pool; the best itself is paired with the runner-up, marked in its cell
    best_peer, best_posthoc = (
        Counter(e[key] for e in rows.values() if key in e).most_common(1)[0][0]
        if any(key in e for e in rows.values())
        else None
        for key in ("best_peer", "best_posthoc")
    )
    lines = [
        "| row | near FPR95 ↓ | near AUROC ↑ | far FPR95 ↓ | far AUROC ↑ | Δ near FPR95 vs CE | Δ near AUROC vs CE "
        f"| Δ far FPR95 vs CE | Δ near FPR95 vs best peer ({best_peer or '–'}) "
        f"| Δ far FPR95 vs best post-hoc ({best_posthoc or '–'}) | ID acc | splits × seeds |",
        "|" + "---|" * 12,
    ]
    for row, e in rows.items():
        base = f" (vs {e['baseline']})" if e["baseline"] not in (None, "ce") else ""
        mark = " †" if e["noise_outliers"] else ""
        lines.append(
            f"| {row}{base}{mark} | {_ms(e['near_fpr95'])} | {_ms(e['near_auroc'])} | {_ms(e['far_fpr95'])} | "
            f"{_ms(e['far_auroc'])} | {_delta(e, 'near_fpr95')} | {_delta(e, 'near_auroc')} | "
            f"{_delta(e, 'far_fpr95')} | {_delta(e, 'near_fpr95', 'peer_delta')}{_versus(e, 'best_peer', best_peer)} | "
            f"{_delta(e, 'far_fpr95', 'posthoc_delta')}{_versus(e, 'best_posthoc', best_posthoc)} | "
            f"{100 * e['id_accuracy']['mean']:.1f} | {e['n_splits']} × {e['n_seeds'] // max(1, e['n_splits'])} |"
        )
    return lines


def _versus(entry: dict, key: str, header: str | None) -> str:
    """ " (vs X)" where the row was paired with another than the column's header (it is the header's row)."""
    return f" (vs {entry[key]})" if entry.get(key) not in (None, header) else ""


def _far_kinds_table(rows: dict) -> list[str]:
    kinds = sorted({k for e in rows.values() for k in e["far_kinds"]})
    if not kinds:
        return []
    lines = [
        "",
        "Far-OOD per kind, FPR95 (AUROC), mean over splits × seeds:",
        "",
        "| row | " + " | ".join(kinds) + " |",
        "|" + "---|" * (len(kinds) + 1),
    ]
    for row, e in rows.items():
        cells = [
            f"{100 * e['far_kinds'][k]['fpr95']['mean']:.1f} ({100 * e['far_kinds'][k]['auroc']['mean']:.1f})"
            if k in e["far_kinds"]
            else "–"
            for k in kinds
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _per_split_table(rows: dict) -> list[str]:
    splits = sorted({s for e in rows.values() for s in e["per_split"]})
    if len(splits) <= 1:
        return []
    names = {s: e["per_split"][s]["name"] for e in rows.values() for s in e["per_split"]}
    lines = [
        "",
        "Per split: near FPR95 (Δ vs CE, paired over seeds):",
        "",
        "| row | " + " | ".join(f"{names[s] or s} ({s.split(':', 1)[-1]})" for s in splits) + " |",
        "|" + "---|" * (len(splits) + 1),
    ]
    for row, e in rows.items():
        cells = []
        for s in splits:
            if s not in e["per_split"]:
                cells.append("–")
                continue
            d = (e.get("per_split_delta") or {}).get(s)
            cells.append(
                f"{100 * e['per_split'][s]['near_fpr95']['mean']:.1f}" + (f" ({100 * d['mean']:+.1f})" if d else "")
            )
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(rows: dict, prefix: str, other: str, title: str) -> list[str]:
    paired = [(row, e) for row, e in rows.items() if e.get(f"{prefix}_near_fpr95")]  # common cells only
    if not paired:
        return []
    return [
        "",
        title,
        "",
        f"| row | {other} | Δ near FPR95 (mean ± std, t) | Δ near AUROC | Δ far FPR95 | cells |",
        "|" + "---|" * 6,
    ] + [
        f"| {row} | {e[other]} | {_delta(e, 'near_fpr95', prefix)} | {_delta(e, 'near_auroc', prefix)} | "
        f"{_delta(e, 'far_fpr95', prefix)} | {e[f'{prefix}_near_fpr95']['n']} |"
        for row, e in paired
    ]


def results_markdown(
    settings: LabSettings,
    summary: dict,
    failures: list[dict],
    run: dict,
    versus: tuple[str, LabSettings] | None = None,
) -> str:
    """A run's pooled report (``write_results``' <name>.md): how to read it, the code, protocol and decoders it
    ran with (``run``), per profile its table and the default recipe's targets, and the cells not run or failed."""
    md = [
        f"# OOD gain (lab settings {settings.key()})",
        "",
        "Percent; mean ± std over every cell (splits × seeds); Δ = paired difference (same split, same seed) to "
        "the row's baseline (CE only unless named), to the best peer on near FPR95 (noise, density, VOS, NPOS, "
        "mixing, post-hoc; chosen by its pooled mean) and to the best post-hoc detector on far FPR95; t = mean / "
        "standard error of the paired differences. Score: every row trained with outliers or peer training "
        f"is ranked by the test-time score `{settings.test_score}` (LabSettings.test_score, chosen on the dev "
        "splits), `ce` by energy, post-hoc and density rows by their own; far = mean over the far-OOD sets.",
        "",
    ]
    if run.get("commit"):
        md += [
            f"Code: commit {run['commit'][:12]}{' with uncommitted changes' if run.get('dirty') else ''}; "
            f"protocol {run.get('protocol', '')} (sha {run.get('protocol_sha', '')}); "
            f"{'test splits only' if run.get('test_only') else 'not only test splits: not a protocol result'}; "
            f"seeds {run.get('seeds')}.",
            "",
        ]
    if run.get("decoders"):
        md += ["Split decoders against the quality gate (`oodsynth.offline_decoder.gate`, in each `decoder.json`):", ""]
        md += [f"- {split} ({q['decoder']}): {gate_line(q)}" for split, q in sorted(run["decoders"].items())]
        md += [""]
    if versus is not None:
        md += [f"Rows named `[{versus[0]}]` ran with those settings changed (lab settings {versus[1].key()}).", ""]
    for profile in summary:
        md += [f"## {profile}", "", markdown_table(summary, profile), ""]
        if DEFAULT_ROW in summary[profile]:
            md += [
                f"Targets for the default recipe ({DEFAULT_ROW}):",
                "",
                *target_lines(summary, profile, DEFAULT_ROW),
                "",
            ]
    not_run = [f for f in failures if f["error"].startswith(CellNotRun.__name__)]
    failed = [f for f in failures if f not in not_run]
    if not_run:
        by_row: dict[str, int] = {}
        for f in not_run:
            by_row[f"{f['profile']} {f['row']}"] = by_row.get(f"{f['profile']} {f['row']}", 0) + 1
        md += ["## cells not run yet", "", "; ".join(f"{k}: {v}" for k, v in by_row.items()), ""]
    if failed:
        md += ["## failed cells", ""]
        md += [f"- {f.get('split', f['profile'])} {f['row']} seed {f['seed']}: {f['error']}" for f in failed]
    return "\n".join(md) + "\n"


def target_lines(summary: dict, profile: str, row: str) -> list[str]:
    """The protocol's targets for ``row`` (the default recipe), each met or missed with its figure."""
    e = summary.get(profile, {}).get(row)
    if e is None:
        return [f"- {row} has no cells on {profile}"]

    def fig(prefix: str, m: str) -> tuple[float | None, float | None, str]:
        d = e.get(f"{prefix}_{m}")
        if not d:
            return None, None, "not measured"
        t = d["t"]
        return d["mean"], t, f"{100 * d['mean']:+.1f} ({f't {t:+.1f}' if t is not None else 'no t'}, n {d['n']})"

    out = []
    near, near_t, near_s = fig("delta", "near_fpr95")
    far, far_t, far_s = fig("delta", "far_fpr95")
    if profile == "digits":
        for label, v, t, s in (("near", near, near_t, near_s), ("far", far, far_t, far_s)):
            ok = v is not None and (v <= 0 or (t is not None and t < 2))
            out.append(f"- {'met' if ok else 'MISSED'}: {label} FPR95 not worse than CE: {s}")
        return out
    ok = near is not None and near <= TARGETS["near_vs_ce"] and near_t is not None and near_t < TARGETS["near_t"]
    out.append(f"- {'met' if ok else 'MISSED'}: near FPR95 vs CE ≤ −5 with t < −2.5: {near_s}")
    ok = far is not None and far <= TARGETS["far_vs_ce"]
    out.append(f"- {'met' if ok else 'MISSED'}: far FPR95 vs CE ≤ −5: {far_s}")
    v, t, s = fig("peer_delta", "near_fpr95")
    ok = v is not None and t is not None and t < TARGETS["near_vs_peer_t"]
    out.append(f"- {'met' if ok else 'MISSED'}: near FPR95 beats the best peer ({e.get('best_peer')}) with t < −2: {s}")
    v, t, s = fig("posthoc_delta", "far_fpr95")
    ok = v is not None and (v <= 0 or (t is not None and t < 2))
    out.append(
        f"- {'met' if ok else 'MISSED'}: far FPR95 no worse than the best post-hoc ({e.get('best_posthoc')}): {s}"
    )
    return out
