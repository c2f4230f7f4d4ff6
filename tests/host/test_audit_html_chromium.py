"""`audit report --html` rendered by headless Chromium: the page's first section is the table of
which checks ran, with signatures "ok" (and the key) when a key was given and "NOT RUN" when not
(issue 26, "Must show"). Skips where /usr/bin/chromium is absent (CI does not install it)."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedalign.crypto.identity import generate_identity
from fedalign.host.audit_cli import make_audit_app
from fedalign.compliance.ledger import Ledger

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian: apt-get install -y "
                                                              "chromium); CI does not install it")


class _Body(HTMLParser):
    """The body's top-level elements in order (tag, id), and each row of table.checks as cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.top, self.rows, self._row, self._cell = 0, [], [], None, None
        self._in_body = self._in_checks = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self._in_body, self.depth = True, 0
            return
        if self._in_body:
            if self.depth == 0:
                self.top.append((tag, a.get("id")))
            self.depth += 1
        if tag == "table" and "checks" in (a.get("class") or "").split():
            self._in_checks = True
        elif self._in_checks and tag == "tr":
            self._row = []
        elif self._in_checks and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if self._in_body and tag != "body":
            self.depth -= 1
        if tag == "table":
            self._in_checks = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _rendered(html: Path, tmp_path: Path) -> _Body:
    res = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "<body>" in res.stdout, res.stderr[-2000:]
    body = _Body()
    body.feed(res.stdout)
    return body


def test_the_rendered_report_opens_with_which_checks_ran(tmp_path):
    me = generate_identity()
    path = tmp_path / "ledger.jsonl"
    led = Ledger(path, identity=me)
    led.append("run_start", {"role": "silo", "policy": None, "policy_sha256": None,
                             "settings": {"scheme": "secagg"}}, now=1.0)
    for i in range(2):
        led.append("release", {"round": i, "phase": 0, "instance": 7 + i, "scheme": "secagg",
                               "participants": ["a", "b", "c"], "threshold": 2, "shapes": {"w": [2, 3]},
                               "payload_kind": ["MaskedInput"], "bytes": 24}, now=2.0 + i)
    app, runner = make_audit_app("silo", lambda config: config), CliRunner()
    want_sig = {"no key": ("NOT RUN", "NOT checked"), "key": ("ok", f"ed25519:{me.public_hex}")}
    for case, extra in (("no key", []), ("key", ["--public-key", me.public_hex])):
        html = tmp_path / f"{case.replace(' ', '_')}.html"
        r = runner.invoke(app, ["report", "--ledger", str(path), *extra, "--html", str(html)])
        assert r.exit_code == 0, r.output
        page = _rendered(html, tmp_path)
        assert page.top[:2] == [("h1", None), ("section", "checks")], page.top[:4]
        rows = {row[0]: row[1:] for row in page.rows}
        assert rows["check"] == ["outcome", "detail"]
        assert rows["hash chain"][0] == "ok" and rows["tail"][0] == "ok", (case, rows)
        assert rows["witnessed heads"][0] == "NOT RUN", (case, rows)
        outcome, detail = want_sig[case]
        assert rows["signatures"][0] == outcome and detail in rows["signatures"][1], (case, rows["signatures"])
