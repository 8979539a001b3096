"""franka_bridge with action chunks, over real loopback DDS against the fake driver.

The bridge runs as its own process with ``policy.chunk_size`` K = 4 (fixture of
test_franka_bridge_dds); the test process plays the policy with chunks. Checked: a chunk's
actions reach the driver one per control period, each through the safety filter; observations
come only at decision points (K steps apart); the watchdog stops the arm at most two control
periods after the last action of the last fresh chunk (measured on every chunk boundary and
after the policy falls silent); a chunk of the wrong size or with a NaN is a counted stop.
"""
from __future__ import annotations

import time

import numpy as np

import test_franka_bridge_dds
from test_franka_bridge_dds import LIMITS, PERIOD, wait_for, xyz

graph = test_franka_bridge_dds.graph  # its fixture: fake driver, policy harness, bridge process

K = 4


def motion_runs(twists):
    """The arrival times of each run of moving twists at the driver, and of the stop after each."""
    runs, stops, current = [], [], []
    for t, msg in twists:
        if xyz(msg.twist.linear).any() or xyz(msg.twist.angular).any():
            current.append(t)
        elif current:
            runs.append(current)
            stops.append(t)
            current = []
    return runs, stops


def test_chunks_run_one_action_per_period_and_the_watchdog_stops_within_two_periods(graph):
    driver, harness, start_bridge = graph
    rng = np.random.default_rng(3)
    budget = {"left": 6}

    def chunks(seq):
        budget["left"] -= 1
        if budget["left"] < 0:
            return None  # the policy falls silent after 6 chunks
        chunk = rng.uniform(0.2, 1.0, (K, 7)) * rng.choice([-1, 1], (K, 7))
        chunk[1] *= 5.0  # out of range: clamped, still one bounded step
        return chunk

    harness.action_fn = chunks
    start_bridge(armed=True, **{"policy.chunk_size": K})
    wait_for(lambda: budget["left"] < 0, 30, "6 chunks answered")
    time.sleep(0.3 + 6 * PERIOD)
    twists = driver.commands("twist")
    runs, stops = motion_runs(twists)
    assert len(runs) == 6 and len(stops) == 6, f"{len(runs)} runs of motion, {len(stops)} stops"
    for times in runs:  # one action per control period: K commands spread over (K - 1) periods
        assert len(times) == K, f"a chunk ran {len(times)} actions, not {K}"
        gaps = np.diff(times)
        assert np.all(gaps > 0.5 * PERIOD) and np.all(gaps < 1.6 * PERIOD), gaps
    delays = [stop - run[-1] for run, stop in zip(runs, stops)]
    print(f"\nchunk end -> stop (s): {np.round(delays, 3).tolist()}; period {PERIOD} s; "
          f"max {max(delays) / PERIOD:.2f} periods")
    assert max(delays) <= 2 * PERIOD, f"stop {max(delays):.3f} s after the chunk's last action"
    silent_stops = [t for t, m in twists if t > runs[-1][-1]]
    assert len(silent_stops) >= 3  # the stop is repeated every period, not sent once and forgotten

    # Every action went through the safety filter: bounded steps, bounded speeds.
    previous = [np.array([0.5, 0.0, 0.3])]
    for _, pose in driver.commands("pose"):
        position = xyz(pose.pose.position)
        assert (position >= LIMITS["lo"] - 1e-9).all() and (position <= LIMITS["hi"] + 1e-9).all()
        assert min(np.linalg.norm(position - p) for p in previous[-3:]) <= LIMITS["step"] + 1e-6
        previous.append(position)
    for _, twist in twists:
        assert np.linalg.norm(xyz(twist.twist.linear)) <= LIMITS["speed"] + 1e-9
    # Observations only at decision points: each one K env steps after the one before.
    indices = [o.step_indices[0] for o in harness.observations]
    assert indices[:6] == [0, K, 2 * K, 3 * K, 4 * K, 5 * K], indices
    wait_for(lambda: harness.diagnostics, 5, "diagnostics")
    time.sleep(1.1)
    values = {kv.key: kv.value for kv in harness.diagnostics[-1].values}
    assert int(values["clamp_action_range"]) >= 6  # the x5 action of every chunk
    assert int(values["stop_invalid_action"]) == 0


def test_a_chunk_of_the_wrong_size_or_with_nan_is_a_counted_stop(graph):
    driver, harness, start_bridge = graph
    kinds = {1: np.full((K, 7), 0.5), 2: np.full((2, 7), 0.5), 3: np.where(np.eye(K, 7) > 0, np.nan, 0.5)}
    harness.action_fn = lambda seq: kinds.get(seq)
    start_bridge(armed=True, **{"policy.chunk_size": K})
    wait_for(lambda: len(harness.sent) >= 3, 20, "three chunks answered")
    time.sleep(0.5)
    runs, _ = motion_runs(driver.commands("twist"))
    assert [len(r) for r in runs] == [K], "only the well-formed chunk may move the arm"
    wait_for(lambda: harness.diagnostics, 5, "diagnostics")
    time.sleep(1.1)
    values = {kv.key: kv.value for kv in harness.diagnostics[-1].values}
    assert int(values["stop_invalid_action"]) == 2
    # The bridge kept serving: it observed again after each rejected chunk, at the same env step.
    assert [o.step_indices[0] for o in harness.observations[:4]] == [0, K, K, K]
