"""The per-run HTML report: a cohort table and, per slide, outlines, crypt density and histograms.

People check segmentations by looking. ``report.html`` is one self-contained
file (CSS inline, images as ``data:`` URIs, no scripts, no server), so it can be
mailed or opened from disk. Per-slide figures are drawn once, when the slide is
merged (:func:`render_slide_figures`, files beside the slide's other outputs),
so rebuilding the report after a run only reads them back.

Figures use matplotlib's object API (``Figure`` + Agg), never pyplot: no global
state, no display needed, safe beside the engine's threads.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hovercrypt.io.atomic import atomic_write_bytes, atomic_write_text
from hovercrypt.io.export import UNTYPED_COLUMN, count_columns, named_counts
from hovercrypt.io.overlay import UNTYPED_COLOUR
from hovercrypt.io.type_info import TypeInfo

#: smoothing of the density heatmap (Gaussian sigma): a few crypt spacings, so the map shows
#: regional crypt loss or crowding rather than single crypts
DENSITY_SIGMA_UM = 250.0
#: the heatmap is computed on a grid of at most this many cells on the long side
DENSITY_GRID = 256
REPORT_IMAGE_SIDE = 900  # px, long side of the outline image embedded in the report
OVERVIEW_FILE = "overview.jpg"  # the slide with outlines, at most REPORT_IMAGE_SIDE px


def report_canvas(thumb: np.ndarray) -> tuple[np.ndarray, float]:
    """The thumbnail shrunk to at most :data:`REPORT_IMAGE_SIDE` px, and the factor used."""
    f = min(1.0, REPORT_IMAGE_SIDE / max(thumb.shape[:2]))
    if f >= 1.0:
        return np.ascontiguousarray(thumb, np.uint8), 1.0
    size = (max(1, round(thumb.shape[1] * f)), max(1, round(thumb.shape[0] * f)))
    small = cv2.resize(thumb, size, interpolation=cv2.INTER_AREA)
    return small, small.shape[1] / thumb.shape[1]


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 85) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=90, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def density_map(
    shape: tuple[int, int], points: np.ndarray, tissue: np.ndarray, um_per_px: float, sigma_um: float
) -> tuple[np.ndarray, float]:
    """Crypts per mm² of tissue, smoothed, on a coarse grid over an image of ``shape`` (NaN off tissue).

    Normalised convolution: smoothed counts / smoothed tissue area, so the edge of the tissue
    is not read as a drop in density. Returns the grid and its cell size in image pixels.
    """
    h, w = shape
    cell = max(1.0, max(h, w) / DENSITY_GRID)
    gh, gw = max(1, int(np.ceil(h / cell))), max(1, int(np.ceil(w / cell)))
    frac = cv2.resize(tissue.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    counts = np.zeros((gh, gw), np.float64)
    if len(points):
        gx = np.clip((points[:, 0] + 0.5) / cell, 0, gw - 1).astype(int)
        gy = np.clip((points[:, 1] + 0.5) / cell, 0, gh - 1).astype(int)
        np.add.at(counts, (gy, gx), 1.0)
    sigma = max(sigma_um / (um_per_px * cell), 0.5)
    blur_c = cv2.GaussianBlur(counts, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    blur_t = cv2.GaussianBlur(frac.astype(np.float64), (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    cell_mm2 = (um_per_px * cell / 1000.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = blur_c / (blur_t * cell_mm2)
    dens[(frac < 0.05) | (blur_t < 1e-3)] = np.nan
    return dens, cell


def render_slide_figures(
    slide_dir: Path,
    thumb: np.ndarray,
    points: np.ndarray,
    um_per_px: float,
    groups: Mapping[str, Mapping[str, Sequence[float]]],
    type_info: TypeInfo,
) -> None:
    """``density.png`` (crypts per mm² of tissue over the thumbnail) and ``histograms.png``.

    ``points`` are crypt centroids in thumbnail pixels; ``groups`` maps "all" and each type
    name to its ``area_um2`` / ``nn_distance_um`` values (from the merge).
    """
    mask_file = slide_dir / "tissue_mask.png"
    mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) if mask_file.is_file() else None
    h, w = thumb.shape[:2]
    tissue = (
        np.ones((h, w), bool)
        if mask is None
        else cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 0
    )
    dens, _ = density_map((h, w), np.asarray(points).reshape(-1, 2), tissue, um_per_px, DENSITY_SIGMA_UM)

    aspect = h / max(w, 1)
    fig = _figure(6.4, min(9.0, max(2.5, 5.4 * aspect + 0.6)))
    ax = fig.add_subplot()
    grey = cv2.cvtColor(np.ascontiguousarray(thumb, np.uint8), cv2.COLOR_RGB2GRAY)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, extent=(0, w, h, 0))
    finite = dens[np.isfinite(dens)]
    im = ax.imshow(
        np.ma.masked_invalid(dens),
        cmap="magma",
        alpha=0.65,
        extent=(0, w, h, 0),
        interpolation="bilinear",
        vmin=0,
        vmax=float(finite.max()) if finite.size and finite.max() > 0 else 1.0,
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="crypts / mm² tissue")
    ax.set_title(f"Crypt density (Gaussian σ = {DENSITY_SIGMA_UM:.0f} µm)", fontsize=10)
    ax.set_axis_off()
    _save(fig, slide_dir / "density.png")

    fig = _figure(8.0, 3.0)
    for ax, key, label in zip(
        fig.subplots(1, 2), ("area_um2", "nn_distance_um"), ("area (µm²)", "nearest-neighbour distance (µm)")
    ):
        every = np.asarray([v for v in groups.get("all", {}).get(key, []) if v is not None], np.float64)
        every = every[np.isfinite(every)]
        if not every.size:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        else:
            nb = min(40, max(5, int(np.sqrt(every.size))))
            lo, hi = float(every.min()), float(every.max())
            if key == "area_um2" and lo > 0 and hi > 4 * lo:  # sizes span decades: log bins
                bins = np.geomspace(lo, hi * 1.0001, nb + 1)
                ax.set_xscale("log")
            else:
                bins = np.histogram_bin_edges(every, bins=nb)
            ax.hist(every, bins=bins, color="0.8", label=f"all (n = {every.size})")
            for name, vals in groups.items():
                if name == "all":
                    continue
                v = np.asarray([x for x in vals.get(key, []) if x is not None], np.float64)
                v = v[np.isfinite(v)]
                if v.size:
                    ax.hist(v, bins=bins, histtype="step", lw=1.6, color=_colour(name, type_info), label=name)
            ax.legend(fontsize=7, frameon=False)
        ax.set_xlabel(label)
        ax.set_ylabel("crypts")
    _save(fig, slide_dir / "histograms.png")


def _colour(name: str, type_info: TypeInfo) -> tuple[float, float, float]:
    rgb = UNTYPED_COLOUR
    for t in range(1, len(type_info)):
        if type_info.name(t) == name:
            rgb = type_info.color(t)
    return tuple(c / 255 for c in rgb)  # type: ignore[return-value]


def read_slide_statistics(slide_dir: Path) -> dict[str, Any] | None:
    """``morphometry.json`` of a finished slide, or None (failed slide, or one from an older version)."""
    try:
        return json.loads((Path(slide_dir) / "morphometry.json").read_text())
    except (OSError, ValueError):
        return None


def _data_uri(path: Path) -> str | None:
    """An image file as a data: URI (the report must open from disk, alone)."""
    if not path.is_file():
        return None
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _overview_uri(slide_dir: Path) -> str | None:
    """overview.jpg, or for slides merged before it existed, a shrunk thumbnail.png."""
    if (slide_dir / OVERVIEW_FILE).is_file():
        return _data_uri(slide_dir / OVERVIEW_FILE)
    img = cv2.imread(str(slide_dir / "thumbnail.png"), cv2.IMREAD_COLOR)
    if img is None:
        return None
    small, _ = report_canvas(img)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return html.escape(str(v))


def _quart(st: Mapping[str, Any] | None, key: str) -> str:
    q = (st or {}).get(key) or {}
    if q.get("median") is None:
        return "–"
    return f"{q['median']:,.1f} <span class=iqr>[{q['q1']:,.1f}–{q['q3']:,.1f}]</span>"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.err{color:#b00020}.ok{color:#1b7f3b}.iqr{color:#777;font-size:12px}.muted{color:#777}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.figs figure{margin:0;
flex:1 1 340px;max-width:580px}.figs figure.wide{flex:2 1 600px;max-width:840px}
.figs img{max-width:100%;border:1px solid #ddd}section{page-break-inside:avoid}
"""


def _slide_section(res: Any, slide_dir: Path, stats: dict | None, type_info: TypeInfo, nr_types: int) -> str:
    name = html.escape(res.slide)
    out = [f'<section id="{name}"><h2>{name}</h2>']
    if res.status != "ok":
        out.append(f'<p class="err">{html.escape(res.status)}</p></section>')
        return "".join(out)
    groups = (stats or {}).get("groups", {})
    area = res.tissue_area_mm2
    out.append(
        f"<p>{res.total:,} crypts on {area:,.2f} mm² of tissue"
        + (f" ({res.total / area:,.1f} per mm²)" if area > 0 else "")
        + f"; {res.seconds:,.0f} s.</p>"
    )
    out.append(
        "<table><tr><th>group</th><th>crypts</th><th>per mm²</th><th>area µm², median [IQR]</th>"
        "<th>nearest neighbour µm, median [IQR]</th></tr>"
    )
    for g in ["all", *count_columns(type_info, nr_types)]:
        st = groups.get(g, {"count": 0})
        n = int(st.get("count", 0))
        dens = f"{n / area:,.1f}" if area > 0 else "–"
        out.append(
            f"<tr><td>{html.escape(g)}</td><td>{n:,}</td><td>{dens}</td>"
            f"<td>{_quart(st, 'area_um2')}</td><td>{_quart(st, 'nn_distance_um')}</td></tr>"
        )
    out.append("</table><div class=figs>")
    images = [
        (_overview_uri(slide_dir), "outlines (colour = type)", ""),
        (_data_uri(slide_dir / "density.png"), "crypt density per mm² of tissue", ""),
        (_data_uri(slide_dir / "histograms.png"), "size and spacing", " class=wide"),
    ]
    for uri, cap, cls in images:
        if uri:
            out.append(
                f'<figure{cls}><img alt="{name}: {cap}" src="{uri}"><figcaption class=muted>{cap}'
                "</figcaption></figure>"
            )
    if stats is None:
        out.append("<p class=muted>no morphometry for this slide (processed by an older version)</p>")
    out.append("</div></section>")
    return "".join(out)


def report_html(
    out_dir: Path, results: Sequence[Any], type_info: TypeInfo, nr_types: int, title: str = "hovercrypt run"
) -> str:
    """The report as one HTML string (see the module docstring)."""
    cols = count_columns(type_info, nr_types)
    n_ok = sum(r.status == "ok" for r in results)
    head = ["slide", *cols, "total", "tissue mm²", "crypts / mm²", "status"]
    rows = []
    sections = []
    for r in results:
        name = html.escape(r.slide)
        link = f'<a href="#{name}">{name}</a>'
        if r.status != "ok":
            cells = [link, *[""] * (len(head) - 2), f'<span class="err">{html.escape(r.status)}</span>']
        else:
            counts = named_counts({int(k): v for k, v in r.types.items()}, type_info, nr_types)
            dens = r.total / r.tissue_area_mm2 if r.tissue_area_mm2 > 0 else None
            cells = [
                link,
                *(f"{counts.get(c, 0):,}" for c in cols),
                f"{r.total:,}",
                _fmt(r.tissue_area_mm2, 2),
                _fmt(dens, 1),
                '<span class="ok">ok</span>',
            ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        sections.append(
            _slide_section(
                r, out_dir / r.slide, read_slide_statistics(out_dir / r.slide), type_info, nr_types
            )
        )
    legend = " ".join(
        f'<span style="color:rgb{tuple(type_info.color(t))}">■</span> {html.escape(type_info.name(t))}'
        for t in range(1, len(type_info))
    )
    legend += f' <span style="color:rgb{UNTYPED_COLOUR}">■</span> {UNTYPED_COLUMN}'
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=muted>{len(results)} slide(s), {n_ok} ok, "
        f"{len(results) - n_ok} failed; written {time.strftime('%Y-%m-%d %H:%M')}. Outline colours: "
        f"{legend}. Per-crypt values: each slide's crypts.csv; per slide: summary.csv.</p>"
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(
    path: Path, out_dir: Path, results: Sequence[Any], type_info: TypeInfo, nr_types: int
) -> None:
    atomic_write_text(path, report_html(Path(out_dir), results, type_info, nr_types, title=_title(out_dir)))


def _title(out_dir: Path) -> str:
    return f"hovercrypt report: {Path(out_dir).resolve().name}"
