"""Auditing a ledger, shared by ``silo audit`` and ``aggregator audit``.

- :func:`verify_ledger` walks the hash chain and names the first bad entry (edited, reordered,
  inserted, truncated mid-line); given witnessed heads (``seq:sha256`` of an entry another party
  saw) it also catches deleted newest entries, which a hash chain alone cannot.
- :func:`summarize` reads a verified ledger into what ``show`` and ``report`` print: settings
  against the site policy, ε over rounds against the budget, what left per round, transport
  security and the threat model of the chosen mode.
- :func:`dp_statement` recomputes ε from the recorded mechanism with an independent accountant
  (Google's ``dp_accounting``: RDP and PLD) and flags a disagreement over 2 %.

Entry kinds written by the runtimes (besides the ledger's own ``seq/time/kind/prev``)::

    run_start       first entry of a run: role, policy (+ sha256), settings, transport
    privacy_charge  silo: one round's DP mechanism (σ, q, steps, pass, shard) and ε spent after it
    release         silo: an input left for a secure sum (round, phase, scheme, kinds, shapes, bytes)
    refusal         silo: a RoundStart/SumStart the silo refused, and why
    round           silo, local mode: one local round
    round_committed aggregator: a committed round (survivors, dropouts, ε reported, bytes)
    run_end         end of a run: reason, rounds, what was written out

Verification is :mod:`fedalign.compliance.verifier`'s one verifier (:func:`verify_ledger` here only
maps the audit commands' names onto it): the same verdict, the same first bad entry, the same
handling of a torn last line, whichever entry point an auditor uses.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedalign.compliance.entries import LedgerHead, _committed_lines, _is_hex
from fedalign.compliance.verifier import VerifyResult
from fedalign.compliance.verifier import verify_ledger as _verify

__all__ = [
    "VerifyResult",
    "parse_head",
    "ledger_head",
    "verify_ledger",
    "read_entries",
    "pass_mechanisms",
    "independent_epsilon",
    "dp_statement",
    "summarize",
    "threat_model",
    "DISAGREEMENT",
]

DISAGREEMENT = 0.02  # ours vs the independent accountant, relative


# ---------------------------------------------------------------------------- verify
def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:SHA256`` (as ``verify`` prints it) -> (seq, hex)."""
    seq, sep, digest = text.partition(":")
    digest = digest.removeprefix("sha256:")
    if not sep or not seq.strip().isdigit() or len(digest) != 64 or not _is_hex(digest):
        raise ValueError(f"head {text!r}: expected SEQ:SHA256 (as `audit verify` prints it)")
    return int(seq), digest.lower()


def ledger_head(path: str | Path) -> tuple[int, str] | None:
    """(seq, sha256) of the last committed entry, for another party to witness."""
    lines = _committed_lines(Path(path))
    return (len(lines) - 1, hashlib.sha256(lines[-1]).hexdigest()) if lines else None


def verify_ledger(path: str | Path, *, witnessed: Iterable[tuple[int, str] | LedgerHead] = (),
                  public_key: bytes | None = None, key_source: str | None = None,
                  peer_heads: Iterable[LedgerHead] = (), allow_torn_tail: bool = False,
                  **tail: Any) -> VerifyResult:
    """:func:`fedalign.compliance.verifier.verify_ledger`, the one verifier, with the audit commands' names:
    ``witnessed`` are heads the auditor recorded (``--head``), ``peer_heads`` heads a peer's ledger
    recorded (``--witness-ledger``; with ``public_key`` their signatures are checked too); ``tail``
    passes ``owner``, ``peer_key``, ``receipted`` and ``allow_unwitnessed_tail`` on."""
    return _verify(path, public_key=public_key, key_source=key_source, witnessed_heads=peer_heads,
                   recorded_heads=witnessed, allow_torn_tail=allow_torn_tail, **tail)


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every committed entry as a dict (call :func:`verify_ledger` first); a torn last line is not one."""
    return [json.loads(x) for x in _committed_lines(Path(path))]


# ---------------------------------------------------------------------------- DP
def pass_mechanisms(charges: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, int]]:
    """Per pass over the data, the mechanism every record of that pass is covered by.

    Shards of one pass are disjoint (parallel composition): a record is in exactly one shard,
    so a pass costs at most what the dominating (smallest σ, largest q, most steps) shard costs;
    passes compose. This mirrors the silo's accountant, which the independent check then tests.
    """
    passes: dict[int, tuple[float, float, int]] = {}
    for c in charges:
        new = (float(c["noise_multiplier"]), float(c["sample_rate"]), int(c["steps"]))
        cur = passes.get(int(c.get("pass_index", 0)))
        passes[int(c.get("pass_index", 0))] = new if cur is None else (
            min(cur[0], new[0]), max(cur[1], new[1]), max(cur[2], new[2]))
    return [passes[k] for k in sorted(passes)]


def independent_epsilon(mechanisms: Sequence[tuple[float, float, int]], delta: float) -> dict[str, float]:
    """ε of the composed mechanisms by Google's dp_accounting: RDP and PLD (both Poisson-subsampled Gaussian)."""
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    def event():
        return dpa.ComposedDpEvent([
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)), t)
            for s, q, t in mechanisms])

    import logging

    absl = logging.getLogger("absl")  # dp_accounting logs each RDP order it cannot evaluate; ε is unaffected
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        r = rdp.RdpAccountant()
        r.compose(event())
        eps_rdp = float(r.get_epsilon(delta))
    finally:
        absl.setLevel(level)
    p = pld.PLDAccountant(value_discretization_interval=1e-3)
    p.compose(event())
    return {"rdp": eps_rdp, "pld": float(p.get_epsilon(delta))}


def _gdp_mu(mechanisms: Sequence[tuple[float, float, int]]) -> float:
    """μ-GDP by the central limit theorem for Poisson-subsampled Gaussian (Bu et al. 2020), composed."""
    return math.sqrt(sum((q * math.sqrt(t * (math.exp(1 / s**2) - 1))) ** 2 for s, q, t in mechanisms))


def _zcdp_rho(mechanisms: Sequence[tuple[float, float, int]]) -> float:
    """ρ-zCDP of the same steps without subsampling amplification: Σ steps / (2σ²) (an upper bound)."""
    return sum(t / (2 * s**2) for s, _, t in mechanisms)


def dp_statement(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The DP statement of a silo's ledger, with ε recomputed independently; None without DP charges."""
    charges = [e for e in entries if e["kind"] == "privacy_charge"]
    if not charges:
        return None
    last = charges[-1]
    delta, accountant = float(last["delta"]), str(last["accountant"])
    mechs = pass_mechanisms(charges)
    ours = float(last["epsilon_spent"])
    ind = independent_epsilon(mechs, delta)
    same = "rdp" if accountant == "rdp" else "pld"
    diff = abs(ours - ind[same]) / max(ind[same], 1e-12)
    sizes = sorted({int(c.get("shard_size", 0)) for c in charges})
    return {
        "unit": "one record (one image-caption pair) of the silo's training data",
        "adjacency": "add/remove one record (Poisson sampling; Opacus' and dp_accounting's RDP/PLD analyses)",
        "mechanism": "DP-SGD on the projector (Opacus): per-sample gradient clipping, Gaussian noise, "
                     "Poisson sampling within each round's fresh, disjoint shard",
        "mechanisms_per_pass": [{"pass": i, "noise_multiplier": s, "sample_rate": q, "steps": t}
                                for i, (s, q, t) in enumerate(mechs)],
        "shard_sizes": sizes,
        "charges": len(charges),
        "composition": "parallel over the disjoint shards of one pass; sequential over passes",
        "accountant": f"Opacus {accountant.upper()}",
        "epsilon": ours,
        "delta": delta,
        "epsilon_budget": float(last["epsilon_budget"]),
        "independent": {"accountant": "Google dp_accounting", "rdp": ind["rdp"], "pld": ind["pld"],
                        "compared_with": same, "relative_difference": diff,
                        "agrees": diff <= DISAGREEMENT},
        "gdp_mu": _gdp_mu(mechs),
        "gdp_note": "central-limit approximation (Bu et al. 2020), not a bound",
        "zcdp_rho": _zcdp_rho(mechs),
        "zcdp_note": "without subsampling amplification: an upper bound",
        "covers": "every value the silo sent (secure-sum inputs computed from the DP-trained update: "
                  "post-processing) and the exported projector; not the local train loss, which never leaves",
    }


# ---------------------------------------------------------------------------- threat models
LOCAL_THREAT_MODEL = (
    "Local training (no aggregator): nothing leaves the silo during training; what is written out "
    "(the exported projector, metrics) is covered by the DP statement when DP is on.")


def threat_model(scheme: str) -> str:
    """The report's threat-model sentence: "local", or the scheme's own (crypto's scheme table)."""
    from fedalign.crypto.schemes import SCHEMES

    if scheme == "local":
        return LOCAL_THREAT_MODEL
    spec = SCHEMES.get(scheme)
    return spec.threat_model if spec is not None else "unknown mode"


# ---------------------------------------------------------------------------- summaries
def _runs(entries: Sequence[Mapping[str, Any]]) -> list[int]:
    return [i for i, e in enumerate(entries) if e["kind"] == "run_start"]


def summarize(entries: Sequence[Mapping[str, Any]], *, verify: VerifyResult | None = None) -> dict[str, Any]:
    """What ``show`` and ``report`` present, from a ledger's entries (the last run's settings;
    privacy over the whole ledger, as the accountant composes it)."""
    starts = _runs(entries)
    start = entries[starts[-1]] if starts else None
    run = entries[starts[-1]:] if starts else list(entries)
    role = (start or {}).get("role") or ("aggregator" if any(e["kind"] == "round_committed" for e in entries)
                                         else "silo")
    out: dict[str, Any] = {
        "role": role,
        "ledger": verify.path if verify else None,
        "verify": verify.line() if verify else None,
        "verification": verify.to_dict() if verify else None,  # which checks ran and which did not
        "entries": len(entries),
        "runs": len(starts),
        "policy": (start or {}).get("policy"),
        "policy_sha256": (start or {}).get("policy_sha256"),
        "first_entry_of_run_is_policy": bool(starts),
        "settings": (start or {}).get("settings", {}),
        "transport": (start or {}).get("transport", {}),
        "checks": (start or {}).get("checks", []),
    }
    scheme = out["settings"].get("scheme") or ("local" if (start or {}).get("mode") == "local" else "secagg")
    out["threat_model"] = {"mode": scheme, "text": threat_model(scheme)}
    out["refusals"] = [{k: v for k, v in e.items() if k not in ("v", "prev")} for e in run if e["kind"] == "refusal"]
    end = [e for e in run if e["kind"] == "run_end"]
    out["run_end"] = {k: v for k, v in end[-1].items() if k not in ("v", "prev", "seq")} if end else None
    if role == "silo":
        out["rounds"] = _silo_rounds(entries, run)
        out["dp"] = dp_statement(entries)
    else:
        out["rounds"] = [{"round": e["round"], "survivors": e.get("survivors"), "dropped": e.get("dropped"),
                          "epsilon_reported": e.get("epsilon"), "bytes_received": e.get("payload_bytes", {}),
                          "wire_bytes_received": e.get("wire_up_bytes", {})}
                         for e in run if e["kind"] == "round_committed"]
        out["dp"] = None
    out["against_policy"] = _against_policy(out)
    return out


def _silo_rounds(entries: Sequence[Mapping[str, Any]], run: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per round: ε after the charge that trained it, and every input that left."""
    rows: dict[int, dict[str, Any]] = {}
    eps: float | None = None
    for e in run:
        if e["kind"] == "privacy_charge":
            eps = float(e["epsilon_spent"])
        elif e["kind"] in ("release", "round"):
            r = int(e["round"])
            row = rows.setdefault(r, {"round": r, "epsilon": None, "released": [], "bytes": 0, "trainings": 0})
            if e["kind"] == "round" or (e["kind"] == "release" and e.get("phase") == 0):
                row["trainings"] += 1  # one local training per local round, or per phase-0 input that left
            if row["epsilon"] is None:
                row["epsilon"] = e.get("epsilon", eps) if e["kind"] == "round" else eps
            if e["kind"] == "release":
                row["released"].append({"phase": e["phase"], "scheme": e["scheme"], "kind": e["payload_kind"],
                                        "shapes": e["shapes"], "bytes": e["bytes"],
                                        "participants": len(e["participants"])})
                row["bytes"] += int(e["bytes"])
    return [rows[r] for r in sorted(rows)]


def _against_policy(s: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Settings side by side with the policy clause that bounds them (ok / BROKEN / no clause)."""
    pol, st = s.get("policy") or {}, s.get("settings", {})
    rows: list[dict[str, Any]] = []

    local = s.get("threat_model", {}).get("mode") == "local"

    def row(clause: str, allowed: Any, actual: Any, ok: bool | None) -> None:
        if local and clause.split(".")[0] in ("secure_sum", "aggregator"):
            status = "n/a (local run)"
        else:
            status = "no clause" if ok is None else ("ok" if ok else "BROKEN")
        rows.append({"clause": clause, "policy": allowed, "actual": actual, "status": status})

    ss = pol.get("secure_sum", {})
    row("secure_sum.schemes", ss.get("schemes"), st.get("scheme"),
        None if "schemes" not in ss else st.get("scheme") in ss["schemes"])
    row("secure_sum.min_silos", ss.get("min_silos"), st.get("min_silos"),
        None if "min_silos" not in ss or st.get("min_silos") is None else st["min_silos"] >= ss["min_silos"])
    if s.get("role") == "silo":
        pr, dp = pol.get("privacy", {}), st.get("dp", {})
        row("privacy.dp_required", pr.get("dp_required"), dp.get("enabled"),
            None if "dp_required" not in pr else (dp.get("enabled") or not pr["dp_required"]))
        spent = (s.get("dp") or {}).get("epsilon")
        mx = pr.get("max_epsilon")
        row("privacy.max_epsilon (budget)", mx, dp.get("epsilon"),
            None if mx is None or dp.get("epsilon") is None else dp["epsilon"] <= mx)
        row("privacy.max_epsilon (spent)", mx, spent, None if mx is None or spent is None else spent <= mx)
        row("privacy.max_delta", pr.get("max_delta"), dp.get("delta"),
            None if pr.get("max_delta") is None or dp.get("delta") is None else dp["delta"] <= pr["max_delta"])
        rn = pol.get("run", {})
        trained = sum(r.get("trainings", 0) for r in s.get("rounds", []))  # a retried round id counts again
        row("run.max_rounds", rn.get("max_rounds"), trained,
            None if rn.get("max_rounds") is None else trained <= rn["max_rounds"])
        row("run.max_passes", rn.get("max_passes"), st.get("max_passes"),
            None if rn.get("max_passes") is None or st.get("max_passes") is None else st["max_passes"] <= rn["max_passes"])
        fps = pol.get("aggregator", {}).get("key_fingerprints") or []
        fp = s.get("transport", {}).get("aggregator_key")
        row("aggregator.key_fingerprints", fps or "any", fp, None if not fps else fp in fps)
        rel, end = pol.get("release", {}), s.get("run_end") or {}
        row("release.export", rel.get("export"), end.get("export_written"),
            None if "export" not in rel or end.get("export_written") is None else rel["export"] or not end["export_written"])
        row("release.evaluation", rel.get("evaluation"), end.get("evaluation_written"),
            None if "evaluation" not in rel or end.get("evaluation_written") is None
            else rel["evaluation"] or not end["evaluation_written"])
        row("retention.raw_updates", pol.get("retention", {}).get("raw_updates"), end.get("raw_updates"),
            None if not pol or end.get("raw_updates") is None else True)
    else:
        allowed = pol.get("silos", {}).get("allowed") or []
        roster = st.get("roster", [])
        row("silos.allowed", allowed or "the roster", roster, None if not allowed else set(roster) <= set(allowed))
    return rows


def entry_fields(e: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("v", "prev")}

