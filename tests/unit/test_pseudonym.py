from services.infra.pseudonym import youth_pseudonym


def test_pseudonym_is_stable_per_key_and_reveals_no_bsn():
    bsn = "999911120"
    first = youth_pseudonym(bsn, "key-a")
    assert first == youth_pseudonym(bsn, "key-a")
    assert first != youth_pseudonym(bsn, "key-b")
    assert first != youth_pseudonym("999990019", "key-a")
    assert bsn not in first and len(first) == 64
    assert int(first, 16) >= 0  # hex
