"""Rendering an audit summary (:func:`fedalign.compliance.audit.summarize`): terminal tables, JSON
for machines, and one self-contained HTML file (inline SVG plot of ε and bytes sent over rounds,
the DP statement, no external resources)."""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

__all__ = ["render_text", "render_json", "render_html"]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "[]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def _shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    return " ".join(f"{k}[{'x'.join(str(d) for d in v) or 'scalar'}]" for k, v in shapes.items())


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(out)


def _dp_lines(dp: Mapping[str, Any] | None) -> list[str]:
    if dp is None:
        return ["no DP charges in this ledger: the silo trained without differential privacy"]
    ind = dp["independent"]
    flag = "agrees" if ind["agrees"] else "DISAGREES (over 2%)"
    return [
        f"unit of privacy: {dp['unit']}",
        f"adjacency: {dp['adjacency']}",
        f"mechanism: {dp['mechanism']}",
        "per pass: " + "; ".join(f"pass {m['pass']}: sigma {m['noise_multiplier']:g}, q {m['sample_rate']:.4g}, "
                                 f"{m['steps']} steps" for m in dp["mechanisms_per_pass"]),
        f"composition: {dp['composition']}",
        f"accountant: {dp['accountant']}: epsilon {dp['epsilon']:.4f} at delta {dp['delta']:g} "
        f"(budget {dp['epsilon_budget']:g})",
        f"independent check ({ind['accountant']}): RDP {ind['rdp']:.4f}, PLD {ind['pld']:.4f}; ours vs "
        f"{ind['compared_with'].upper()}: {100 * ind['relative_difference']:.3f}% -> {flag}",
        f"also: mu-GDP {dp['gdp_mu']:.4f} ({dp['gdp_note']}); rho-zCDP {dp['zcdp_rho']:.4g} ({dp['zcdp_note']})",
        f"covers: {dp['covers']}",
    ]


def _checks(s: Mapping[str, Any]) -> list[Mapping[str, str]]:
    v = s.get("verification")
    if not v:
        return [{"check": "ledger", "outcome": "NOT RUN",
                 "detail": "this summary was made without verifying the ledger"}]
    return v["checks"]


def _checks_lines(s: Mapping[str, Any]) -> list[str]:
    """The top of ``show``/``report``: which checks ran on the ledger and which did not."""
    v = s.get("verification") or {}
    verdict = {"intact": "INTACT", "torn_tail": "TORN TAIL", "broken": "BROKEN"}.get(v.get("status"), "NOT VERIFIED")
    if v.get("status") == "torn_tail" and v.get("allow_torn_tail"):
        verdict += " (accepted with --allow-torn-tail: what follows covers the committed entries only)"
    rows = [[c["check"], c["outcome"], c["detail"]] for c in _checks(s)]
    return [f"ledger verification: {verdict}; checks that ran and that did not:",
            _table(["check", "outcome", "detail"], rows)]


def render_text(s: Mapping[str, Any]) -> str:
    """The terminal form of ``show`` / ``report``: which checks ran first, then the tables."""
    out = _checks_lines(s) + ["", f"{s['role']} ledger {s.get('ledger') or ''}", s.get("verify") or "", ""]
    out.append(f"site policy: {s['policy_sha256'] or 'NONE (no site policy was given for this run)'}")
    out.append(_table(["clause", "policy", "actual", "status"],
                      [[r["clause"], r["policy"], r["actual"], r["status"]] for r in s["against_policy"]]))
    t = s.get("transport") or {}
    out += ["", "transport: " + (", ".join(f"{k}={_fmt(v)}" for k, v in t.items()) or "not recorded")]
    out += [f"threat model ({s['threat_model']['mode']}): {s['threat_model']['text']}", ""]
    if s["role"] == "silo":
        out.append("what left this silo, per round (secure-sum inputs only; never data):")
        rows = [[r["round"], r["epsilon"], "; ".join(f"phase {x['phase']} {x['scheme']} {_fmt(x['kind'])} "
                                                       f"{_shapes(x['shapes'])} over {x['participants']} silos"
                                                       for x in r["released"]) or "nothing", r["bytes"]]
                for r in s["rounds"]]
        out.append(_table(["round", "epsilon", "released", "bytes"], rows))
        out += ["", "DP statement:"] + ["  " + x for x in _dp_lines(s.get("dp"))]
    else:
        rows = [[r["round"], r["survivors"], r["dropped"], r["epsilon_reported"],
                 sum((r["bytes_received"] or {}).values())] for r in s["rounds"]]
        out.append(_table(["round", "survivors", "dropped", "epsilon reported", "payload bytes received"], rows))
    if s["refusals"]:
        out += ["", "refusals:"] + [f"  seq {r['seq']}: {r['request']} round {r['round']}: {r['reason']}"
                                    for r in s["refusals"]]
    return "\n".join(out) + "\n"


def render_json(s: Mapping[str, Any]) -> str:
    return json.dumps(s, indent=1, sort_keys=True, default=str)


def _svg_plot(rounds: Sequence[Mapping[str, Any]], budget: float | None) -> str:
    """Two panels: ε after each round (with the budget) and bytes sent per round."""
    w, h, pad = 640, 220, 48
    xs = [r["round"] for r in rounds]
    eps = [r.get("epsilon") or 0.0 for r in rounds]
    byt = [r.get("bytes") or 0 for r in rounds]

    def panel(y0: int, values: Sequence[float], title: str, colour: str, bars: bool, line_at: float | None) -> str:
        top = max([*values, line_at or 0.0, 1e-12]) * 1.1
        n = max(len(values), 1)
        step = (w - 2 * pad) / n
        parts = [f'<text x="{pad}" y="{y0 + 16}" font-size="13" font-weight="bold">{html.escape(title)}</text>',
                 f'<line x1="{pad}" y1="{y0 + h - pad}" x2="{w - pad}" y2="{y0 + h - pad}" stroke="#333"/>',
                 f'<line x1="{pad}" y1="{y0 + 28}" x2="{pad}" y2="{y0 + h - pad}" stroke="#333"/>',
                 f'<text x="{pad - 4}" y="{y0 + 34}" font-size="10" text-anchor="end">{top:.3g}</text>',
                 f'<text x="{pad - 4}" y="{y0 + h - pad}" font-size="10" text-anchor="end">0</text>']

        def y(v: float) -> float:
            return y0 + h - pad - (h - pad - 28) * v / top

        pts = []
        for i, (x, v) in enumerate(zip(xs, values)):
            cx = pad + step * (i + 0.5)
            parts.append(f'<text x="{cx:.1f}" y="{y0 + h - pad + 14}" font-size="10" text-anchor="middle">{x}</text>')
            if bars:
                parts.append(f'<rect x="{cx - step * 0.3:.1f}" y="{y(v):.1f}" width="{step * 0.6:.1f}" '
                             f'height="{y0 + h - pad - y(v):.1f}" fill="{colour}"><title>{v:g}</title></rect>')
            else:
                pts.append(f"{cx:.1f},{y(v):.1f}")
                parts.append(f'<circle cx="{cx:.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{v:.4g}</title></circle>')
        if pts:
            parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if line_at is not None:
            parts.append(f'<line x1="{pad}" y1="{y(line_at):.1f}" x2="{w - pad}" y2="{y(line_at):.1f}" '
                         f'stroke="#c00" stroke-dasharray="5,4"/><text x="{w - pad}" y="{y(line_at) - 4:.1f}" '
                         f'font-size="10" fill="#c00" text-anchor="end">budget {line_at:g}</text>')
        parts.append(f'<text x="{w / 2}" y="{y0 + h - 8}" font-size="10" text-anchor="middle">round</text>')
        return "\n".join(parts)

    body = panel(0, eps, "ε spent after each round", "#1f5fa8", False, budget) + \
        panel(h, [float(b) for b in byt], "bytes sent per round (secure-sum inputs)", "#3a8f4b", True, None)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{2 * h}" '
            f'viewBox="0 0 {w} {2 * h}" font-family="sans-serif" role="img" '
            f'aria-label="epsilon and bytes sent over rounds">{body}</svg>')


def render_html(s: Mapping[str, Any]) -> str:
    """One self-contained HTML page: verification, policy, transport, rounds, plot, DP statement."""
    e = html.escape

    def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(
            f'<td class="{"bad" if _fmt(c) in ("BROKEN", "DISAGREES") else ""}">{e(_fmt(c))}</td>' for c in r)
            + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def outcome_cls(o: str) -> str:
        return "ok" if o == "ok" else ("warn" if o in ("NOT RUN", "TORN (allowed)", "UNWITNESSED (allowed)") else "bad")

    verdict, *_ = _checks_lines(s)
    checks = ("<table class=\"checks\"><tr><th>check</th><th>outcome</th><th>detail</th></tr>" + "".join(
        f'<tr><td>{e(c["check"])}</td><td class="{outcome_cls(c["outcome"])}">{e(c["outcome"])}</td>'
        f'<td>{e(c["detail"])}</td></tr>' for c in _checks(s)) + "</table>")
    parts = [f"<h1>fedalign audit report: {e(s['role'])}</h1>",
             f'<section id="checks"><h2>Which checks ran</h2><p>{e(verdict)}</p>{checks}</section>',
             f"<p><b>Ledger</b> {e(str(s.get('ledger')))}<br><b>Verification</b> {e(s.get('verify') or '')}</p>",
             f"<h2>Settings against the site policy</h2><p>policy {e(s['policy_sha256'] or 'NONE given')}</p>",
             table(["clause", "policy", "actual", "status"],
                   [[r["clause"], r["policy"], r["actual"], r["status"]] for r in s["against_policy"]])]
    t = s.get("transport") or {}
    parts.append("<h2>Transport security</h2>" + table(["item", "value"], [[k, v] for k, v in t.items()]))
    parts.append(f"<h2>Threat model ({e(s['threat_model']['mode'])})</h2><p>{e(s['threat_model']['text'])}</p>")
    if s["role"] == "silo":
        dp = s.get("dp")
        parts.append("<h2>ε and bytes sent over rounds</h2>")
        parts.append(_svg_plot(s["rounds"], dp["epsilon_budget"] if dp else None))
        parts.append("<h2>What left this silo</h2><p>Only secure-sum inputs (masked or encrypted), never data.</p>")
        parts.append(table(["round", "ε after", "phase", "scheme", "kind", "shapes", "bytes", "silos in sum"],
                           [[r["round"], r["epsilon"], x["phase"], x["scheme"], x["kind"], _shapes(x["shapes"]), x["bytes"],
                             x["participants"]] for r in s["rounds"] for x in r["released"]]
                           or [["-", "-", "-", "-", "nothing left", "-", 0, "-"]]))
        parts.append("<h2>Differential-privacy statement</h2><ul>"
                     + "".join(f"<li>{e(x)}</li>" for x in _dp_lines(dp)) + "</ul>")
    else:
        parts.append("<h2>Rounds</h2>" + table(
            ["round", "survivors", "dropped", "ε reported", "payload bytes received"],
            [[r["round"], r["survivors"], r["dropped"], r["epsilon_reported"],
              sum((r["bytes_received"] or {}).values())] for r in s["rounds"]]))
    if s["refusals"]:
        parts.append("<h2>Refusals</h2>" + table(["seq", "request", "round", "reason"],
                                                 [[r["seq"], r["request"], r["round"], r["reason"]]
                                                  for r in s["refusals"]]))
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0;max-width:100%}td,th{border:1px solid #bbb;padding:3px 8px;"
             "font-size:13px;text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#eee}td.bad{color:#fff;background:#c00}"
             "td.warn{background:#fd4;font-weight:bold}td.ok{color:#060}"
             "h2{margin-top:1.4em;border-bottom:1px solid #ddd}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>fedalign audit report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
