"""Action chunks: K actions per policy call through decoding, PPO scoring, imitation labels,
checkpoints, the toy environment and the rollout loop (real tiny models, no mocks)."""
import numpy as np
import pytest
import torch

from vla_rl_ros.core.data.dataset import DemoDataset
from vla_rl_ros.core.envs.toy import ToyVectorEnv, toy_instruction, toy_oracle_actions, toy_task_count
from vla_rl_ros.core.policy import ChunkSizeError, PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl.rollout import collect_episodes, policy_decoder

torch.set_num_threads(1)
TEXTS = [toy_instruction(i) for i in range(toy_task_count())]


def chunk_policy(chunk_size, decoding="parallel", temperature=1.0, seed=0):
    cfg = PolicyConfig(size="tiny", image_size=32, chunk_size=chunk_size, chunk_decoding=decoding,
                       temperature=temperature, seed=seed)
    return VLAPolicy.create(cfg, instructions=TEXTS)


def observations(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(batch, 32, 32, 3), dtype=np.uint8)
    proprio = rng.normal(0, 0.1, size=(batch, 8)).astype(np.float32)
    return images, [TEXTS[i % len(TEXTS)] for i in range(batch)], proprio


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_a_chunk_decodes_k_actions_and_scores_like_its_rollout(decoding):
    policy = chunk_policy(4, decoding)
    images, texts, proprio = observations()
    out = policy.decode(images, texts, generator=torch.Generator().manual_seed(1), proprio=proprio)
    assert tuple(out.tokens.shape) == (3, 28) and out.actions.shape == (3, 4, 7)
    arch = policy.arch
    assert out.tokens.min() >= arch.action_vocab_start and out.tokens.max() < arch.action_vocab_end
    # The PPO ratio starts at exactly 1: the update scores the chunk with the rollout's distribution.
    scored = policy.evaluate(images, texts, out.tokens, proprio=proprio)
    torch.testing.assert_close(scored.log_probs.detach(), out.log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(scored.values.detach(), out.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(policy.chunk_actions(out.tokens), out.actions)


def test_parallel_decoding_draws_each_slot_independently_from_one_pass():
    policy = chunk_policy(2, "parallel")
    images, texts, proprio = observations(batch=1)
    greedy = [policy.decode(images, texts, greedy=True, proprio=proprio).tokens for _ in range(2)]
    assert torch.equal(greedy[0], greedy[1])
    samples = torch.cat([policy.decode(images, texts, generator=torch.Generator().manual_seed(s),
                                       proprio=proprio).tokens for s in range(20)])
    assert len({tuple(row.tolist()) for row in samples}) > 1  # near-uniform fresh heads: samples differ


def test_chunk_labels_round_trip_and_imitation_lowers_the_loss():
    policy = chunk_policy(3)
    chunk = np.random.default_rng(0).uniform(-0.9, 0.9, size=(2, 3, 7)).astype(np.float32)
    chunk[..., 6] = np.sign(chunk[..., 6])
    tokens = policy.chunk_tokens(chunk)
    assert tokens.shape == (2, 21)
    np.testing.assert_allclose(policy.chunk_actions(tokens), chunk, atol=2.0 / 255)
    with pytest.raises(ChunkSizeError, match=r"\[B, 3, 7\]"):
        policy.chunk_tokens(chunk[:, :2])
    images, texts, proprio = observations(batch=2)
    params = policy.sft_parameters(full=True)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(15):
        loss = policy.sft_loss(images, texts, torch.as_tensor(tokens), proprio=proprio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_checkpoint_refuses_another_chunk_size_by_name(tmp_path):
    policy = chunk_policy(4)
    policy.save(str(tmp_path / "k4"))
    loaded = VLAPolicy.load(str(tmp_path / "k4"), PolicyConfig(size="tiny", image_size=32, chunk_size=4))
    assert loaded.chunk_size == 4 and loaded.parallel
    for cfg, pattern in ((PolicyConfig(chunk_size=2), "chunks of 4 action"),
                         (PolicyConfig(chunk_size=1), "policy.chunk_size=4"),
                         (PolicyConfig(chunk_size=4, chunk_decoding="autoregressive"), "'parallel'")):
        with pytest.raises(ChunkSizeError, match=pattern):
            VLAPolicy.load(str(tmp_path / "k4"), cfg)
    images, texts, proprio = observations(batch=2)
    with pytest.raises(ChunkSizeError, match=r"\[2, 28\]"):
        loaded.evaluate(images, texts, torch.zeros(2, 7, dtype=torch.long), proprio=proprio)


def test_demo_chunk_labels_never_cross_an_episode_end():
    dataset = DemoDataset.__new__(DemoDataset)
    dataset.actions = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    dataset.episode_ids = np.array([0, 0, 0, 1, 1])
    chunks = dataset.action_chunks(3)
    assert chunks.shape == (5, 3, 7)
    np.testing.assert_array_equal(chunks[:, :, 0], [[0, 7, 14], [7, 14, 14], [14, 14, 14],
                                                    [21, 28, 28], [28, 28, 28]])
    np.testing.assert_array_equal(dataset.action_chunks(1)[:, 0], dataset.actions)


def test_toy_step_chunk_stops_at_the_episode_end_and_counts_bad_actions():
    env = ToyVectorEnv(num_envs=3, max_episode_steps=5)
    env.reset([(0, 0), (1, 1)], env_ids=[0, 1])  # env 2 idles
    chunks = np.zeros((3, 4, 7), dtype=np.float32)
    chunks[1, 1] = np.nan
    first = env.step_chunk(chunks)
    assert [r.info.get("executed") for r in first[:2]] == [4, 4] and first[2].info == {"inactive": True}
    assert first[1].info["nonfinite_actions"] == 1 and not first[1].done
    second = env.step_chunk(chunks)
    assert second[0].done and second[0].truncated and second[0].info["executed"] == 1
    assert int(env.steps[0]) == 5


def test_rollouts_run_one_decision_per_chunk():
    env = ToyVectorEnv(num_envs=2, max_episode_steps=10)
    policy = chunk_policy(4)
    gen = torch.Generator().manual_seed(0)
    episodes = collect_episodes(env, policy_decoder(policy, generator=gen), [(0, 1), (1, 2), (2, 3)])
    assert len(episodes) == 3
    for episode in episodes:
        assert episode.env_steps == sum(episode.executed) and episode.length == -(-episode.env_steps // 4)
        assert len(episode.images) == episode.length + 1 and episode.tokens[0].shape == (28,)
        assert all(a.shape == (4, 7) for a in episode.actions)
    lean = collect_episodes(env, policy_decoder(policy, generator=gen), [(0, 1)], keep_observations=False)
    assert len(lean[0].images) == 2 and lean[0].length >= 3


def test_an_oracle_chunk_of_one_action_keeps_the_single_step_interface():
    env = ToyVectorEnv(num_envs=2, max_episode_steps=20)

    def oracle(observations_):
        actions = toy_oracle_actions(observations_)
        return type("Out", (), dict(actions=actions, tokens=np.zeros((len(actions), 7)),
                                    log_probs=np.zeros((len(actions), 7)), values=np.zeros(len(actions))))
    oracle.wants_observations = True
    episodes = collect_episodes(env, oracle, [(t, 0) for t in range(4)])
    assert all(e.success for e in episodes) and all(e.executed == [1] * e.length for e in episodes)
