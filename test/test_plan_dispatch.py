"""PlanDispatcher: the learner's plan handed to env slots, streaming and in lockstep."""
from vla_rl_ros.nodes.plan_dispatch import PlanDispatcher


class Plans:
    """Plans of two contexts x group 2, numbered so a test sees which plan a context came from."""

    def __init__(self):
        self.drawn = 0

    def __call__(self):
        self.drawn += 1
        return [(self.drawn, 10), (self.drawn, 10), (self.drawn, 20), (self.drawn, 20)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_streaming_never_lets_a_slot_wait():
    plans = Plans()
    dispatch = PlanDispatcher(plans, lockstep=False)
    sent = [dispatch.finished(("b", i % 2), round_=0) for i in range(6)]
    assert [s[0][1] for s in sent] == [(1, 10), (1, 10), (1, 20), (1, 20), (2, 10), (2, 10)]
    assert plans.drawn == 2 and not dispatch.waiting and not dispatch.handed_out
    assert dispatch.requested([("b", 0)], 0) == []  # streaming bridges never ask; nothing waits
    assert dispatch.trained(1) == []


def test_lockstep_hands_out_one_plan_per_round_and_slots_wait_for_the_next():
    plans, clock = Plans(), Clock()
    dispatch = PlanDispatcher(plans, lockstep=True, clock=clock)
    slots = [("b", i) for i in range(3)]
    first = dispatch.requested(slots, round_=0)  # three slots ask at start-up
    assert first == [(("b", 0), (1, 10)), (("b", 1), (1, 10)), (("b", 2), (1, 20))]
    assert dispatch.requested(slots, 0) == []  # repeated requests of running slots: nothing new
    assert dispatch.finished(("b", 0), 0) == [(("b", 0), (1, 20))]  # the plan's last context
    assert dispatch.finished(("b", 1), 0) == []  # plan handed out: the slot waits
    assert dispatch.finished(("b", 2), 0) == [] and dispatch.finished(("b", 0), 0) == []
    assert plans.drawn == 1 and list(dispatch.waiting) == [("b", 1), ("b", 2), ("b", 0)]
    nxt = dispatch.trained(round_=1)  # the bag of plan 1 was trained on: plan 2, waiting slots first
    assert nxt == [(("b", 1), (2, 10)), (("b", 2), (2, 10)), (("b", 0), (2, 20))]
    assert dispatch.trained(1) == []  # the same round again draws nothing
    assert plans.drawn == 2 and dispatch.plan == [(2, 20)]


def test_lockstep_resends_a_lost_assignment_and_survives_lost_episodes():
    plans, clock = Plans(), Clock()
    dispatch = PlanDispatcher(plans, lockstep=True, reassign_after_s=5.0, stall_after_s=60.0, clock=clock)
    assert dispatch.requested([("b", 0)], 0) == [(("b", 0), (1, 10))]
    clock.now = 2.0
    assert dispatch.requested([("b", 0)], 0) == []  # probably still on its way
    clock.now = 7.0
    assert dispatch.requested([("b", 0)], 0) == [(("b", 0), (1, 10))]  # the bridge restarted: again
    assert dispatch.reassigned == 1
    # The rest of the plan goes to another bridge, which dies with it: nothing finishes, no bag.
    assert len(dispatch.requested([("c", 0), ("c", 1), ("c", 2)], 0)) == 3
    assert dispatch.finished(("b", 0), 0) == []  # b waits for a plan that will never be trained
    clock.now = 30.0
    assert dispatch.check_stall(0) == [] and dispatch.stalls == 0
    clock.now = 68.0
    assert dispatch.check_stall(0) == [(("b", 0), (2, 10))] and dispatch.stalls == 1
    assert ("c", 1) not in dispatch.handed_out  # the lost ones ask again when their bridge is back


def test_lockstep_state_resumes_the_plan_and_its_round():
    plans = Plans()
    dispatch = PlanDispatcher(plans, lockstep=True)
    dispatch.requested([("b", 0)], round_=3)
    state = dispatch.state_dict()
    assert state == {"plan": [[1, 10], [1, 20], [1, 20]], "planned_round": 3}
    again = PlanDispatcher(plans, lockstep=True)
    again.load_state_dict(state)
    assert again.requested([("b", 1)], 3) == [(("b", 1), (1, 10))]
    again.requested([("b", 2), ("b", 3), ("b", 4)], 3)
    assert plans.drawn == 1 and list(again.waiting) == [("b", 4)]  # round 3's plan is not drawn twice
    old = PlanDispatcher(plans, lockstep=False)
    old.load_state_dict({"plan": [[0, 1]]})  # a state from before rounds were kept
    assert old.plan == [(0, 1)] and old.planned_round == -1
