"""The HTML report's zoomable per-step timeline: a parameter-server run's comm.jsonl spans as inline SVG.

    python -c "from parsgd.analysis.html_timeline import timeline_html; from parsgd.analysis.rundirs import \
load_run; print(timeline_html(load_run('runs/ps-p2'))[:200])"

One row per process (the servers, then the workers), one rectangle per span of the steps
timeline.timeline_steps picks (as step_timeline.png), x in milliseconds since the first of them. The
SVG's viewBox is that time range; ZOOM_SCRIPT (inline, no library) zooms it with the mouse wheel
around the pointer, pans it by dragging, and restores it on a double click or the reset button. The
SVG keeps preserveAspectRatio="none", so only time stretches: the process names sit beside it in HTML.
"""
from __future__ import annotations

from html import escape

import numpy as np

from parsgd.analysis.rundirs import Run
from parsgd.analysis.timeline import SPAN_COLORS, timeline_steps

MAX_SPANS = 4000        # rectangles drawn per run at most (the first ones in time): the page stays light
ROW_PX = 28             # height of one process's row, in CSS pixels
OTHER_COLOR = "#999999"  # a span name outside parsgd.ps.protocol.SPANS

ZOOM_SCRIPT = """
(function () {
  function setup(box) {
    var svg = box.querySelector('svg.tl'), label = box.querySelector('.tl-range');
    var full = svg.getAttribute('viewBox').split(' ').map(Number), vb = full.slice(), drag = null;
    function show() {
      svg.setAttribute('viewBox', vb.join(' '));
      label.textContent = vb[0].toFixed(2) + ' ms to ' + (vb[0] + vb[2]).toFixed(2) + ' ms (' +
        (full[2] / vb[2]).toFixed(1) + 'x)';
    }
    function zoom(factor, frac) {
      var w = Math.min(full[2], Math.max(full[2] / 2000, vb[2] * factor));
      var x = vb[0] + frac * (vb[2] - w);
      vb[0] = Math.min(full[0] + full[2] - w, Math.max(full[0], x)); vb[2] = w; show();
    }
    svg.addEventListener('wheel', function (e) {
      e.preventDefault();
      var r = svg.getBoundingClientRect();
      zoom(e.deltaY < 0 ? 0.8 : 1.25, (e.clientX - r.left) / r.width);
    }, {passive: false});
    svg.addEventListener('mousedown', function (e) { drag = {x: e.clientX, x0: vb[0]}; });
    window.addEventListener('mouseup', function () { drag = null; });
    window.addEventListener('mousemove', function (e) {
      if (!drag) return;
      var r = svg.getBoundingClientRect(), x = drag.x0 - (e.clientX - drag.x) / r.width * vb[2];
      vb[0] = Math.min(full[0] + full[2] - vb[2], Math.max(full[0], x)); show();
    });
    svg.addEventListener('dblclick', function () { vb = full.slice(); show(); });
    box.querySelector('.tl-in').addEventListener('click', function () { zoom(0.5, 0.5); });
    box.querySelector('.tl-out').addEventListener('click', function () { zoom(2, 0.5); });
    box.querySelector('.tl-reset').addEventListener('click', function () { vb = full.slice(); show(); });
    show();
  }
  document.querySelectorAll('.timeline').forEach(setup);
})();
"""


def _track_name(role: str, rank: int) -> str:
    return f"{role} {rank}"


def timeline_html(run: Run) -> str:
    """A <div class="timeline"> with the run's zoomable timeline and its legend; "" when the run has no
    comm.jsonl or no span inside a step. Raises RunDirError for a corrupt comm.jsonl."""
    comm = run.comm
    if comm is None or not len(comm):
        return ""
    steps = timeline_steps(comm)
    mask = np.isin(comm.step, steps) & np.isfinite(comm.dur_s) & np.isfinite(comm.t_s)
    if not mask.any():
        return ""
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(comm.t_s[idx], kind="stable")][:MAX_SPANS]
    t0 = float(comm.t_s[idx].min())
    end = float(max(comm.t_s[i] + comm.dur_s[i] for i in idx))
    total_ms = max((end - t0) * 1e3, 1e-3)
    tracks = [t for t in comm.tracks() if any((comm.role[i], comm.rank[i]) == t for i in idx)]
    row = {t: k for k, t in enumerate(tracks)}
    rects = []
    for i in idx:
        k = row[(str(comm.role[i]), int(comm.rank[i]))]
        x, w = (comm.t_s[i] - t0) * 1e3, max(comm.dur_s[i] * 1e3, total_ms / 5000)
        name = str(comm.span[i])
        tip = (f"{comm.role[i]} {comm.rank[i]}, step {comm.step[i]}: {name} {comm.dur_s[i] * 1e3:.3f} ms"
               + (f", {int(comm.bytes[i])} bytes" if comm.bytes[i] else ""))
        rects.append(f'<rect x="{x:.4f}" y="{k * ROW_PX + 3}" width="{w:.4f}" height="{ROW_PX - 6}" '
                     f'fill="{SPAN_COLORS.get(name, OTHER_COLOR)}"><title>{escape(tip)}</title></rect>')
    height = len(tracks) * ROW_PX
    names = "".join(f'<div style="height:{ROW_PX}px;line-height:{ROW_PX}px">{escape(_track_name(*t))}</div>'
                    for t in tracks)
    present = sorted({str(comm.span[i]) for i in idx}, key=lambda s: (list(SPAN_COLORS).index(s) if s in SPAN_COLORS else 99, s))
    legend = " ".join(f'<span class="sw" style="background:{SPAN_COLORS.get(s, OTHER_COLOR)}"></span>{escape(s)}'
                      for s in present)
    shown = f"steps {int(steps[0])} to {int(steps[-1])}" if len(steps) > 1 else f"step {int(steps[0])}"
    cut = f", the first {MAX_SPANS} spans" if mask.sum() > MAX_SPANS else ""
    return (f'<div class="timeline"><p>{escape(run.label)}: {shown}{cut}; wheel to zoom, drag to pan, '
            f'double-click to reset. <button class="tl-in">zoom in</button> <button class="tl-out">zoom out'
            f'</button> <button class="tl-reset">reset</button> <span class="tl-range"></span></p>'
            f'<div class="tl-grid"><div class="tl-names">{names}</div>'
            f'<svg class="tl" viewBox="0 0 {total_ms:.4f} {height}" '
            f'preserveAspectRatio="none" style="height:{height}px">{"".join(rects)}</svg></div>'
            f'<p class="legend">{legend}</p></div>')
