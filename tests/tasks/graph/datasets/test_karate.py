from geossm.tasks.graph.datasets import KarateClub


def test_karate_club_builtin():
    tr, te = KarateClub(split="train")[0], KarateClub(split="test")[0]
    assert int(tr.mask.sum()) == 4 and not (tr.mask & te.mask).any()
