"""The error tree: complete exports, and blame assigned to the right party."""

from __future__ import annotations

import inspect

from parley import errors


def _error_classes() -> dict[str, type[errors.ParleyError]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.ParleyError)
    }


def test_every_error_class_is_exported() -> None:
    functions = {"diagnostic_line", "error_body"}
    assert set(errors.__all__) == set(_error_classes()) | functions


def test_each_error_belongs_to_exactly_one_branch() -> None:
    branches = (errors.LocalError, errors.RemoteError, errors.VerificationError)
    for name, cls in _error_classes().items():
        if cls in (errors.ParleyError, *branches):
            continue
        assert sum(issubclass(cls, b) for b in branches) == 1, name


def test_diagnostics_name_the_culprit_and_the_rule_but_no_class() -> None:
    assert (
        errors.InvalidSignature("bad signature").diagnostics()
        == "rejected input from the other party: bad signature"
    )
    assert errors.WrongPassphrase("wrong passphrase").diagnostics() == "wrong passphrase"
    assert errors.InclusionProofError("x").diagnostics() == "verification failed: x"
    for name, cls in _error_classes().items():
        line = cls("the rule").diagnostics() if cls.__init__ is Exception.__init__ else ""
        assert name not in line


def test_an_error_body_keeps_the_machine_code_and_gives_the_same_line() -> None:
    body = errors.error_body(errors.UsageError("precedence must be FLASH"))
    assert body == {
        "error": "usage_error",
        "culprit": "us",
        "usage": True,
        "message": "precedence must be FLASH",
    }
    assert errors.diagnostic_line(body) == "precedence must be FLASH"
    peer = errors.error_body(errors.InvalidCard("card of X expires before it starts"))
    assert peer["usage"] is False
    assert errors.diagnostic_line(peer) == errors.InvalidCard(peer["message"]).diagnostics()


def test_equivocation_keeps_its_evidence() -> None:
    err = errors.Equivocation("two logs", evidence={"earlier": "a", "later": "b"})
    assert err.evidence == {"earlier": "a", "later": "b"}
    assert isinstance(err, errors.CheckpointRejected)
    assert err.culprit == "peer"
