"""Two parties hold a whole conversation in memory, then face a hostile peer."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from parley import merkle
from parley.core.party import (
    AckReceived,
    DuplicateReceived,
    GapDetected,
    MessageReceived,
    Party,
)
from parley.core.transcript import EntryType, split_entry
from parley.errors import (
    CheckpointRejected,
    CheckpointRollback,
    Equivocation,
    InvalidReceipt,
    InvalidSignature,
    RemoteError,
    ReplayedEnvelope,
    StaleOffer,
    UnknownSender,
)
from parley.testing import ManualClock, PartyPair, make_parties
from tests.scale import scaled

MESSAGES = scaled(1000, least=200)
"""Messages each way in the long conversation (1,000; fewer for ``make check``)."""


def _fork(party: Party, clock: ManualClock) -> Party:
    """A second Party with the same keys and peers but its own history: a cheat."""
    twin = Party(party.identity, clock=clock)
    for card in party.peers.values():
        twin.add_peer(card, card.fingerprint)
    return twin


@pytest.fixture(scope="module")
def conversation() -> tuple[PartyPair, ManualClock, list[str], list[str]]:
    """``MESSAGES`` (1,000) each way, receipts for all, checkpoints cross-witnessed."""
    clock = ManualClock()
    pair = PartyPair.create(clock)
    a_ids, b_ids = [], []
    for i in range(MESSAGES):
        clock.advance(timedelta(seconds=1))
        out_a = pair.a.send_text(["RU-GS"], f"US message {i}", operator="maj.smith")
        events, accepted = pair.deliver(out_a, pair.a)
        assert isinstance(events[0], MessageReceived)
        assert accepted.receipt.through_seq == i + 1
        a_ids.append(out_a.envelope_id)
        out_b = pair.b.send_text(["US-EUCOM"], f"Сообщение {i}", operator="col.petrov", lang="ru")
        pair.deliver(out_b, pair.b)
        b_ids.append(out_b.envelope_id)
        if i % 100 == 99:
            pair.witness_both()
    return pair, clock, a_ids, b_ids


def test_every_message_arrives_once_in_order_with_a_receipt(
    conversation: tuple[PartyPair, ManualClock, list[str], list[str]],
) -> None:
    pair, _, a_ids, b_ids = conversation
    received_by_b = [e.envelope for e in pair.events["RU-GS"] if isinstance(e, MessageReceived)]
    assert [e.header.id for e in received_by_b] == a_ids
    assert [e.content.body["text"] for e in received_by_b[:2]] == ["US message 0", "US message 1"]
    assert [e.header.seq for e in received_by_b] == list(range(1, MESSAGES + 1))
    channel = received_by_b[0].header.channel
    assert pair.a.receipted_through(channel, "RU-GS") == MESSAGES
    assert pair.b.receipted_through(channel, "US-EUCOM") == MESSAGES
    assert all(pair.b.receipts_for(i)["US-EUCOM"] >= 1 for i in b_ids)


def test_transcripts_hold_every_envelope_and_receipt_and_are_cross_witnessed(
    conversation: tuple[PartyPair, ManualClock, list[str], list[str]],
) -> None:
    pair, _, _, _ = conversation
    for party in (pair.a, pair.b):
        kinds = [split_entry(party.transcript.entry(i))[0] for i in range(party.transcript.size)]
        # MESSAGES sent + MESSAGES received envelopes; as many receipts issued and accepted.
        assert kinds.count(EntryType.ENVELOPE) == 2 * MESSAGES
        assert kinds.count(EntryType.RECEIPT) == 2 * MESSAGES
        leaves = [merkle.leaf_hash(party.transcript.entry(i)) for i in range(party.transcript.size)]
        assert merkle.root(leaves) == party.transcript.root()
    # Each side holds the other's cosignature on one of its checkpoints.
    cosigned_a = pair.a.last_cosigned_by("RU-GS")
    cosigned_b = pair.b.last_cosigned_by("US-EUCOM")
    assert cosigned_a is not None
    assert cosigned_b is not None
    assert cosigned_a.size > 4 * MESSAGES - 100
    assert cosigned_b.size > 4 * MESSAGES - 100
    assert pair.b.last_cosigned_of("US-EUCOM") == cosigned_a


def test_a_forged_message_is_refused_and_leaves_no_trace(
    conversation: tuple[PartyPair, ManualClock, list[str], list[str]],
) -> None:
    pair, clock, _, _ = conversation
    # Mallory has her own keys but claims to be US-EUCOM.
    mallory = make_parties([("US-EUCOM", "Impostor"), ("RU-GS", "x")], clock)["US-EUCOM"]
    mallory.add_peer(pair.b.identity.card, pair.b.identity.card.fingerprint)
    forged = mallory.send_text(["RU-GS"], "Stand down all forces", operator="maj.smith")
    size = pair.b.transcript.size
    with pytest.raises(InvalidSignature, match="US-EUCOM"):
        pair.b.receive_envelope(forged.raw)
    # A transplanted signature: US-EUCOM's real signature on Mallory's payload.
    genuine = pair.a.send_text(["RU-GS"], "genuine", operator="maj.smith")
    g, f = genuine.raw.decode(), forged.raw.decode()
    transplanted = (f[: f.index('"signatures"')] + g[g.index('"signatures"') :]).encode()
    with pytest.raises(InvalidSignature):
        pair.b.receive_envelope(transplanted)
    assert pair.b.transcript.size == size
    pair.deliver(genuine, pair.a)


def test_a_replayed_message_is_logged_once_and_receipted_again(
    conversation: tuple[PartyPair, ManualClock, list[str], list[str]],
) -> None:
    pair, clock, _, _ = conversation
    out = pair.a.send_text(["RU-GS"], "replay me", operator="maj.smith")
    pair.deliver(out, pair.a)
    size = pair.b.transcript.size
    again = pair.b.receive_envelope(out.raw)
    assert again.events == (DuplicateReceived(out.envelope_id, "US-EUCOM"),)
    assert pair.b.transcript.size == size
    assert pair.a.receive_receipt(again.receipt).receipt.envelope_id == out.envelope_id
    # The same sequence number under a new envelope id is a replay too.
    cheat = _fork(pair.a, clock)
    for _ in range(out.seq):
        reused = cheat.send_text(["RU-GS"], "rewritten history", operator="maj.smith")
    assert reused.seq == out.seq
    with pytest.raises(ReplayedEnvelope, match=f"sequence number {out.seq}"):
        pair.b.receive_envelope(reused.raw)
    # A receipt for a message US-EUCOM never sent (only its fork did) is refused.
    fork_receiver = _fork(pair.b, clock)
    receipt = fork_receiver.receive_envelope(reused.raw).receipt
    with pytest.raises(InvalidReceipt, match="never sent"):
        pair.a.receive_receipt(receipt)


def test_a_dropped_message_is_detected_as_a_gap_and_caught_up() -> None:
    pair = PartyPair.create()
    m1, m2, m3 = (pair.a.send_text(["RU-GS"], f"m{i}", operator="o") for i in (1, 2, 3))
    pair.deliver(m1, pair.a)
    events, accepted = pair.deliver(m3, pair.a)
    assert GapDetected(m1.channel, "US-EUCOM", (2,)) in events
    assert accepted.receipt.through_seq == 1
    assert accepted.receipt.missing == (2,)
    # Catch-up from the sender's log fills the gap; the receipt becomes cumulative.
    missed = pair.a.envelopes_since(m1.channel, accepted.receipt.through_seq, for_party="RU-GS")
    assert missed[:2] == [m2.raw, m3.raw]
    events, accepted = pair.deliver(m2, pair.a)
    assert accepted.receipt.through_seq == 3
    assert accepted.receipt.missing == ()
    assert not any(isinstance(e, GapDetected) for e in events)


def test_an_equivocating_checkpoint_is_refused_and_kept_as_evidence() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    for i in range(5):
        pair.deliver(pair.a.send_text(["RU-GS"], f"m{i}", operator="o"), pair.a)
    cosigned = pair.witness(pair.a)
    # A fork of US-EUCOM with another history of the same size.
    fork = _fork(pair.a, clock)
    for i in range(cosigned):
        fork.send_text(["RU-GS"], f"other {i}", operator="o")
    assert fork.transcript.size == cosigned
    request = pair.b.checkpoint_request("US-EUCOM")
    with pytest.raises(Equivocation) as caught:
        pair.b.witness(fork.offer_checkpoint(request), leaves=fork.log_leaves)
    assert set(caught.value.evidence) == {"earlier", "later"}
    assert pair.b.evidence[-1].party == "US-EUCOM"
    # A log that rolls back below what was cosigned.
    short = _fork(pair.a, clock)
    short.send_text(["RU-GS"], "x", operator="o")
    with pytest.raises(CheckpointRollback):
        pair.b.witness(short.offer_checkpoint(request), leaves=short.log_leaves)
    # The honest log still extends consistently and is cosigned.
    pair.deliver(pair.a.send_text(["RU-GS"], "later", operator="o"), pair.a)
    assert pair.witness(pair.a) > cosigned
    # A longer fork: its leaves cannot extend the mirror to its root.
    for i in range(pair.a.transcript.size + 1 - fork.transcript.size):
        fork.send_text(["RU-GS"], f"more {i}", operator="o")
    with pytest.raises(CheckpointRejected, match="do not hash"):
        pair.b.witness(fork.offer_checkpoint(request), leaves=fork.log_leaves)
    # Its checkpoint, signed with US-EUCOM's key, is kept: once the honest log passes its
    # size, the two contradict each other and nothing more is cosigned.
    fork_size = fork.transcript.size
    pair.deliver(pair.a.send_text(["RU-GS"], "and later", operator="o"), pair.a)
    assert pair.a.transcript.size > fork_size
    with pytest.raises(Equivocation, match=f"checkpoint {fork_size} is not a prefix"):
        pair.witness(pair.a)


def test_a_checkpoint_contradicting_one_seen_in_a_receipt_is_equivocation() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    out = pair.a.send_text(["RU-GS"], "m", operator="o")
    _, accepted = pair.deliver(out, pair.a)
    seen = accepted.receipt.checkpoint
    fork = _fork(pair.b, clock)
    for i in range(seen.size):
        fork.send_text(["US-EUCOM"], f"f{i}", operator="o")
    with pytest.raises(Equivocation, match=f"size {seen.size}"):
        pair.a.witness(fork.offer_checkpoint(pair.a.checkpoint_request("RU-GS")))


def test_leaves_that_do_not_hash_to_the_checkpoint_are_refused() -> None:
    pair = PartyPair.create()
    pair.deliver(pair.a.send_text(["RU-GS"], "m", operator="o"), pair.a)
    first = pair.witness(pair.a)
    pair.deliver(pair.a.send_text(["RU-GS"], "n", operator="o"), pair.a)
    offer = pair.a.offer_checkpoint(pair.b.checkpoint_request("US-EUCOM"))

    def wrong(start: int, limit: int) -> list[bytes]:
        return [bytes(32)] * limit

    with pytest.raises(CheckpointRejected, match="do not hash"):
        pair.b.witness(offer, leaves=wrong)
    with pytest.raises(CheckpointRejected, match="served 0 leaf hashes"):
        pair.b.witness(offer, leaves=lambda start, limit: [])
    assert pair.b.mirror("US-EUCOM", 0, 100) == pair.a.log_leaves(0, first)
    assert pair.b.witness(offer, leaves=pair.a.log_leaves)
    assert pair.b.mirror("US-EUCOM", 0, 100) == pair.a.log_leaves(0, 100)


def test_seen_tells_a_party_its_log_was_rolled_back() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    for i in range(3):
        pair.deliver(pair.a.send_text(["RU-GS"], f"m{i}", operator="o"), pair.a)
    pair.witness(pair.a)
    request = pair.b.checkpoint_request("US-EUCOM")
    witness, seen = pair.a.read_checkpoint_request(request)
    assert witness == "RU-GS"
    assert seen is not None
    assert pair.a.check_seen("RU-GS", seen) is None
    # The same keys with a shorter log (restored from an older copy): rolled back.
    older = _fork(pair.a, clock)
    found = older.check_seen("RU-GS", seen)
    assert found is not None
    assert (found.peer, found.own_size) == ("RU-GS", 0)
    assert found.seen_size == pair.a.transcript.size
    # A log of the same size with other entries: replaced.
    for i in range(pair.a.transcript.size):
        older.send_text(["RU-GS"], f"other {i}", operator="o")
    replaced = older.check_seen("RU-GS", seen)
    assert replaced is not None
    assert "replaced" in replaced.reason
    # A note that is not the party's own checkpoint is refused.
    with pytest.raises(RemoteError):
        pair.b.check_seen("US-EUCOM", seen)
    # The offer carries the largest checkpoint of the witness's log its owner holds.
    offer = json.loads(pair.a.offer_checkpoint(request))
    assert offer["seen"] == pair.a.largest_seen("RU-GS").note  # type: ignore[union-attr]


def test_human_acknowledgement_names_the_operator() -> None:
    pair = PartyPair.create()
    out = pair.a.send_text(["RU-GS"], "Notice of launch", operator="maj.smith", precedence="FLASH")
    pair.deliver(out, pair.a)
    ack = pair.b.acknowledge(out.envelope_id, operator="col.ivanov")
    events, _ = pair.deliver(ack, pair.b)
    assert AckReceived(out.envelope_id, "RU-GS", "col.ivanov", ack.envelope_id) in events
    assert pair.a.acks_for(out.envelope_id) == {"RU-GS": "col.ivanov"}


def test_an_ack_of_a_message_never_sent_is_refused() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    fork = _fork(pair.a, clock)
    ghost = fork.send_text(["RU-GS"], "never sent by the real terminal", operator="o")
    pair.b.receive_envelope(ghost.raw)
    ack = pair.b.acknowledge(ghost.envelope_id, operator="col.ivanov")
    with pytest.raises(InvalidReceipt, match="never sent"):
        pair.a.receive_envelope(ack.raw)


def test_an_envelope_from_ourselves_is_refused() -> None:
    pair = PartyPair.create()
    out = pair.a.send_text(["RU-GS"], "m", operator="o")
    with pytest.raises(RemoteError):
        pair.a.receive_envelope(out.raw)


def test_a_batch_keeps_good_envelopes_and_reports_bad_ones() -> None:
    pair = PartyPair.create()
    good = [pair.a.send_text(["RU-GS"], f"m{i}", operator="o").raw for i in range(3)]
    bad = pair.a.send_text(["RU-GS"], "x", operator="o")
    corrupted = bad.raw.replace(b'"sig":"', b'"sig":"AAAA', 1)
    results = pair.b.receive_envelopes([good[0], corrupted, good[1], good[2]])
    assert isinstance(results[1], RemoteError)
    accepted = [r for r in results if not isinstance(r, RemoteError)]
    assert len(accepted) == 3
    assert [r.events[0].envelope.header.seq for r in accepted] == [1, 2, 3]  # type: ignore[union-attr]
    assert pair.b.transcript.size == 6  # three envelopes and three receipts, nothing else


def test_unknown_peer_checkpoint_is_refused() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    stranger = make_parties([("UA-GS", "x"), ("RU-GS", "y")], clock)["UA-GS"]
    with pytest.raises(UnknownSender):
        pair.b.witness(
            stranger.offer_checkpoint(
                b'{"log":"UA-GS","seen":null,"type":"parley.checkpoint-request/v2",'
                b'"witness":"RU-GS"}'
            )
        )


def test_a_restarted_party_rebuilt_from_its_transcript_carries_on() -> None:
    clock = ManualClock()
    pair = PartyPair.create(clock)
    outs = [pair.a.send_text(["RU-GS"], f"m{i}", operator="o") for i in range(4)]
    for out in outs[:3]:
        pair.deliver(out, pair.a)
    reply = pair.b.send_text(["US-EUCOM"], "r", operator="p")
    pair.deliver(reply, pair.b)
    pair.deliver(pair.b.acknowledge(outs[0].envelope_id, operator="col.ivanov"), pair.b)
    pair.witness_both()
    # Both terminals restart from their stored records.
    saved = {p.party: p for p in (pair.a, pair.b)}
    restarted = {}
    for name, old in saved.items():
        fresh = _fork(old, clock)
        fresh.restore(old.transcript.entry(i) for i in range(old.transcript.size))
        peer = "RU-GS" if name == "US-EUCOM" else "US-EUCOM"
        witness_entry = old.cosignatures[peer]
        fresh.restore_cosignature(peer, witness_entry[1])
        seen = old.last_cosigned_of(peer)
        assert seen is not None
        fresh.restore_witnessed(peer, seen.note)
        assert fresh.transcript.root() == old.transcript.root()
        restarted[name] = fresh
    a, b = restarted["US-EUCOM"], restarted["RU-GS"]
    assert a.acks_for(outs[0].envelope_id) == {"RU-GS": "col.ivanov"}
    assert a.receipted_through(outs[0].channel, "RU-GS") == 3
    # A replay of an old envelope is still recognised; the fourth is still new.
    assert isinstance(b.receive_envelope(outs[1].raw).events[0], DuplicateReceived)
    again = PartyPair(a, b)
    _, accepted = again.deliver(outs[3], a)
    assert accepted.receipt.through_seq == 4
    nxt = a.send_text(["RU-GS"], "after restart", operator="o")
    assert nxt.seq == 5
    again.deliver(nxt, a)
    assert again.witness_both()[0] > 0


def test_a_log_first_witnessed_empty_can_then_grow() -> None:
    """A witness that cosigned an empty log needs no proof to cosign its growth."""
    pair = PartyPair.create()
    assert pair.witness(pair.a) == 0
    pair.deliver(pair.a.send_text(["RU-GS"], "m", operator="o"), pair.a)
    assert pair.witness(pair.a) == pair.a.transcript.size


def test_a_receipt_that_crosses_an_offer_is_not_a_rollback() -> None:
    """The witness asks; the owner offers size N; before the offer is read, a receipt
    from the owner shows N + 2 (its log grew meanwhile). The offer is at least what the
    request showed: it is cosigned, and N + 2 is required at the next round."""
    pair = PartyPair.create(ManualClock())
    pair.deliver(pair.a.send_text(["RU-GS"], "m", operator="o"), pair.a)
    pair.witness(pair.a)
    request = pair.b.checkpoint_request("US-EUCOM")
    offer = pair.a.offer_checkpoint(request)
    offered = pair.a.transcript.size
    pair.deliver(pair.b.send_text(["US-EUCOM"], "crossing", operator="o"), pair.b)
    assert pair.b.largest_seen("US-EUCOM").size > offered  # type: ignore[union-attr]
    cosigned = pair.b.witness(offer, leaves=pair.a.log_leaves)
    assert pair.a.accept_cosignature(cosigned).size == offered
    # The next round requires the larger one: the old offer again is a rollback.
    assert pair.witness(pair.a) == pair.a.transcript.size
    with pytest.raises(CheckpointRollback):
        pair.b.witness(offer, leaves=pair.a.log_leaves)


def test_leaves_that_come_with_receipts_extend_the_mirror_to_what_the_receipt_showed() -> None:
    pair = PartyPair.create(ManualClock())
    pair.deliver(pair.a.send_text(["RU-GS"], "m", operator="o"), pair.a)
    shown = pair.a.largest_seen("RU-GS")
    assert shown is not None
    assert pair.a.mirror_size("RU-GS") == 0
    # Wrong leaves, too few, and leaves from the wrong start change nothing.
    assert pair.a.extend_mirror("RU-GS", 0, [bytes(32)] * 4) == 0
    assert pair.a.extend_mirror("RU-GS", 0, pair.b.log_leaves(0, shown.size - 1)) == 0
    assert pair.a.extend_mirror("RU-GS", 1, pair.b.log_leaves(1, 100)) == 0
    # The receiver's own leaves, as far as they go (more than the receipt showed is fine).
    pair.b.send_text(["US-EUCOM"], "not yet shown to US-EUCOM", operator="o")
    assert pair.a.extend_mirror("RU-GS", 0, pair.b.log_leaves(0, 100)) == shown.size
    assert pair.a.mirror("RU-GS", 0, 100) == pair.b.log_leaves(0, shown.size)


def test_leaves_that_come_with_receipts_while_a_round_fetches_do_not_fail_it() -> None:
    """The witness plans an offer, and while it fetches the leaves a receipt brings
    some of them (the mirror grows under the plan): the round still cosigns, and
    no alarm-worthy rejection is raised. Once the mirror has passed the offer, the
    offer is stale (asked again), and leaves that differ from those held are refused."""
    pair = PartyPair.create(ManualClock())
    us, ru = pair.a, pair.b
    pair.deliver(us.send_text(["RU-GS"], "m", operator="o"), us)
    pair.witness(us)
    us.send_text(["RU-GS"], "grows the log", operator="o")
    us.send_text(["RU-GS"], "and again", operator="o")
    plan, _ = ru.plan_witness(us.offer_checkpoint(ru.checkpoint_request("US-EUCOM")))
    needed = plan.checkpoint.size - plan.start
    fetched = us.log_leaves(plan.start, needed)
    assert needed > 1
    # Leaves with a receipt reach the offered checkpoint (the largest observed).
    assert ru.extend_mirror("US-EUCOM", plan.start, us.log_leaves(plan.start, 100)) == (
        plan.checkpoint.size
    )
    wrong = [bytes(32), *fetched[1:]]
    with pytest.raises(CheckpointRejected, match="differ from those it showed before"):
        ru.cosign(plan, wrong)
    assert us.accept_cosignature(ru.cosign(plan, fetched)).size == plan.checkpoint.size

    # A plan made before the mirror passed its checkpoint is stale, not a rejection.
    us.send_text(["RU-GS"], "grows it again", operator="o")
    old = us.offer_checkpoint(ru.checkpoint_request("US-EUCOM"))
    plan, _ = ru.plan_witness(old)
    fetched = us.log_leaves(plan.start, plan.checkpoint.size - plan.start)
    pair.deliver(ru.send_text(["US-EUCOM"], "a receipt shows more", operator="o"), ru)
    shown = ru.largest_seen("US-EUCOM")
    assert shown is not None
    assert shown.size > plan.checkpoint.size
    assert ru.extend_mirror("US-EUCOM", plan.start, us.log_leaves(plan.start, 100)) == shown.size
    with pytest.raises(StaleOffer):
        ru.cosign(plan, fetched)
    assert pair.witness(us) == us.transcript.size
