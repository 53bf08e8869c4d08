"""`aidmp pilot-data`: each site's share of real UCI Adult rows, and a policy it passes."""

import pandas as pd
import pytest

from aidmp.cli import main
from aidmp.errors import AidmpError
from aidmp.simulations.pilot_sites import write_pilot_sites


def test_sites_get_disjoint_real_rows_and_a_policy_their_data_passes(tmp_path, capsys):
    folders = write_pilot_sites(tmp_path / "sites", 3, rows=600, seed=1)
    frames = [pd.read_csv(f / "rows.csv") for f in folders]
    assert [len(f) for f in frames] == [600, 600, 600]
    assert (frames[0]["consent"] == "yes").all() and "income" in frames[0]
    keys = [set(map(tuple, f.drop(columns="consent").astype(str).values)) for f in frames]
    assert not keys[0] & keys[1] and not keys[1] & keys[2]
    for folder in folders:
        code = main(["govern", "check", str(folder / "rows.csv"), "--policy",
                     str(folder / "policy.yaml")])  # fmt: skip
        assert code == 0, capsys.readouterr().out


def test_it_never_overwrites_and_names_impossible_requests(tmp_path):
    write_pilot_sites(tmp_path, 1, rows=10)
    with pytest.raises(AidmpError, match="already exists"):
        write_pilot_sites(tmp_path, 1, rows=10)
    with pytest.raises(AidmpError, match="has 32561"):
        write_pilot_sites(tmp_path / "more", 2, rows=20_000)
    with pytest.raises(AidmpError, match="no raw rows"):
        write_pilot_sites(tmp_path / "mnist", 2, task="mnist")
