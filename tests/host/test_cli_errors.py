"""The exit-code table and the one-line runner."""

import io

import pytest

from fedalign.host.cli_errors import EXIT_CODES, UNEXPECTED_EXIT, exit_code_for, register_exit_code, run_cli
from fedalign.protocol.errors import DataError, FedAlignError, PrivacyBudgetExceeded, PrivacyError, WireFormatError


def test_nearest_class_wins():
    assert exit_code_for(PrivacyBudgetExceeded("x")) == EXIT_CODES[PrivacyBudgetExceeded]
    assert exit_code_for(PrivacyBudgetExceeded("x")) != exit_code_for(PrivacyError("x"))
    assert exit_code_for(WireFormatError("x")) == 7
    assert exit_code_for(ValueError("x")) is None
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # codes tell classes apart


def _run(exc, debug=False):
    err = io.StringIO()

    def boom():
        raise exc

    with pytest.raises(SystemExit) as e:
        run_cli(boom, debug=debug, stream=err)
    return e.value.code, err.getvalue()


def test_one_line_without_debug_traceback_with():
    code, out = _run(DataError("data.jsonl:3: empty\ncaption"))
    assert code == 3 and out == "error: DataError: data.jsonl:3: empty caption\n"
    code, out = _run(DataError("x"), debug=True)
    assert "Traceback" in out and out.strip().endswith("error: DataError: x")
    code, out = _run(RuntimeError("bug"))
    assert code == UNEXPECTED_EXIT and "--debug" in out and len(out.splitlines()) == 1


def test_register_foreign_class():
    class CryptoFailure(Exception):
        pass

    register_exit_code(CryptoFailure, 20)
    try:
        assert _run(CryptoFailure("opaque"))[0] == 20
    finally:
        EXIT_CODES.pop(CryptoFailure)
    with pytest.raises(ValueError):
        register_exit_code(CryptoFailure, 0)
    assert run_cli(lambda: 5) == 5 and issubclass(DataError, FedAlignError)


def test_crypto_errors_have_their_own_codes_without_registration():
    # Before: crypto's errors reached the CLI as "unexpected" (70) unless a test registered them.
    from fedalign.crypto.errors import CryptoError, EncodingOverflow, SecAggAborted, SecureSumUsageError

    codes = [exit_code_for(cls("x")) for cls in (CryptoError, EncodingOverflow, SecAggAborted, SecureSumUsageError)]
    assert None not in codes and UNEXPECTED_EXIT not in codes
    assert len(set(codes)) == len(codes)
