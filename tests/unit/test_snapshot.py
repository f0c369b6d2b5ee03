"""The store and its snapshots: (kind, name) keys, content-addressed versions, no-op upserts and
deletions, readiness (nothing leaves before `release()`), immutable released snapshots, watchers."""

from __future__ import annotations

import random
import threading

import pytest

from copilot.istio import kinds
from copilot.istio.kinds import IstioObject
from copilot.protos import istio_networking_pb2 as pb
from copilot.xds.snapshot import EMPTY_VERSION, Snapshot
from copilot.xds.store import BATCH, Store, serialize

VS, SE = kinds.VIRTUAL_SERVICE, kinds.SERVICE_ENTRY


def vs(host: str, subset: str = "s") -> pb.VirtualService:
    spec = pb.VirtualService(hosts=[host], gateways=["cf/ingress"])
    spec.http.add(name="/").route.add(destination=pb.Destination(host=host, subset=subset))
    return spec


def objects(n: int = 5) -> list[IstioObject]:
    return [IstioObject(VS, f"ns/host-{i}", vs(f"h{i}.example.com")) for i in range(n)]


def released() -> tuple[Store, list[Snapshot]]:
    store, seen = Store(), []
    store.watch(seen.append)
    store.release()
    return store, seen


# ---------------------------------------------------------------- versions


def test_an_empty_store_has_the_empty_version_for_every_type() -> None:
    store = Store()
    assert store.version(VS) == store.version(SE) == EMPTY_VERSION
    assert store.snapshot().resources("networking.istio.io/v1/Sidecar").names() == []


def test_version_changes_only_when_content_changes() -> None:
    store, seen = released()
    store.apply(objects())
    v1 = store.version(VS)
    assert v1 != EMPTY_VERSION and len(seen) == 2  # the release, then the change
    store.apply(objects())  # same content again: no version, no snapshot
    assert store.version(VS) == v1 and len(seen) == 2
    store.apply([IstioObject(VS, "ns/host-2", vs("changed.example.com"))])
    assert store.version(VS) not in (v1, EMPTY_VERSION)
    store.apply([IstioObject(VS, "ns/host-2", vs("h2.example.com"))])  # the old content back: the old version back
    assert store.version(VS) == v1


def test_versions_are_per_kind() -> None:
    store = Store()
    store.apply(objects())
    se = store.version(SE)
    store.apply([IstioObject(VS, "ns/extra", vs("extra.example.com"))])
    assert store.version(SE) == se


def test_the_same_name_under_two_kinds_is_two_objects() -> None:
    store = Store()
    store.apply([IstioObject(VS, "ns/x", pb.VirtualService()), IstioObject(kinds.DESTINATION_RULE, "ns/x", pb.DestinationRule())])
    assert store.names(VS) == store.names(kinds.DESTINATION_RULE) == ["ns/x"]


def test_same_objects_in_any_order_and_batches_give_the_same_version() -> None:
    items = objects(40)
    rng = random.Random(7)
    versions = set()
    for _ in range(5):
        shuffled = items[:]
        rng.shuffle(shuffled)
        store = Store()
        for start in range(0, len(shuffled), 6):
            store.apply(shuffled[start : start + 6])
        versions.add(store.version(VS))
        assert store.names(VS) == sorted(o.name for o in items)
    assert len(versions) == 1


def test_history_does_not_matter_for_the_version() -> None:
    direct = Store()
    direct.apply(objects(3))
    winding = Store()
    winding.apply(objects(6))
    winding.apply([], [(VS, f"ns/host-{i}") for i in range(3, 6)])
    winding.apply([IstioObject(VS, "ns/host-0", vs("other.example.com"))])
    winding.apply(objects(1))
    assert winding.version(VS) == direct.version(VS)


def test_delete() -> None:
    store, seen = released()
    store.apply(objects(3))
    before = store.version(VS)
    store.apply([], [(VS, "ns/host-1")])
    assert store.names(VS) == ["ns/host-0", "ns/host-2"]
    assert store.version(VS) != before
    after, count = store.version(VS), len(seen)
    store.apply([], [(VS, "ns/host-1"), (SE, "ns/nothing")])  # deleting what is not there is a no-op
    assert store.version(VS) == after and len(seen) == count
    store.apply([], [(VS, "ns/host-0"), (VS, "ns/host-2")])
    assert store.version(VS) == EMPTY_VERSION
    assert store.names(VS) == []


def test_an_upsert_and_a_deletion_in_one_apply_are_one_snapshot() -> None:
    store, seen = released()
    store.apply(objects(2))
    store.apply([IstioObject(SE, "ns/se", pb.ServiceEntry(hosts=["x"]))], [(VS, "ns/host-0")])
    assert len(seen) == 3
    assert (seen[-1].resources(VS.collection).names(), seen[-1].resources(SE.collection).names()) == (["ns/host-1"], ["ns/se"])


def test_removals_are_released_kind_by_kind_routes_first_destination_rules_last() -> None:
    store, seen = released()
    dr = kinds.DESTINATION_RULE
    store.apply([IstioObject(kind, "ns/app", kind.message()) for kind in kinds.PUSH_ORDER])
    before = len(seen)
    store.apply(
        [IstioObject(dr, "ns/new", dr.message())],
        [(kind, "ns/app") for kind in kinds.PUSH_ORDER],  # handed over in push order, released the other way
    )
    steps = seen[before:]
    gone = [{k for k in kinds.PUSH_ORDER if "ns/app" not in s.resources(k.collection).names()} for s in steps]
    assert gone == [set(kinds.REMOVAL_ORDER[: n + 1]) for n in range(5)]
    assert kinds.REMOVAL_ORDER[0] is VS and kinds.REMOVAL_ORDER[-1] is dr and kinds.REMOVAL_ORDER.index(SE) < 4
    assert "ns/new" in steps[0].resources(dr.collection).names()  # upserts go with the first step
    assert [s.barrier for s in steps] == [True, True, True, True, False]
    assert [s.serial for s in steps] == sorted(s.serial for s in steps)


def test_an_apply_without_removals_is_one_snapshot_and_no_barrier() -> None:
    store, seen = released()
    before = len(seen)
    store.apply(objects(2), [(SE, "ns/nothing")])  # a deletion of nothing changes nothing: no step of its own
    assert len(seen) == before + 1 and not seen[-1].barrier


# ---------------------------------------------------------------- what is kept


def test_the_store_keeps_the_serialized_spec_not_the_message() -> None:
    spec = vs("a.example.com")
    store = Store()
    store.apply([IstioObject(VS, "ns/a", spec)])
    spec.hosts[0] = "mutated.example.com"  # the caller's message is not referenced afterwards
    assert store.get(VS, "ns/a") == vs("a.example.com")
    resource = store.snapshot().resources(VS.collection).get("ns/a")
    assert resource is not None and resource.body == vs("a.example.com").SerializeToString(deterministic=True)
    assert store.get(VS, "ns/missing") is None


def test_a_kind_built_in_name_order_is_served_in_name_order() -> None:
    """The publisher builds a full rebuild in name order: the response keeps it (through many leaf splits)."""
    store = Store()
    names = sorted(f"ns/host-{i:05}" for i in range(20_000))
    store.apply(IstioObject(VS, name, pb.VirtualService(hosts=[name])) for name in names)
    assert [name for name, _ in store.snapshot().resources(VS.collection).items()] == names


def test_random_changes_match_a_plain_dict_and_released_snapshots_stay_as_they_were() -> None:
    rng = random.Random(15)
    store, seen = released()
    model: dict[str, str] = {}
    kept: list[tuple[Snapshot, dict[str, str]]] = []
    for step in range(60):
        upserts, deletions = [], []
        for _ in range(rng.choice((1, 10, 400))):
            name = f"ns/host-{rng.randrange(3000)}"
            if rng.random() < 0.3:
                deletions.append((VS, name))
                model.pop(name, None)
            else:
                host = f"{rng.randrange(5)}.{name}"
                upserts.append(IstioObject(VS, name, vs(host)))
                model[name] = host
        # one apply: upserts first, then deletions; a name in both ends deleted
        for _, name in deletions:
            model.pop(name, None)
        store.apply(upserts, deletions)
        if step % 5 == 0:
            kept.append((seen[-1], dict(model)))
        current = store.snapshot().resources(VS.collection)
        assert current.names() == sorted(model) and current.count == len(model)
    for snapshot, then in kept:  # every snapshot still says what it said when it was released
        resources = snapshot.resources(VS.collection)
        assert resources.names() == sorted(then)
        for name, host in then.items():
            resource = resources.get(name)
            assert resource is not None and pb.VirtualService.FromString(resource.body).hosts == [host]
    model_store = Store()
    model_store.apply(IstioObject(VS, name, vs(host)) for name, host in model.items())
    assert store.version(VS) == model_store.version(VS)  # the version is the content's, whatever the history


# ---------------------------------------------------------------- release and snapshots


def test_nothing_leaves_the_store_before_release() -> None:
    store, seen = Store(), []
    store.watch(seen.append)
    store.apply(objects(2))
    assert seen == [] and not store.released
    store.release()
    assert store.released
    [first] = seen
    assert first.resources(VS.collection).names() == ["ns/host-0", "ns/host-1"]
    store.release()  # once only
    assert len(seen) == 1
    store.apply(objects(3))
    assert len(seen) == 2 and seen[1].serial > first.serial


def test_a_watcher_added_after_release_gets_the_current_snapshot() -> None:
    store, _ = released()
    store.apply(objects(2))
    late: list[Snapshot] = []
    unsubscribe = store.watch(late.append)
    assert [s.resources(VS.collection).names() for s in late] == [["ns/host-0", "ns/host-1"]]
    unsubscribe()
    store.apply(objects(3))
    assert len(late) == 1
    unsubscribe()  # idempotent


def test_a_released_snapshot_never_changes() -> None:
    store, seen = released()
    store.apply(objects(10_000))  # enough to put several in one leaf
    first = seen[-1]
    names, version = first.resources(VS.collection).names(), first.version(VS.collection)
    digests = {name: r.digest for name, r in first.resources(VS.collection).items()}
    store.apply([IstioObject(VS, "ns/host-7", vs("moved.example.com")), IstioObject(VS, "ns/new", vs("new.example.com"))])
    store.apply([], [(VS, "ns/host-8")])
    assert first.resources(VS.collection).names() == names and first.version(VS.collection) == version
    assert {name: r.digest for name, r in first.resources(VS.collection).items()} == digests
    latest = seen[-1].resources(VS.collection)
    assert "ns/new" in latest.names() and "ns/host-8" not in latest.names()
    assert latest.get("ns/host-7").digest != digests["ns/host-7"]  # type: ignore[union-attr]
    assert latest.count == 10_000


def test_an_unchanged_kind_is_the_same_object_in_the_next_snapshot() -> None:
    store, seen = released()
    store.apply([*objects(2), IstioObject(SE, "ns/se", pb.ServiceEntry(hosts=["x"]))])
    before = seen[-1]
    store.apply([IstioObject(VS, "ns/new", vs("new.example.com"))])
    after = seen[-1]
    assert after.resources(SE.collection) is before.resources(SE.collection)
    assert after.resources(VS.collection) is not before.resources(VS.collection)
    assert after.resources(VS.collection).changed_at > 0


def test_a_serialized_object_is_applied_as_the_object_itself() -> None:
    direct, via = Store(), Store()
    direct.apply(objects(3))
    via.apply(serialize(o) for o in objects(3))
    assert via.version(VS) == direct.version(VS) and via.names(VS) == direct.names(VS)
    assert via.get(VS, "ns/host-1") == vs("h1.example.com")


# ---------------------------------------------------------------- an apply stored in batches


def test_a_snapshot_taken_during_an_apply_is_the_one_before_it() -> None:
    store, seen = released()
    store.apply(objects(3))
    before = seen[-1]
    during: list[Snapshot] = []

    def upserts():
        for i in range(2 * BATCH + 10):  # more than one batch is stored before the snapshot is taken
            if i == 2 * BATCH + 5:
                during.append(store.snapshot())
                store.watch(during.append)  # a stream connecting meanwhile
            yield IstioObject(VS if i % 2 else SE, f"ns/more-{i}", vs(f"m{i}.example.com"))

    store.apply(upserts(), [(VS, "ns/host-0")])
    for snapshot in during[:2]:
        assert snapshot.resources(VS.collection).names() == before.resources(VS.collection).names()
        assert snapshot.version(VS.collection) == before.version(VS.collection)
        assert SE.collection not in snapshot.kinds  # a kind the apply created is not there before its end
    after = store.snapshot()
    assert len(after.resources(VS.collection).names()) == 3 - 1 + BATCH + 5
    assert len(after.resources(SE.collection).names()) == BATCH + 5
    assert during[2:] == seen[-1:] and after.version(SE.collection) == seen[-1].version(SE.collection)


def test_upserts_that_raise_end_the_apply_with_what_they_gave() -> None:
    store, seen = released()

    def upserts():
        yield from objects(BATCH + 1)
        raise RuntimeError("a bug in a builder")

    with pytest.raises(RuntimeError, match="a bug"):
        store.apply(upserts(), [(VS, "ns/host-0")])  # the deletion never comes: the list may be incomplete
    assert len(seen[-1].resources(VS.collection).names()) == BATCH + 1
    store.apply(objects(1))  # the store is not left applying
    assert len(store.names(VS)) == BATCH + 1


def test_release_during_an_apply_waits_for_its_end() -> None:
    store, seen = Store(), []
    store.watch(seen.append)
    releaser = threading.Thread(target=store.release)

    def upserts():
        yield from objects(BATCH + 1)  # one batch is stored before the releaser starts
        releaser.start()
        yield from objects(BATCH + 2)[BATCH + 1 :]

    store.apply(upserts())
    releaser.join()
    assert [len(s.resources(VS.collection).names()) for s in seen] == [BATCH + 2]
