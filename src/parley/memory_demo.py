"""An in-memory conversation between two terminals, printed step by step.

``make demo`` runs this: two parties pin each other's cards by fingerprint,
exchange signed and encrypted messages, answer with signed receipts and a
human acknowledgement, witness each other's transcripts, and catch a forged
message and an equivocating checkpoint. No network, no disk.
"""

from __future__ import annotations

from datetime import timedelta

from parley.core.party import AckReceived, MessageReceived, Party
from parley.errors import Equivocation, InvalidSignature
from parley.testing import ManualClock, PartyPair, make_parties


def _say(text: str = "") -> None:
    print(text, flush=True)


def main() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    us, ru = pair.a, pair.b

    _say("== Parley: two terminals in memory ==")
    for party in (us, ru):
        card = party.identity.card
        _say(f"{card.party:10} {card.name}")
        _say(f"{'':10} fingerprint {card.fingerprint}")
    _say("Each duty officer reads the other's fingerprint aloud and pins the card.\n")

    clock.advance(timedelta(minutes=1))
    notice = us.send_text(
        ["RU-GS"],
        "Notification: scheduled test launch from Vandenberg, window 0600-0900Z.",
        operator="maj.smith",
        precedence="FLASH",
    )
    _say(f"US-EUCOM -> RU-GS  FLASH  seq {notice.seq}  envelope {notice.envelope_id}")
    _say(f"  {len(notice.raw)} bytes: Ed25519-signed DSSE, HPKE ML-KEM-768+X25519 per reader")
    events, accepted = pair.deliver(notice, us)
    message = next(e for e in events if isinstance(e, MessageReceived))
    _say(f"RU-GS opened it: {message.envelope.content.body['text']!r}")
    receipt = accepted.receipt
    _say(
        f"US-EUCOM holds RU-GS's signed receipt: all of seq 1..{receipt.through_seq}, "
        f"envelope at index {receipt.log_index} of RU-GS's log (checkpoint size "
        f"{receipt.checkpoint.size}, inclusion proof of {len(receipt.inclusion)} hashes)\n"
    )

    clock.advance(timedelta(minutes=3))
    ack = ru.acknowledge(notice.envelope_id, operator="col.ivanov")
    events, _ = pair.deliver(ack, ru)
    for event in events:
        if isinstance(event, AckReceived):
            _say(f"Human acknowledgement: {event.operator} of {event.by} has read the notice")

    reply = ru.send_text(
        ["US-EUCOM"],
        "Уведомление получено. Просим подтвердить район падения.",
        operator="col.ivanov",
        precedence="IMMEDIATE",
        lang="ru",
    )
    events, _ = pair.deliver(reply, ru)
    text = next(e for e in events if isinstance(e, MessageReceived)).envelope.content
    _say(f"RU-GS -> US-EUCOM  IMMEDIATE  [{text.lang}] {text.body['text']}")
    _say("  (shown as written; any translation would be marked as such and never signed)\n")

    for i in range(20):
        clock.advance(timedelta(seconds=30))
        pair.deliver(us.send_text(["RU-GS"], f"Hourly link test {i}", operator="watch"), us)
        pair.deliver(ru.send_text(["US-EUCOM"], f"Проверка связи {i}", operator="watch"), ru)
    us_size, ru_size = pair.witness_both()
    _say(f"Transcripts witnessed: RU-GS cosigned US-EUCOM's checkpoint of {us_size} entries,")
    _say(f"US-EUCOM cosigned RU-GS's checkpoint of {ru_size} entries (Ed25519 + ML-DSA-65).\n")

    _say("== A hostile peer ==")
    impostor = make_parties([("US-EUCOM", "Impostor"), ("RU-GS", "x")], clock)["US-EUCOM"]
    impostor.add_peer(ru.identity.card, ru.identity.card.fingerprint)
    forged = impostor.send_text(["RU-GS"], "Stand down.", operator="maj.smith")
    try:
        ru.receive_envelope(forged.raw)
    except InvalidSignature as exc:
        _say(f"Forged message refused: {exc.diagnostics()}")

    cheat = Party(us.identity, clock=clock)
    cheat.add_peer(ru.identity.card, ru.identity.card.fingerprint)
    for i in range(us_size + 1):
        cheat.send_text(["RU-GS"], f"rewritten {i}", operator="maj.smith")
    try:
        ru.witness(
            cheat.offer_checkpoint(ru.checkpoint_request("US-EUCOM")), leaves=cheat.log_leaves
        )
    except Equivocation as exc:
        _say(f"Rewritten history refused: {exc.diagnostics()}")
        _say(f"  evidence kept: {', '.join(sorted(exc.evidence))} signed notes")
    _say(f"\nRU-GS transcript: {ru.transcript.size} entries; evidence held: {len(ru.evidence)}")


if __name__ == "__main__":
    main()
