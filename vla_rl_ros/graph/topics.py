"""Topic and service names of the graph, relative so that namespaces and remappings work."""

OBSERVATIONS = "observations"
"""vla_rl_ros/ObservationBatch: bridge -> policy, prm, recorder."""
ACTIONS = "actions"
"""vla_rl_ros/ActionBatch: policy -> bridge(s) (demultiplexed by bridge_id), recorder."""
STEP_REWARDS = "step_rewards"
"""vla_rl_ros/StepRewardBatch: prm -> recorder."""
EPISODE_RESULTS = "episode_results"
"""vla_rl_ros/EpisodeResult: bridge -> recorder, learner (curriculum)."""
TASK_ASSIGNMENTS = "task_assignments"
"""vla_rl_ros/TaskAssignment: learner (curriculum) -> bridge(s)."""
TASK_REQUESTS = "task_requests"
"""vla_rl_ros/TaskAssignment with empty task_ids (graph.lockstep only): bridge -> learner, the env
slots waiting for an assignment (repeated every second while they wait)."""
TRAJECTORY_BAGS = "trajectory_bags"
"""vla_rl_ros/TrajectoryBagInfo: recorder -> learner."""
POLICY_VERSION = "policy_version"
"""vla_rl_ros/PolicyVersion (latched): learner -> policy, recorder."""
RESET_SERVICE = "reset_envs"
"""std_srvs/Trigger on a bridge: apply the pending task assignments now (aborting running episodes)."""


def viz_image(env_id: int) -> str:
    """Per-environment camera topic (sensor_msgs/Image, best effort, throttled)."""
    return f"env_{env_id}/image_raw"


def viz_joint_states(env_id: int) -> str:
    """Per-environment proprio topic (sensor_msgs/JointState, best effort, throttled)."""
    return f"env_{env_id}/joint_states"
