"""SIGKILL of the recorder, the learner and the bridge mid-iteration, on the toy training graph
(issue 26): every finished episode is trained on exactly once.

bridge + policy + recorder + learner run as separate processes (as ``vla-rl launch`` starts
them); a watcher node records every EpisodeResult and the time each episode was first observed.
The recorder is killed with episodes of its open bag already finished, the learner while an
update runs, the bridge in the middle of its episodes; each is restarted. At the end the learner's
state (the keys of the episodes it trained on) is compared with what the bags on disk hold and
with what the bridge reported:

- no episode is trained on twice, and every usable episode in the bags was trained on;
- every episode that had finished before the recorder was killed was trained on (its bag was
  recovered), and so was every episode that ran wholly after the restarted recorder was up;
- the only episodes not trained on are the ones running while the recorder was dead (their
  middle was never recorded) and those the killed bridge left unfinished (never reported).
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from dds_domains import isolate_dds
from test_graph_toy import Watcher, _log
from vla_rl_ros.cli.launch_cmd import Supervisor
from vla_rl_ros.graph.description import build_graph
from vla_rl_ros.nodes.bag_episodes import episode_key_text
from vla_rl_ros.nodes.bag_recovery import incomplete_bags
from vla_rl_ros.nodes.learner_bags import complete_bags
from vla_rl_ros.core.rl import checkpoint as ckpt
from vla_rl_ros.nodes.trajectory_bags import read_episodes, rebuild_keyed
from toy_graph_params import write_toy_graph_params

pytestmark = pytest.mark.slow
RECORDER_LAG_S = 1.0
"""How long after the watcher the recorder is sure to hold a result (one host; generous under load)."""
RECORDER_KILL_ATTEMPTS = 5
"""SIGKILLs of the recorder until one leaves an unfinished bag (each misses with p ~ 0.1 on the toy)."""


def graph_config(tmp_path: Path) -> Path:
    config = write_toy_graph_params(tmp_path, episodes_per_iter=4, action_timeout_s=3.0)
    return config


class EpisodeClock:
    """When the watcher first saw each episode and when its result came (time.monotonic())."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.first_seen: dict[str, float] = {}
        self.ended: dict[str, tuple[float, object]] = {}
        self._obs = self._res = 0

    def update(self) -> None:
        now = time.monotonic()
        for msg in self.watcher.observations[self._obs:]:
            for env, episode in zip(msg.env_ids, msg.episode_ids):
                key = episode_key_text((msg.bridge_id, msg.incarnation, env, episode))
                self.first_seen.setdefault(key, now)
        for msg in self.watcher.results[self._res:]:
            self.ended.setdefault(episode_key_text((msg.bridge_id, msg.incarnation, msg.env_id,
                                                    msg.episode_id)), (now, msg))
        self._obs, self._res = len(self.watcher.observations), len(self.watcher.results)


def test_sigkill_of_recorder_learner_and_bridge_loses_no_finished_episode(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    logs = tmp_path / "logs"
    graph = build_graph("train_sim", config=str(graph_config(tmp_path)))
    for spec in graph.nodes:
        if spec.role == "sim_bridge":
            # The watcher subscribes to observations too: without this, a restarted bridge could
            # start once the policy and the watcher hear it, before the recorder does.
            spec.parameters["min_observation_subscribers"] += 1
    supervisor = Supervisor(graph, log_dir=str(logs))
    watcher = Watcher(logs)
    clock = EpisodeClock(watcher)

    def wait(predicate, timeout, what):
        watcher.wait_for(lambda: (clock.update(), predicate())[1], timeout, what)

    def kill(label):
        _, process = supervisor.processes[label]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    supervisor.start()
    try:
        wait(lambda: any(v.version >= 1 for v in watcher.versions), 300, "policy version 1")

        # 1. The recorder, with finished episodes in its open bag. A toy bag lasts ~0.2 s, so a kill
        # can land between two bags (the last one complete, the next not yet opened): nothing to
        # recover, and the kill proves nothing. That happened once in CI; such a kill is repeated.
        recorder_killed = None
        for attempt in range(RECORDER_KILL_ATTEMPTS):
            bags_before = len(watcher.bags)
            wait(lambda: len(watcher.bags) > bags_before, 120, "a bag closing")
            results_at_bag = len(watcher.results)
            wait(lambda: len(watcher.results) >= results_at_bag + 2, 120, "two results into the open bag")
            # RECORDER_LAG_S after the watcher saw them, the recorder has them too (same DDS, same
            # host); those are the episodes that must survive the kill (before_kill below).
            time.sleep(RECORDER_LAG_S)
            killed_at = time.monotonic()
            recorder_killed = recorder_killed or killed_at
            kill("/recorder")
            left_open = incomplete_bags(tmp_path / "run" / "bags")
            wait(lambda: time.monotonic() > killed_at + 3, 10, "episodes while the recorder is dead")
            log_before = _log(logs, "recorder")
            supervisor.restart("/recorder")
            awaited = "recovered bag" if left_open else "recording to "
            wait(lambda: _log(logs, "recorder").count(awaited) > log_before.count(awaited), 120,
                 f"the restarted recorder logging {awaited!r}")
            if left_open:
                break
        else:
            pytest.fail(f"{RECORDER_KILL_ATTEMPTS} SIGKILLs of the recorder all fell between two bags")
        recorder_back = time.monotonic() + 3.0  # discovery: what is published before may not reach it

        # 2. The learner, inside an update.
        updates = _log(logs, "learner").count("training on bags")
        wait(lambda: _log(logs, "learner").count("training on bags") > updates, 180, "an update starting")
        kill("/learner")
        supervisor.restart("/learner")
        wait(lambda: _log(logs, "learner").count("learner ready at policy version") >= 2, 180, "learner back")

        # 3. The bridge, in the middle of its episodes.
        incarnations = {o.incarnation for o in watcher.observations}
        time.sleep(1.0)
        kill("/sim_bridge")
        supervisor.restart("/sim_bridge")
        wait(lambda: {o.incarnation for o in watcher.observations} - incarnations, 120, "the new bridge run")
        wait(lambda: sum(r.incarnation not in incarnations and not r.aborted for r in watcher.results) >= 2,
             120, "two episodes of the new bridge run")
        version_now = max(v.version for v in watcher.versions)
        wait(lambda: max(v.version for v in watcher.versions) >= version_now + 2, 300, "two more versions")

        # Orderly end: no more episodes, the recorder closes its bag, the learner trains on it.
        for label in ("/sim_bridge", "/recorder"):
            _, process = supervisor.processes[label]
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        bag_dir = tmp_path / "run" / "bags"

        def learner_done() -> bool:
            state = ckpt.load_checkpoint(tmp_path / "run")
            return set(state["processed"]) | set(state["refused"]) >= {str(b) for b in complete_bags(bag_dir)}
        wait(learner_done, 300, "the learner taking every bag")
        assert all(supervisor.processes[n][1].poll() is None for n in ("/learner", "/policy"))
    finally:
        supervisor.stop(grace_s=10.0)
        clock.update()
        watcher.close()

    state = ckpt.load_checkpoint(tmp_path / "run")
    trained = state["episodes"]["trained"]
    assert len(trained) == len(set(trained)), "an episode was trained on twice"
    assert not state["refused"] and state["episodes"]["counts"].get("stale", 0) == 0, state["episodes"]
    # What the bags hold, read the way the learner reads them.
    finished, carry = read_episodes([str(b) for b in complete_bags(bag_dir)], None, 1, 32)
    keyed, rejected, _ = rebuild_keyed(finished)
    in_bags = {episode_key_text(k) for k, _ in keyed}
    assert in_bags == set(trained), (sorted(in_bags ^ set(trained)), rejected)
    assert not list(bag_dir.glob("*.crashed"))
    assert all((b / "metadata.yaml").is_file() for b in bag_dir.iterdir()), "a bag left unfinished"

    reported = {k: msg for k, (_, msg) in clock.ended.items() if not msg.aborted}
    before_kill = {k for k, (t, msg) in clock.ended.items()
                   if not msg.aborted and t <= recorder_killed - RECORDER_LAG_S}
    after_restart = {k for k in reported if clock.first_seen.get(k, 0.0) > recorder_back}
    assert before_kill and after_restart
    assert before_kill <= set(trained), f"lost to the kill: {sorted(before_kill - set(trained))}"
    assert after_restart <= set(trained), f"lost after the restarts: {sorted(after_restart - set(trained))}"
    lost = set(reported) - set(trained)
    during_outage = {k for k in lost if clock.first_seen.get(k, 0.0) <= recorder_back
                     and clock.ended[k][0] > recorder_killed - RECORDER_LAG_S}
    assert lost == during_outage, f"lost outside the recorder's outage: {sorted(lost - during_outage)}"
    assert len({k.split("|")[1] for k in reported}) == 2, "one bridge incarnation per run"
    print(f"\nfinished episodes reported {len(reported)}, trained on {len(trained)} (each once), lost to a "
          f"SIGKILL: 0 finished before a kill, {len(during_outage)} running while the recorder was dead "
          f"({attempt + 1} recorder kill(s)); "
          f"orphans evicted {carry['evicted']}; rejected in bags {rejected}")
