"""Episode bags (real rosbag2 MCAP files), the demo index, and the training dataset."""
import json

import numpy as np
import pytest

from vla_rl_ros.core.data import BagError, DemoDataset, EpisodeRecord, read_episode_bag, write_episode_bag
from vla_rl_ros.core.data.recording import bag_name, load_index, plan_episodes


def make_episode(task_id=0, init_state_id=0, steps=5, wrist=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(steps, 16, 16, 3), dtype=np.uint8)
    return EpisodeRecord(images=images, proprio=rng.normal(size=(steps, 8)).astype(np.float32),
                         actions=rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
                         instruction=f"pick up thing {task_id}", task_id=task_id, init_state_id=init_state_id,
                         suite="libero_object", wrist_images=images[:, ::-1].copy() if wrist else None,
                         extra={"source": "test"})


def write_demo_dir(directory, episodes):
    index = {"suite": "libero_object", "episodes": []}
    for episode in episodes:
        name = bag_name("libero_object", episode.task_id, episode.init_state_id)
        write_episode_bag(directory / name, episode)
        index["episodes"].append(dict(task_id=episode.task_id, init_state_id=episode.init_state_id,
                                      success=True, bag=name, num_steps=episode.num_steps))
    (directory / "index.json").write_text(json.dumps(index))


def test_round_trip_preserves_everything(tmp_path):
    episode = make_episode(task_id=2, init_state_id=7, wrist=True)
    path = write_episode_bag(tmp_path / "ep", episode)
    back = read_episode_bag(path)
    np.testing.assert_array_equal(back.images, episode.images)
    np.testing.assert_array_equal(back.wrist_images, episode.wrist_images)
    np.testing.assert_allclose(back.actions, episode.actions)
    np.testing.assert_allclose(back.proprio, episode.proprio)
    assert (back.instruction, back.task_id, back.init_state_id, back.suite) == \
        ("pick up thing 2", 2, 7, "libero_object")
    assert back.extra == {"source": "test"}
    assert not (tmp_path / ".partial" / "ep").exists()
    with pytest.raises(FileExistsError):
        write_episode_bag(path, episode)


def test_bag_opens_in_standard_mcap_tools(tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    path = write_episode_bag(tmp_path / "ep", make_episode(steps=3))
    (mcap_file,) = path.glob("*.mcap")
    with open(mcap_file, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        images = [(channel.topic, schema.name, message.encoding) for schema, channel, _, message
                  in reader.iter_decoded_messages(topics=["/camera/image_raw"])]
    assert images == [("/camera/image_raw", "sensor_msgs/msg/Image", "rgb8")] * 3
    assert (path / "metadata.yaml").is_file()


def test_truncated_and_corrupt_bags_name_the_file(tmp_path):
    path = write_episode_bag(tmp_path / "ep", make_episode(steps=20))
    (mcap_file,) = path.glob("*.mcap")
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=f"{path}.*(corrupt|truncated)"):
        read_episode_bag(path)
    mcap_file.write_bytes(b"not an mcap file at all" * 10)
    with pytest.raises(BagError, match=str(path)):
        read_episode_bag(path)
    with pytest.raises(BagError, match="does not exist"):
        read_episode_bag(tmp_path / "missing")


def test_dataset_reads_frames_and_reports_bad_bags(tmp_path):
    episodes = [make_episode(0, 0, steps=4), make_episode(1, 3, steps=6, seed=1),
                make_episode(1, 45, steps=2)]
    write_demo_dir(tmp_path, episodes)
    dataset = DemoDataset(tmp_path, task_ids=[0, 1], init_state_ids=list(range(40)))
    assert len(dataset) == 10  # the held-out init state 45 is excluded
    # What SFT reads: training init states and fresh training layouts, never a held-out context.
    layouts = [make_episode(0, 1_005, steps=3, seed=2), make_episode(0, 1_000_003, steps=5, seed=3)]
    write_demo_dir(tmp_path / "layouts", episodes + layouts)
    training = DemoDataset(tmp_path / "layouts", num_train_init_states=40)
    assert sorted(e["init_state_id"] for e in training.episodes) == [0, 3, 1_005]
    assert len(training) == 4 + 6 + 3
    item = dataset[5]
    assert item["image"].shape == (16, 16, 3) and item["instruction"] == "pick up thing 1"
    assert dataset.instructions == ["pick up thing 0", "pick up thing 1"]
    stats = dataset.norm_stats("libero_object")["libero_object"]["action"]
    assert len(stats["q01"]) == 7 and stats["mask"] == [True] * 6 + [False]
    assert all(lo <= hi for lo, hi in zip(stats["q01"], stats["q99"]))
    broken = tmp_path / bag_name("libero_object", 1, 3)
    next(broken.glob("*.mcap")).write_bytes(b"garbage")
    with pytest.raises(BagError, match=str(broken)):
        DemoDataset(tmp_path)
    with pytest.raises(BagError, match="no successful demonstrations"):
        DemoDataset(tmp_path, task_ids=[9])


def test_resume_plan_skips_recorded_pairs(tmp_path):
    index = {"episodes": [dict(task_id=0, init_state_id=0, success=True),
                          dict(task_id=0, init_state_id=1, success=False)]}
    assert plan_episodes([0, 1], [0, 1], index) == [(1, 0), (1, 1)]
    assert plan_episodes([0, 1], [0, 1], index, retry_failed=True) == [(0, 1), (1, 0), (1, 1)]
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_index(tmp_path)
