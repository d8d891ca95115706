"""The report of `anchorface evaluate`: report.md (Table 1 of §4.3, the Fig. 5 consistency table, the supp. Table 1
ablation, the Fig. 7 guidance study), report.json (strict JSON), the consistency plot and the frame grids. The only module of the evaluation
that draws (matplotlib, imported inside the plotting functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from anchorface.io.video import atomic_output

BASELINE_COLUMN = "baseline"  # the group of Table 1's baseline columns (results[protocol]["baseline"][title])
GRID_FRAMES = 8  # columns of a frame grid
GRID_CELL = 128  # pixels per grid cell


TABLE_ROWS = [("FID ↓", "fid"), ("FVD ↓", "fvd"), ("LMSE ↓", "lmse"), ("Expressive-LMSE ↓", "e_lmse"),
              ("CSIM ↑", "csim"), ("Self-CSIM ↓", "self_csim"), ("PSNR ↑", "psnr"), ("SSIM ↑", "ssim"),
              ("face found (generated)", "face_found_rate")]


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 100 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def jsonable(obj):
    """NaN -> null, ±inf -> "inf"/"-inf", numpy -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def table1_markdown(results: dict, columns: list[tuple[str, str]]) -> str:
    """Table 1 of the paper: metrics x (checkpoint, merge), cells "self / cross"."""
    head = "| Metric | " + " | ".join(f"{c} / {m}" for c, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for title, key in TABLE_ROWS:
        cells = []
        for c, m in columns:
            vals = [results.get(p, {}).get(c, {}).get(m, {}).get(key) for p in ("self", "cross")]
            cells.append(" / ".join(fmt(v) for v in vals))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_consistency(rows: list[dict], path: Path, order: list[str] = ()) -> None:
    """Fig. 5: Self-CSIM (and the two extra consistency measures) against video length, one line per strategy."""
    from matplotlib.figure import Figure

    panels = [("self_csim", "Self-CSIM ↓ (Fig. 5)"), ("first_frame_csim", "min cos(first, later) ↑"),
              ("appearance_drift", "appearance drift ↓ (0-255)")]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    series = sorted({(r["checkpoint"], r["merge"]) for r in rows}, key=lambda cm: (cm[0], _rank(order, cm[1])))
    lengths = sorted({r["length"] for r in rows})
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for ckpt, merge in series:
            pts = sorted((r["length"], r.get(key)) for r in rows if (r["checkpoint"], r["merge"]) == (ckpt, merge))
            pts = [(x, y) for x, y in pts if y is not None and not math.isnan(y)]
            if pts:
                label = merge if len({c for c, _ in series}) == 1 else f"{ckpt}: {merge}"
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ax.set_xlabel("video length (frames)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def frame_grid(source: np.ndarray, driving: np.ndarray, generated: dict[str, np.ndarray], path: Path,
               title: str) -> None:
    """A PNG grid: row 1 = source | driving frames; one row per strategy = its generated frames."""
    from matplotlib.figure import Figure

    n = len(driving)
    cols = np.unique(np.linspace(0, n - 1, min(n, GRID_FRAMES)).round().astype(int))

    def cell(img):
        return cv2.resize(img, (GRID_CELL, GRID_CELL), interpolation=cv2.INTER_AREA if img.shape[0] > GRID_CELL
                          else cv2.INTER_CUBIC)

    blank = np.full((GRID_CELL, GRID_CELL, 3), 255, np.uint8)
    rows = [np.concatenate([cell(source)] + [cell(driving[i]) for i in cols], axis=1)]
    names = ["source | driving"]
    for merge, gen in generated.items():
        rows.append(np.concatenate([blank] + [cell(gen[i]) for i in cols], axis=1))
        names.append(merge)
    grid = np.concatenate(rows, axis=0)
    fig = Figure(figsize=(grid.shape[1] / 100 + 1.4, grid.shape[0] / 100 + 0.8), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(grid)
    ax.set_yticks([GRID_CELL * (k + 0.5) for k in range(len(names))], names, fontsize=8)
    ax.set_xticks([GRID_CELL * (k + 1.5) for k in range(len(cols))], [f"t={int(c)}" for c in cols], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)




def plot_guidance(rows: list[dict], path, title: str = "") -> None:
    """Fig. 7: the relative improvement in recovering x0 of each guidance subset over no guidance, per timestep,
    with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for s, color in zip(("landmarks", "global", "both"), ("tab:blue", "tab:orange", "tab:green")):
        m = [r[s]["relative_pct"] for r in rows]
        lo = [r[s]["relative_ci"][0] for r in rows]
        hi = [r[s]["relative_ci"][1] for r in rows]
        ax.plot(t, m, label=s, color=color)
        ax.fill_between(t, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("x0 recovery improvement over no guidance (%)")
    ax.set_title(title or "Impact of guidance signals (Fig. 7)", fontsize=10)
    ax.legend(title="signals given", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rank(order, label: str):
    return (order.index(label), "") if label in order else (len(order), label)


def write_report(report: dict, output: Path, columns: list[tuple[str, str]], grids: dict, notes_on_columns: list[str]
                 = (), order: list[str] = ()) -> None:
    """Write report.md, report.json and the PNGs into the new directory `output`, atomically. `columns`: Table 1's
    (group, label) columns in order (models, then baselines); `grids`: protocol -> {"case", "gen": {label: crops}};
    `order`: the variant labels in their display order."""
    with atomic_output(Path(output)) as tmp:
        tmp.mkdir(parents=True)
        images = []
        if report["consistency"]:
            plot_consistency(report["consistency"], tmp / "consistency.png", order)
            images.append("consistency.png")
        if report.get("guidance"):
            plot_guidance(report["guidance"]["rows"], tmp / "guidance.png")
            images.append("guidance.png")
        for proto, g in grids.items():
            c = g["case"]
            res = next(iter(g["gen"].values())).shape[1]
            name = f"grid-{proto}.png"
            frame_grid(c.source_crop(res), c.driving_crops(res), g["gen"], tmp / name, f"{proto}: {c.name}")
            images.append(name)
        report["images"] = images
        (tmp / "report.json").write_text(json.dumps(jsonable(report), indent=2, allow_nan=False))
        (tmp / "report.md").write_text(render_markdown(report, columns, notes_on_columns, order))


def render_markdown(report: dict, columns: list[tuple[str, str]], baseline_notes: list[str] = (),
                    order: list[str] = ()) -> str:
    """report.md. `columns`: Table 1's (group, label) columns from the method registry (a checkpoint's variants,
    then the baselines); `baseline_notes`: one line per baseline saying what it is."""
    o = report["settings"]
    out = ["# anchorface evaluation", ""]
    motion = "re-targeted to the source face (--relative)" if o["relative"] else \
        "driving landmarks as they are (paper)"
    out += ["- methods: " + ", ".join(f"`{m}`" for m in report.get("methods", [])),
            "- checkpoints: " + ", ".join(f"`{n}` ({p})" for n, p in report["checkpoints"].items()),
            f"- driving videos: {len(report['videos'])} ({', '.join(report['videos'])})",
            f"- CSIM / Self-CSIM embedding: {report['csim_embedding']}",
            f"- LMSE unit: {report['lmse_unit']}",
            f"- motion: {motion}",
            f"- steps: {o['steps'] or 'checkpoint default'}, CFG scale: "
            f"{o['guidance_scale'] if o['guidance_scale'] is not None else 'checkpoint default'}, seed: {o['seed']}",
            f"- time: {report['seconds']:.0f} s", ""]
    res = report["results"]
    present = [(g, m) for g, m in columns if any(m in res.get(p, {}).get(g, {}) for p in res)]
    columns = [c for c in present if c[0] != BASELINE_COLUMN]
    baselines = [c for c in present if c[0] == BASELINE_COLUMN]
    if present:
        out += ["## Same- / cross-identity reenactment (§4.3, Table 1)", "",
                "Cells are *self / cross*; PSNR and SSIM exist for self-reenactment only (the driving frames are the "
                "ground truth)."]
        if baselines:
            res_px = next(r["resolution"] for p in res.values() for r in p.get(BASELINE_COLUMN, {}).values())
            floor = "the re-targeted motion is the target, so not LMSE's floor" if o["relative"] else \
                "LMSE's floor at that resolution"
            out += [f"The *baseline* columns are not models but methods of the registry, at {res_px} px: "
                    + "; ".join(baseline_notes) + f" (copying the driving crops: {floor})."]
        out += ["", table1_markdown(res, columns + baselines), ""]
        for p in ("self", "cross"):
            if f"grid-{p}.png" in report.get("images", []):
                out += [f"![{p}](grid-{p}.png)", ""]
    if report["consistency"]:
        out += ["## Consistency vs. video length (Fig. 5)", "",
                "Self-CSIM (lower is better, the paper's measure), min cosine between the first generated frame and "
                "every later one (higher is better) and the appearance drift (8x8 area-averaged mean absolute "
                "difference from the first frame, 0-255; lower is better).", "",
                "| length | checkpoint | merge | videos | Self-CSIM ↓ | min cos(first, later) ↑ | drift ↓ |",
                "|---|---|---|---|---|---|---|"]
        for r in sorted(report["consistency"], key=lambda r: (r["length"], r["checkpoint"], _rank(order, r["merge"]))):
            out.append(f"| {r['length']} | {r['checkpoint']} | {r['merge']} | {r['videos']} | "
                       f"{fmt(r.get('self_csim'))} | {fmt(r.get('first_frame_csim'))} | "
                       f"{fmt(r.get('appearance_drift'))} |")
        out += ["", "![consistency](consistency.png)", ""]
    if report["ablation"]:
        r0 = report["ablation"][0]
        out += ["## Inference ablation (supp. Table 1)", "",
                f"Checkpoint `{r0['checkpoint']}`, {r0['merge']} merge. *Conditions* = the signals given at sampling "
                "(the others replaced by the model's null embeddings).", "",
                "| steps | CFG | conditions | FID ↓ | LMSE ↓ | CSIM ↑ | face found |", "|---|---|---|---|---|---|---|"]
        for r in report["ablation"]:
            out.append(f"| {r['steps']} | {fmt(r['guidance_scale'])} | {r['conditions']} | {fmt(r.get('fid'))} | "
                       f"{fmt(r.get('lmse'))} | {fmt(r.get('csim'))} | {fmt(r.get('face_found_rate'))} |")
        out.append("")
    if report.get("guidance"):
        gd = report["guidance"]
        out += ["## Impact of the guidance signals (§4.5.2, Fig. 7)", "",
                f"Checkpoint `{gd['checkpoint']}`, {gd['cases']} driving sequences of {gd['frames']} frames, one noise "
                "per (sequence, t). One model with the other signals replaced by its null embeddings stands in for "
                "the paper's four separately trained models. Cells: MSE of x0_hat without guidance, and each "
                "subset's improvement over it in % (95% bootstrap interval over the sequences).", "",
                "| t | MSE, no guidance | landmarks | global | both |", "|---|---|---|---|---|"]
        for row in gd["rows"]:
            cells = [f"{fmt(row[s]['relative_pct'], 2)} [{fmt(row[s]['relative_ci'][0], 2)}, "
                     f"{fmt(row[s]['relative_ci'][1], 2)}]" for s in ("landmarks", "global", "both")]
            out.append(f"| {row['t']} | {fmt(row['mse']['none'], 4)} | " + " | ".join(cells) + " |")
        out += ["", "![guidance](guidance.png)", ""]
    if report["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)
