"""The slices' reverse index: a key's guids, held bare while there is one."""

from copilot.slices.index import GuidIndex


def test_a_key_holds_its_guids_and_goes_with_the_last() -> None:
    index: GuidIndex[str] = GuidIndex()
    index.add("a.example.com", "p1")
    index.add("a.example.com", "p1")  # twice is once
    assert sorted(index.get("a.example.com")) == ["p1"]
    index.add("a.example.com", "p2")
    index.add("b.example.com", "p3")
    assert sorted(index.get("a.example.com")) == ["p1", "p2"]
    assert index.keys() == {"a.example.com", "b.example.com"}
    index.discard("a.example.com", "p1")
    assert sorted(index.get("a.example.com")) == ["p2"]
    index.discard("a.example.com", "p9")  # not there: nothing changes
    index.discard("nowhere", "p2")
    assert sorted(index.get("a.example.com")) == ["p2"]
    index.discard("a.example.com", "p2")
    assert "a.example.com" not in index
    assert index.get("a.example.com") == ()
    assert len(index) == 1


def test_a_guid_that_is_a_prefix_of_another_is_its_own() -> None:
    index: GuidIndex[int] = GuidIndex()
    index.add(1024, "abc")
    index.add(1024, "abcd")
    index.discard(1024, "abcd")
    assert list(index.get(1024)) == ["abc"]
