"""Which environment slot runs which context of the learner's plan.

No ROS here: the learner node (nodes/task_assignments.py) turns what it returns into
TaskAssignments.

A slot is ``(bridge_id, env_id)``. The plan is the core Learner's: ``train.episodes_per_iter``
(task, init state) contexts in groups of ``train.group_size``.

- Streaming (``graph.lockstep`` false): each finished episode frees its slot for the plan's next
  context, and a used-up plan is replaced at once, so slots never wait.
- Lockstep: one plan per round, a round being one trained bag (the recorder closes a bag after
  ``episodes_per_iter`` results, so with lockstep a bag is exactly one plan's episodes). Slots
  that finish after the plan is handed out wait; the next plan is drawn only when the learner has
  trained on a new bag, and goes to the waiting slots first. A slot that asks again while its
  assignment is older than ``reassign_after_s`` gets it again (its bridge restarted or the message
  was lost). If slots wait with the plan handed out and nothing finished or was trained for
  ``stall_after_s`` (episodes lost with a crashed bridge, a recorder that restarted mid-bag), the
  next plan is drawn anyway (``stalls`` counts it) so the graph cannot deadlock.
"""
from __future__ import annotations

import time
from typing import Callable

Slot = tuple[str, int]
Context = tuple[int, int]


class PlanDispatcher:
    """Hands the plan's contexts to slots; ``assign`` returns the (slot, context) pairs to send."""

    def __init__(self, draw_plan: Callable[[], list[Context]], lockstep: bool,
                 reassign_after_s: float = 5.0, stall_after_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.draw_plan = draw_plan
        self.lockstep = lockstep
        self.reassign_after_s = reassign_after_s
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.plan: list[Context] = []
        """The rest of the current plan, handed out front first."""
        self.planned_round = -1
        """The round (bags trained so far) the current plan was drawn in; -1 = none yet."""
        self.handed_out: dict[Slot, tuple[float, Context]] = {}
        """Lockstep: slots running a context of this plan (when it was sent, which context)."""
        self.waiting: dict[Slot, None] = {}
        """Lockstep: slots with nothing to run, in the order they asked (an ordered set)."""
        self.stalls = 0
        self.reassigned = 0
        self.last_progress = clock()

    # ------------------------------------------------------------------ events
    def finished(self, slot: Slot, round_: int) -> list[tuple[Slot, Context]]:
        """An episode of ``slot`` ended: the slot runs the plan's next context (or waits, lockstep)."""
        self.last_progress = self.clock()
        if not self.lockstep:
            if not self.plan:
                self._draw(round_)
            return [(slot, self.plan.pop(0))]
        self.handed_out.pop(slot, None)
        self.waiting[slot] = None
        return self._hand_out(round_)

    def requested(self, slots: list[Slot], round_: int) -> list[tuple[Slot, Context]]:
        """Lockstep: ``slots`` say they wait for an assignment (repeated while they wait)."""
        if not self.lockstep:
            return []  # streaming bridges draw a task themselves
        again = []
        for slot in slots:
            if slot in self.handed_out:
                sent, context = self.handed_out[slot]
                if self.clock() - sent >= self.reassign_after_s:  # lost on the way, or the bridge restarted
                    self.handed_out[slot] = (self.clock(), context)
                    self.reassigned += 1
                    again.append((slot, context))
                continue
            self.waiting[slot] = None
        return again + self._hand_out(round_)

    def trained(self, round_: int) -> list[tuple[Slot, Context]]:
        """The learner finished a round (trained on a bag): waiting slots get the next plan."""
        self.last_progress = self.clock()
        return self._hand_out(round_) if self.lockstep else []

    def check_stall(self, round_: int) -> list[tuple[Slot, Context]]:
        """Lockstep: draw the next plan if slots wait and nothing moved for ``stall_after_s``."""
        if not (self.lockstep and self.waiting and not self.plan):
            return []
        if self.clock() - self.last_progress < self.stall_after_s:
            return []
        self.stalls += 1
        self.handed_out.clear()  # what they ran is lost; their slots ask again when free
        self._draw(round_)
        self.last_progress = self.clock()
        return self._hand_out(round_)

    # ------------------------------------------------------------------ internals
    def _draw(self, round_: int) -> None:
        self.plan = [tuple(c) for c in self.draw_plan()]
        self.planned_round = round_

    def _hand_out(self, round_: int) -> list[tuple[Slot, Context]]:
        if not self.plan and self.waiting and self.planned_round != round_:
            self._draw(round_)
        sent = []
        while self.plan and self.waiting:
            slot = next(iter(self.waiting))
            del self.waiting[slot]
            context = self.plan.pop(0)
            self.handed_out[slot] = (self.clock(), context)
            sent.append((slot, context))
        return sent

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """What a restarted learner needs: the rest of the plan and the round it belongs to."""
        return {"plan": [list(c) for c in self.plan], "planned_round": self.planned_round}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (an old state has only ``plan``)."""
        self.plan = [tuple(c) for c in state.get("plan", [])]
        self.planned_round = int(state.get("planned_round", -1))
