"""The VLA-RL learning core: PPO maths and trainer, rollouts, PRM, curriculum, test-time scaling.

ROS-free: nothing here imports rclpy or message packages (a test checks it).
"""
