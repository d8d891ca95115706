"""The report of `anchorface evaluate`: report.md (Table 1 of §4.3, the Fig. 5 consistency table, the supp. Table 1
ablation, the Fig. 7 guidance study), report.json (strict JSON), the consistency plot and the frame grids. The only module of the evaluation
that draws (matplotlib, imported inside the plotting functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from anchorface.errors import require
from anchorface.io.atomic import atomic_output
from anchorface.io.images import resize

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


CONSISTENCY_PANELS = [("self_csim", "Self-CSIM ↓ (Fig. 5)"), ("id_drift_first", "identity drift from frame 0 ↓"),
                      ("background_drift", "drift outside the face ↓ (0-255)")]
SETTING_NAMES = {"both": "full conditions", "landmarks": "landmarks only (G dropped)",
                 "global": "G only (landmarks dropped)", "none": "no conditions"}


def plot_consistency(rows: list[dict], path: Path, order: list[str] = ()) -> None:
    """Fig. 5: the consistency measures against video length, one line per strategy with its 95% interval, one
    row of panels per setting (the signals given)."""
    require("matplotlib", "eval", "evaluate's plots")
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(r.get("conditions", "both") for r in rows))
    panels = [(k, t) for k, t in CONSISTENCY_PANELS if any(r.get(k) is not None for r in rows)] or \
        [("appearance_drift", "appearance drift ↓ (0-255)")]
    fig = Figure(figsize=(4.2 * len(panels), 3.4 * len(settings)), dpi=100)
    series = sorted({(r["checkpoint"], r["merge"]) for r in rows}, key=lambda cm: (cm[0], _rank(order, cm[1])))
    lengths = sorted({r["length"] for r in rows})
    for si, setting in enumerate(settings):
        for i, (key, title) in enumerate(panels):
            ax = fig.add_subplot(len(settings), len(panels), si * len(panels) + i + 1)
            for ckpt, merge in series:
                pts = sorted((r["length"], r.get(key), *(r.get("ci", {}).get(key) or (None, None))) for r in rows
                             if (r["checkpoint"], r["merge"]) == (ckpt, merge) and r.get("conditions", "both") == setting)
                pts = [p for p in pts if p[1] is not None and not math.isnan(p[1])]
                if not pts:
                    continue
                label = merge if len({c for c, _ in series}) == 1 else f"{ckpt}: {merge}"
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
                band = [(p[0], p[2], p[3]) for p in pts if p[2] is not None and not math.isnan(p[2])]
                if len(band) > 1:
                    ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                    color=line.get_color(), alpha=0.15, linewidth=0)
                elif band:  # (one length: a band of no width cannot be seen; an error bar can)
                    mean = next(p[1] for p in pts if p[0] == band[0][0])
                    ax.errorbar([band[0][0]], [mean], yerr=[[max(mean - band[0][1], 0.0)],  # (rounding)
                                                            [max(band[0][2] - mean, 0.0)]],
                                color=line.get_color(), capsize=4, linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [str(L) for L in lengths])
            ax.minorticks_off()
            ax.set_xlabel("video length (frames)")
            ax.set_title(f"{title}\n{SETTING_NAMES.get(setting, setting)}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def strip_image(strip: dict, path: Path, cell: int = 96) -> None:
    """Fig. 4: one row per strategy, `STRIP_FRAMES` frames spread over one long video, labelled."""
    rows = []
    for label, frames in strip["frames"].items():
        cells = [resize(f, cell) for f in frames]
        row = np.concatenate(cells, axis=1)
        head = np.full((cell, 150, 3), 255, np.uint8)
        cv2.putText(head, label, (6, cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([head, row], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    top = np.full((22, width, 3), 255, np.uint8)
    idx = ", ".join(str(i) for i in strip.get("indices", []))
    cv2.putText(top, f"{strip['video']}: frames {idx}", (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    from PIL import Image

    Image.fromarray(np.concatenate([top] + rows, axis=0)).save(path)


def frame_grid(source: np.ndarray, driving: np.ndarray, generated: dict[str, np.ndarray], path: Path,
               title: str) -> None:
    """A PNG grid: row 1 = source | driving frames; one row per strategy = its generated frames."""
    from matplotlib.figure import Figure

    n = len(driving)
    cols = np.unique(np.linspace(0, n - 1, min(n, GRID_FRAMES)).round().astype(int))

    def cell(img):
        return resize(img, GRID_CELL)

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
    require("matplotlib", "eval", "evaluate's plots")
    from matplotlib.figure import Figure

    t = [r["t"] for r in rows]
    fig = Figure(figsize=(6, 3.6), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
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


# the consistency tables' measures (of protocols.CONSISTENCY_MEASURES)
CONSISTENCY_COLUMNS = ("self_csim", "id_drift_first", "id_drift_anchor", "background_drift")


def _interval(v, ci) -> str:
    """'mean [low, high]', or the mean alone when there is no interval (one clip)."""
    if v is None:
        return "–"
    return fmt(v) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and ci[0] is not None and not math.isnan(ci[0]) else "")


def _with_ci(row: dict, key: str) -> str:
    return _interval(row.get(key), row.get("ci", {}).get(key))


def _rank(order, label: str):
    return (order.index(label), "") if label in order else (len(order), label)


def is_report_folder(folder: Path) -> bool:
    """Whether `folder` holds an earlier report of `write_report` and nothing else (so rewriting it loses nothing):
    a report.json of the report's own shape, and besides it only report.md and the images it lists."""
    try:
        report = json.loads((folder / "report.json").read_text())
        entries = list(folder.iterdir())
    except (OSError, ValueError):
        return False
    if not isinstance(report, dict) or not {"settings", "results", "images"} <= report.keys():
        return False
    ours = {"report.json", "report.md", *map(str, report["images"] if isinstance(report["images"], list) else [])}
    return all(p.name in ours and p.is_file() and not p.is_symlink() for p in entries)


def write_report(report: dict, output: Path, columns: list[tuple[str, str]], grids: dict, notes_on_columns: list[str]
                 = (), order: list[str] = (), strips: dict | None = None) -> None:
    """Write report.md, report.json and the PNGs into the new directory `output`, atomically. `columns`: Table 1's
    (group, label) columns in order (models, then baselines); `grids`: protocol -> {"case", "gen": {label: crops}};
    `order`: the variant labels in their display order."""
    with atomic_output(Path(output)) as tmp:
        tmp.mkdir(parents=True)
        images = []
        if report["consistency"]:
            plot_consistency(report["consistency"], tmp / "consistency.png", order)
            images.append("consistency.png")
        for setting, strip in (strips or {}).items():
            strip_image(strip, tmp / f"strip-{setting}.png")
            images.append(f"strip-{setting}.png")
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
            f"- sampler: {o.get('sampler') or 'checkpoint default'}, steps: {o['steps'] or 'checkpoint default'}, "
            "CFG scale: "
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
        out += ["## Consistency vs. video length (Fig. 5, Fig. 4)", "",
                f"Measured with {report['csim_embedding']}. Self-CSIM: the paper's measure (lower is better); "
                "identity drift: each frame's embedding distance to the first frame and to the central (anchor) "
                "frame, mean over frames (at most 32 evenly spaced frames of a video are embedded, the first, the "
                "anchor and the last among them); outside the face: the mean absolute difference (0-255) from the first "
                "frame of 16x16 area-averaged cells the grown face hull covers in neither frame (hair, clothes, "
                "background). Each cell: mean over clips x seeds [95% bootstrap interval, clips resampled whole].", ""]
        for setting in dict.fromkeys(r.get("conditions", "both") for r in report["consistency"]):
            rows = [r for r in report["consistency"] if r.get("conditions", "both") == setting]
            out += [f"### {SETTING_NAMES.get(setting, setting)}", "",
                    "| length | checkpoint | merge | clips x seeds | Self-CSIM ↓ | id drift, frame 0 ↓ | "
                    "id drift, anchor ↓ | outside the face ↓ |", "|---|---|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: (r["length"], r["checkpoint"], _rank(order, r["merge"]))):
                cells = [_with_ci(r, k) for k in CONSISTENCY_COLUMNS]
                out.append(f"| {r['length']} | {r['checkpoint']} | {r['merge']} | {r['videos']} | "
                           + " | ".join(cells) + " |")
            out.append("")
            paired = [r for r in rows if r.get("vs_reference")]
            if paired:
                ref = paired[0]["vs_reference"]["merge"]
                out += [f"Paired differences, strategy - {ref} on the same clips and seeds (positive: {ref} "
                        "drifts less), mean [95% bootstrap interval, clips resampled whole]; an interval above 0 "
                        f"means {ref} is better on that measure:", "",
                        "| length | checkpoint | merge | Δ Self-CSIM | Δ id drift, frame 0 | Δ id drift, anchor | "
                        "Δ outside the face |", "|---|---|---|---|---|---|---|"]
                for r in sorted(paired, key=lambda r: (r["length"], r["checkpoint"], _rank(order, r["merge"]))):
                    d = r["vs_reference"]
                    cells = [_interval(d[k][0], d[k][1:]) if k in d else "–" for k in CONSISTENCY_COLUMNS]
                    out.append(f"| {r['length']} | {r['checkpoint']} | {r['merge']} | " + " | ".join(cells) + " |")
                out.append("")
            if f"strip-{setting}.png" in report.get("images", []):
                out += [f"![Fig. 4, {setting}](strip-{setting}.png)", ""]
        out += ["![consistency](consistency.png)", ""]
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
