"""`audit verify` names the first bad entry (every one-byte edit, truncation, deleted newest entries
with a witnessed head); the DP statement's ε is recomputed by dp_accounting and a disagreement
over 2% is flagged; the report renders."""

from __future__ import annotations

import json

import pytest

from fedalign.compliance.audit import dp_statement, ledger_head, read_entries, summarize, verify_ledger
from fedalign.compliance.audit_report import render_html, render_json, render_text
from fedalign.compliance.ledger import Ledger
from fedalign.silo.privacy import PrivacyAccountant, RoundCharge


def _ledger(tmp_path, n=5):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    led.append("run_start", {"role": "silo", "policy": None, "policy_sha256": None,
                             "settings": {"scheme": "secagg"}}, now=1.0)
    for i in range(n - 1):
        led.append("release", {"round": i, "phase": 0, "instance": 7 + i, "scheme": "secagg",
                               "participants": ["a", "b", "c"], "threshold": 2, "shapes": {"w": [2, 3]},
                               "payload_kind": ["MaskedInput"], "bytes": 24}, now=2.0 + i)
    return p


def _line_of(data: bytes, pos: int) -> int:
    return data[:pos].count(b"\n")


def test_every_one_byte_edit_is_caught_and_the_entry_named(tmp_path):
    p = _ledger(tmp_path)
    good = p.read_bytes()
    head = ledger_head(p)
    assert verify_ledger(p, witnessed=[head]).ok
    lines = good.split(b"\n")
    starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] = ord("0") if bad[pos] != ord("0") else ord("1")
        p.write_bytes(bytes(bad))
        res = verify_ledger(p, witnessed=[head])
        assert not res.ok, pos
        j = _line_of(good, pos)
        in_prev = good.find(b'"prev":"', starts[j]) + 8 <= pos < starts[j] + len(lines[j])
        assert res.first_bad == j or (in_prev and res.first_bad == j - 1), (pos, j, res.line())
    p.write_bytes(good)
    assert verify_ledger(p).ok


def test_truncation_and_deleted_newest_entries(tmp_path):
    p = _ledger(tmp_path)
    good = p.read_bytes()
    head = ledger_head(p)
    p.write_bytes(good[:-10])  # cut mid-line
    res = verify_ledger(p)
    assert not res.ok and res.first_bad == 4 and "truncated" in res.reason
    # deleting the last entry leaves a valid chain: only a witnessed head catches it
    p.write_bytes(good[: good.rstrip(b"\n").rfind(b"\n") + 1])
    assert verify_ledger(p).ok
    res = verify_ledger(p, witnessed=[head])
    assert not res.ok and res.first_bad == 4 and "deleted" in res.reason
    # deleting a middle entry breaks the chain at once
    lines = good.splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2] + lines[3:]))
    res = verify_ledger(p)
    assert not res.ok and res.first_bad == 2 and "seq" in res.reason


def _dp_ledger(tmp_path, accountant="rdp"):
    led = Ledger(tmp_path / "ledger.jsonl")
    acc = PrivacyAccountant(8.0, 1e-5, accountant=accountant, ledger=led)
    for pass_index, shard in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        acc.charge(RoundCharge(1.1, 32 / 256 if shard != 2 else 32 / 200, 8, pass_index, shard, 256), now=1.0)
    return led.path, acc


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_equals_dp_accounting_within_two_percent(tmp_path, accountant):
    path, acc = _dp_ledger(tmp_path, accountant)
    dp = dp_statement(read_entries(path))
    assert dp["epsilon"] == pytest.approx(acc.spent)
    ind = dp["independent"]
    assert ind["compared_with"] == ("rdp" if accountant == "rdp" else "pld")
    assert ind["relative_difference"] < 0.02 and ind["agrees"]
    assert [m["sample_rate"] for m in dp["mechanisms_per_pass"]] == [32 / 200, 32 / 256]  # worst shard per pass
    assert dp["gdp_mu"] > 0 and dp["zcdp_rho"] == pytest.approx(16 / (2 * 1.1**2))


def test_an_understated_epsilon_is_flagged(tmp_path):
    path, _ = _dp_ledger(tmp_path)
    entries = read_entries(path)
    entries[-1]["epsilon_spent"] *= 0.95  # a ledger claiming 5% less than its mechanism costs
    dp = dp_statement(entries)
    assert not dp["independent"]["agrees"] and dp["independent"]["relative_difference"] > 0.02


def test_report_renders_text_json_and_self_contained_html(tmp_path):
    path, _ = _dp_ledger(tmp_path)
    led = Ledger(path)
    led.append("release", {"round": 0, "phase": 0, "instance": 1, "scheme": "secagg", "participants": ["a", "b", "c"],
                           "threshold": 2, "shapes": {"w": [2, 3]}, "payload_kind": ["MaskedInput"], "bytes": 24},
               now=3.0)
    s = summarize(read_entries(path), verify=verify_ledger(path))
    text = render_text(s)
    assert "DP statement" in text and "dp_accounting" in text and "agrees" in text
    assert json.loads(render_json(s))["dp"]["independent"]["agrees"] is True
    page = render_html(s)
    assert "<svg" in page and "budget 8" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "unit of privacy" in page and "rho-zCDP" in page and "mu-GDP" in page


def test_each_threat_model_summary_points_at_its_security_md_section():
    from pathlib import Path

    from fedalign.compliance.audit import threat_model
    from fedalign.crypto.schemes import SCHEMES

    security = (Path(__file__).resolve().parents[2] / "SECURITY.md").read_text()
    assert set(SCHEMES) == {"secagg", "ckks", "plain"}
    for mode in SCHEMES:
        assert f"## Secure sum: mode `{mode}`" in security
        assert f"SECURITY.md, mode {mode}" in threat_model(mode)
    assert "Local training" in threat_model("local") and threat_model("nonsense") == "unknown mode"
