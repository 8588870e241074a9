"""How big a sealed prisoner-exchange list is, by number of persons, on a channel of three.

    .venv/bin/python -m benchmarks.exchange_list_size

Each person has a Cyrillic name, date of birth, rank, unit and document, as
in a real list; the envelope carries three ciphertexts (two recipients and the
sender's own copy). The limit a terminal accepts is ``Limits().max_body_bytes``.
"""

from __future__ import annotations

from typing import Any

from parley.core.envelope import Limits
from parley.forms import default_registry
from parley.testing import ManualClock, make_parties


def persons(count: int) -> list[dict[str, Any]]:
    return [
        {
            "ref": f"RU-{i:04d}",
            "name": {"full_name": "Кузнецов Алексей Юрьевич", "script": "ru"},
            "date_of_birth": "1990-01-15",
            "rank": "младший сержант",
            "unit": "в/ч 12345",
            "document": {"type": "military_id", "number": f"АА {i:06d}"},
            "status": "prisoner_of_war",
        }
        for i in range(1, count + 1)
    ]


def main() -> None:
    registry = default_registry()
    parties = make_parties(
        [("RU-GS", "RU"), ("UA-GS", "UA"), ("AE-MEDIATOR", "Mediator")], ManualClock()
    )
    ru = parties["RU-GS"]
    ru.forms = registry
    limit = Limits().max_body_bytes
    print(f"envelope limit: {limit:,} bytes")
    for count in (100, 500, 1000, 2000):
        data = {"exchange_id": "PX-SIZE", "revision": 1, "persons": persons(count)}
        body = registry.body("PRISONER_EXCHANGE_LIST", data)
        out = ru.send(
            ["UA-GS", "AE-MEDIATOR"],
            kind="form",
            body={"form": body},
            operator="bench",
            channel="EXCHANGE",
        )
        print(f"{count:5} persons: {len(out.raw):>10,} bytes ({len(out.raw) / limit:.0%} of it)")


if __name__ == "__main__":
    main()
