"""PSS summing from smaps_rollup, process groups, and the min/median/max maths of the benchmark."""

from __future__ import annotations

import os

import pytest

from airflow_stack.runtime import measure
from airflow_stack.runtime.measure import Summary

ROLLUP = """00400000-7ffd5b1ff000 ---p 00000000 00:00 0                          [rollup]
Rss:              204800 kB
Pss:              102400 kB
Pss_Anon:          51200 kB
Shared_Clean:     150000 kB
Private_Dirty:     40000 kB
"""


def fake_proc(tmp_path, pss_by_pid: dict[int, str]):
    for pid, text in pss_by_pid.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "smaps_rollup").write_text(text)
    return tmp_path


def test_parse_smaps_rollup_reads_the_kb_fields():
    fields = measure.parse_smaps_rollup(ROLLUP)
    assert fields["Pss"] == 102400 and fields["Rss"] == 204800 and fields["Private_Dirty"] == 40000
    assert "00400000-7ffd5b1ff000 ---p 00000000 00" not in fields


def test_pss_of_a_set_counts_each_process_once_and_the_gone_as_zero(tmp_path):
    proc = fake_proc(tmp_path, {10: ROLLUP, 11: "Pss:  1024 kB\n"})
    assert measure.pss_kib(10, proc) == 102400
    assert measure.pss_kib(99, proc) is None  # gone
    assert measure.pss_mib([10, 11, 11, 99], proc) == pytest.approx(100 + 1)


def test_this_process_has_a_real_pss_and_is_in_its_own_group():
    if not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip("no smaps_rollup on this kernel")
    assert measure.pss_mib([os.getpid()]) > 1
    assert os.getpid() in measure.group(os.getpgid(0))
    assert measure.tree(os.getpid())[0] == os.getpid()


def test_summary_min_median_max_and_ratio():
    s = Summary.of([3.0, None, 1.0, 2.0])
    assert (s.n, s.low, s.median, s.high) == (3, 1.0, 2.0, 3.0)
    assert Summary.of([1.0, 2.0, 3.0, 4.0]).median == 2.5
    assert s.ratio_to(Summary.of([4.0])) == 0.5
    assert Summary.of([]).median is None and s.ratio_to(Summary.of([])) is None
