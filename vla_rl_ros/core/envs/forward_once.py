"""Skip robosuite's repeated ``mj_forward`` inside a control step (bit-exact, ~10 % of a step).

robosuite 1.4 runs each control step as 25 physics substeps of::

    sim.forward(); _pre_action(action)   # -> the arm controller's update() -> sim.forward()
    sim.step(); _update_observables()

so every substep computes the forward dynamics twice on the same state: between the two calls
only ``data.ctrl`` is written, and the controller reads kinematics, Jacobians and the mass matrix,
none of which depend on it (``mj_step`` then recomputes everything it needs from the state). On
the default scene the second call is 1.2 ms of an 11 ms control step.

:class:`ForwardOnce` wraps the simulator's ``forward``/``step`` for the length of one control
step: a ``forward`` is skipped when the previous call was a ``forward`` too, no ``step`` in
between. It is used only around robosuite's ``env.step`` (whose substep loop is the one place
with that pattern), not around resets or other code that may write the state between forwards.
Checking the state itself instead (copies and compares of qpos, qvel, ...) cost more than the
forward it saves. test_envs_libero_forward_once checks that an episode ends in the bit-identical
simulator state with and without it.
"""
from __future__ import annotations


class ForwardOnce:
    """Context manager over one robosuite ``MjSim``; counts the forwards it ``skipped``."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.skipped = 0
        self._fresh = False

    def _forward(self) -> None:
        if self._fresh:
            self.skipped += 1
            return
        type(self.sim).forward(self.sim)
        self._fresh = True

    def _step(self) -> None:
        self._fresh = False
        type(self.sim).step(self.sim)

    def __enter__(self) -> "ForwardOnce":
        self._fresh = False
        self.sim.forward = self._forward  # instance attributes shadow the class methods
        self.sim.step = self._step
        return self

    def __exit__(self, *exc) -> None:
        del self.sim.forward, self.sim.step
        self._fresh = False
