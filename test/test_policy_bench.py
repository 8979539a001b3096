"""``vla-rl bench policy``: JSON on stdout and in --out, for fp32 and for the bf16 (GPU-style) path."""
from __future__ import annotations

import json

import pytest

from vla_rl_ros.cli.main import main


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_policy_writes_json(tmp_path, capsys, dtype):
    out = tmp_path / "bench" / "policy.json"
    code = main(["bench", "policy", "--set", "policy.size=tiny", "--set", "policy.image_size=32",
                 "--set", f"policy.dtype={dtype}", "--batch-sizes", "1,8", "--repeats", "2", "--warmup", "1",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert json.loads(printed[printed.index("{"):]) == result
    assert result["target"] == "policy" and result["dtype"] == dtype and result["device"] == "cpu"
    assert [r["batch"] for r in result["results"]] == [1, 8]
    for row in result["results"]:
        assert row["actions_per_s"] > 0 and row["latency_ms_median"] > 0 and row["peak_memory_mb"] > 0
        assert row["ppo_fwd_bwd_ms_median"] > 0
    assert "goal_batch8_4x_batch1" in result and result["speedup_vs_batch1"]["1"] == 1.0


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "policy", "--repeats", "0"]) == 2
    assert "--repeats=0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])
