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
    assert set(errors.__all__) == set(_error_classes())


def test_each_error_belongs_to_exactly_one_branch() -> None:
    branches = (errors.LocalError, errors.RemoteError, errors.VerificationError)
    for name, cls in _error_classes().items():
        if cls in (errors.ParleyError, *branches):
            continue
        assert sum(issubclass(cls, b) for b in branches) == 1, name


def test_diagnostics_name_the_culprit_and_the_rule() -> None:
    assert (
        errors.InvalidSignature("bad")
        .diagnostics()
        .startswith("Rejected input from the other party (InvalidSignature)")
    )
    assert errors.WrongPassphrase("no").diagnostics().startswith("Local error (WrongPassphrase)")
    assert errors.InclusionProofError("x").diagnostics().startswith("Verification failed")


def test_equivocation_keeps_its_evidence() -> None:
    err = errors.Equivocation("two logs", evidence={"earlier": "a", "later": "b"})
    assert err.evidence == {"earlier": "a", "later": "b"}
    assert isinstance(err, errors.CheckpointRejected)
    assert err.culprit == "peer"
